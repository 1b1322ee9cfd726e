"""hfstack's PPO: GAE, whitening, the clipped losses and the adaptive KL against hand-computed values,
and a tiny run on Accelerate in which the reward rises."""

import math

import pytest
import torch

from hfstack.rlalgo.ppo import AdaptiveKL, PPOSettings, gae, policy_loss, train_ppo, value_loss, whiten

from tiny import tiny_tokenizer


def test_gae_matches_hand_computed_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # δ2 = 1 − .7 = .3; δ1 = .7 − .6 = .1, A1 = .1 + .5·.3 = .25; δ0 = .6 − .5 = .1, A0 = .1 + .5·.25 = .225
    assert torch.allclose(advantages, torch.tensor([[0.225, 0.25, 0.3]]))
    assert torch.allclose(returns, torch.tensor([[0.725, 0.85, 1.0]]))


def test_gae_stops_at_the_end_of_the_answer():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])  # the 5 is past the answer's end and must not leak back
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=1.0, lam=0.5)
    # A1 = 1 + 0 − .6 = .4; A0 = (.6 − .5) + .5·.4 = .3
    assert torch.allclose(advantages, torch.tensor([[0.3, 0.4, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.8, 1.0, 0.0]]))


def test_gamma_discounts():
    advantages, _ = gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.5, lam=1.0)
    assert torch.allclose(advantages, torch.tensor([[0.5, 1.0]]))


def test_whiten_uses_only_masked_tokens():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), mask)
    assert torch.allclose(out[0, :3], torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3), atol=1e-4)
    assert out[0, 3] == 0


def test_policy_loss_clips_both_ways():
    old = torch.zeros(1, 2)
    advantages = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    logprobs = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5: both outside 1 ± 0.2
    loss, clipped = policy_loss(logprobs, old, advantages, mask, clip=0.2)
    # max(−1.5, −1.2) = −1.2; max(0.5, 0.8) = 0.8 → mean −0.2, clip active on both tokens
    assert loss.item() == pytest.approx(-0.2) and clipped.item() == 1.0
    loss, clipped = policy_loss(torch.log(torch.tensor([[1.1, 0.9]])), old, advantages, mask, clip=0.2)
    assert loss.item() == pytest.approx((-1.1 + 0.9) / 2) and clipped.item() == 0.0


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    loss = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.7 - 2.0) ** 2)  # clipped to 0.7, farther from 2 than 1.0 is
    loss = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.9]]), torch.tensor([[2.0]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.5)


def test_adaptive_kl_moves_beta_towards_the_target_and_fixed_stays():
    controller = AdaptiveKL(0.1, target=6.0, horizon=10000)
    assert controller.update(12.0, 100) == pytest.approx(0.1 * 1.002)  # error clipped to +0.2
    controller = AdaptiveKL(0.1, target=6.0, horizon=10000)
    assert controller.update(3.0, 100) == pytest.approx(0.1 * 0.998)
    assert AdaptiveKL(0.1).update(50.0, 100) == 0.1


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """A random 1-layer Llama with hfstack's tokenizer and chat template (no training needed for PPO)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfstack.core.model import build_config, model_dims
    from hfstack.core.protocol import chat_template

    root = tmp_path_factory.mktemp("ppo")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer(root, docs=20, vocab_size=300))
    tokenizer.chat_template = chat_template()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(len(tokenizer), 128, model_dims(1), tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


def test_ppo_raises_a_scripted_reward_on_accelerate(tiny_chat_model):
    """Reward: the share of answer characters that are 'e'. PPO should find more of them."""
    import copy

    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    policy = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    reference = copy.deepcopy(policy).requires_grad_(False)
    critic = AutoModelForTokenClassification.from_pretrained(tiny_chat_model, num_labels=1)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}

    def share_of_e(prompts, answers):
        return [a.count("e") / max(1, len(a)) for a in answers]

    logged = []
    settings = PPOSettings(steps=30, batch_size=16, minibatch_size=8, ppo_epochs=2, learning_rate=3e-3,
                           critic_learning_rate=3e-3, max_new_tokens=12, beta=0.01)
    prompts = [[{"role": "user", "content": f"Say something about {w}."}] for w in ("cats", "trains", "tea")]
    trained = train_ppo(policy, reference, critic, tokenizer, prompts, share_of_e, settings,
                        on_log=lambda step, m, p, a: logged.append(m) and False, accelerator=Accelerator(cpu=True))
    first = sum(m["rm_score"] for m in logged[:5]) / 5
    last = sum(m["rm_score"] for m in logged[-5:]) / 5
    assert last > first + 0.05, (first, last)
    assert all(m["kl"] == m["kl"] for m in logged)  # KL to the reference is computed (not NaN)
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
