"""PPO with a critic, for RLHF: TRL removed its PPOTrainer (1.13), so hfstack keeps a compact one.

    hfstack rlhf --config recipes/tiny/rlhf.yaml --algo ppo

One step (Ziegler et al. 2019; Ouyang et al. 2022):
1. rollout: sample an answer per prompt from the policy; record its per-token log-probs, the frozen
   reference policy's log-probs, and the critic's per-token values;
2. reward: the reward model scores the whole conversation; every token also pays the KL penalty
   −β·(log π − log π_ref), and the score is added at the answer's last token;
3. advantages: generalised advantage estimation (GAE) over the answer's tokens, then whitened;
4. update, for a few epochs over minibatches: the clipped policy loss and the clipped value loss;
5. β follows the adaptive controller (towards a target KL) or stays fixed.

The policy is an `AutoModelForCausalLM`; the critic is an `AutoModelForTokenClassification` with one
label (a value per token), started from the reward model as in InstructGPT. Runs on Accelerate, so
it works under `accelerate launch` like the TRL-based algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hfstack.core.launch import progress_bar
from hfstack.core.rundir import checkpoint_step
from hfstack.tools.loop import turn_end_ids

# ----------------------------------------------------------------------------- the maths, unit-tested


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(variance + eps) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns, per token, for rows of (rewards, values) masked to the answer.
    δ_t = r_t + γ·V_{t+1} − V_t;  A_t = δ_t + γλ·A_{t+1};  returns = A + V (V after the end is 0)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean over answer tokens of max(−A·r, −A·clip(r, 1±ε)); and the
    share of tokens where the clip was active."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """½·max((V − R)², (clip(V, V_old ± ε) − R)²), averaged over answer tokens."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


class AdaptiveKL:
    """β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon) (Ziegler et al.); fixed when target is None."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_samples: int) -> float:
        if self.target is not None and self.beta > 0:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.beta *= 1 + error * n_samples / self.horizon
        return self.beta


# ----------------------------------------------------------------------------- the loop


@dataclass
class PPOSettings:
    steps: int = 50
    batch_size: int = 16  # answers per step (per process)
    minibatch_size: int = 8
    ppo_epochs: int = 2
    learning_rate: float = 1e-4
    critic_learning_rate: float = 1e-4
    max_new_tokens: int = 32
    temperature: float = 1.0
    beta: float = 0.05
    kl_target: float | None = None  # adaptive β when set
    clip: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    seed: int = 0
    progress: bool = False  # a bar over the steps (main process only)


class LoopState:
    """What a resumed run needs besides weights and optimizers: the step, β and the prompt sampler."""

    def __init__(self, controller: AdaptiveKL, rng):
        self.step, self.controller, self.rng = 0, controller, rng

    def state_dict(self) -> dict:
        return {"step": self.step, "beta": self.controller.beta, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.controller.beta = state["step"], state["beta"]
        self.rng.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["rng"]))


def newest_ppo_checkpoint(folder) -> str | None:
    """The newest checkpoint whose `complete` marker was written (after all of its files)."""
    from pathlib import Path

    steps = {p.parent: checkpoint_step(p.parent, "step-") for p in Path(folder).glob("step-*/complete")}
    found = sorted((p for p, step in steps.items() if step is not None), key=steps.get)  # `step-2-old` is not one
    return str(found[-1]) if found else None


def token_logprobs(model, input_ids, attention_mask, start: int) -> torch.Tensor:
    """log π(token_t | tokens_<t) for the positions from `start` on."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, start - 1:-1].float()
    return torch.gather(logits.log_softmax(-1), 2, input_ids[:, start:].unsqueeze(-1)).squeeze(-1)


def critic_values(critic, input_ids, attention_mask, start: int) -> torch.Tensor:
    """The value of the state before each answer token (aligned with token_logprobs)."""
    return critic(input_ids=input_ids, attention_mask=attention_mask).logits[:, start - 1:-1, 0].float()


def train_ppo(policy, reference, critic, tokenizer, prompts: list[list[dict]], score_fn, settings: PPOSettings,
              on_log=None, accelerator=None, answer_metrics=None, checkpoint_dir=None, save_every: int = 0):
    """Train `policy` in place. `score_fn(prompts, answers) -> list[float]` is the reward (the
    reward model); `answer_metrics(prompts, answers) -> dict` adds measures of the answers (averaged
    over processes); `on_log(step, metrics, prompts, answers)` may return True to stop early (every
    process sees the same metrics, so all stop together). With `checkpoint_dir`, the policy, critic,
    optimizers, RNGs, step and β are saved every `save_every` steps (Accelerate's save_state), and
    a rerun continues from the newest complete checkpoint."""
    import random

    from accelerate import Accelerator

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=settings.learning_rate)
    critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=settings.critic_learning_rate)
    policy, critic, optimizer, critic_optimizer = accelerator.prepare(policy, critic, optimizer, critic_optimizer)
    reference.to(accelerator.device).eval()
    controller = AdaptiveKL(settings.beta, settings.kl_target)
    rng = random.Random(settings.seed + accelerator.process_index)
    loop = LoopState(controller, rng)
    accelerator.register_for_checkpointing(loop)
    resume = newest_ppo_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if resume:
        accelerator.load_state(resume)
        accelerator.print(f"[ppo] resuming from {resume} (step {loop.step})")
    stop_ids = sorted(turn_end_ids(policy, tokenizer))  # from the tokenizer loaded, whoever made it
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    bar = progress_bar(settings.steps, "ppo" if settings.progress else None, unit=" steps")
    bar.update(loop.step)
    for step in range(loop.step + 1, settings.steps + 1):
        bar.update(1)
        batch_prompts = [rng.choice(prompts) for _ in range(settings.batch_size)]
        rendered = [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"]
                    for p in batch_prompts]
        width = max(len(r) for r in rendered)
        prompt_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rendered], device=accelerator.device)
        prompt_mask = (torch.arange(width, device=accelerator.device)[None] >= width - torch.tensor(
            [len(r) for r in rendered], device=accelerator.device)[:, None]).long()
        # 1. rollout
        with torch.no_grad():
            unwrapped = accelerator.unwrap_model(policy)
            unwrapped.eval()
            sequences = unwrapped.generate(prompt_ids, attention_mask=prompt_mask, do_sample=True,
                                           temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                                           eos_token_id=stop_ids, pad_token_id=pad)
            unwrapped.train()
            answer = sequences[:, width:]
            ended = torch.isin(answer, torch.tensor(stop_ids, device=answer.device))
            first_end = torch.where(ended.any(1), ended.int().argmax(1), answer.shape[1] - 1)
            mask = (torch.arange(answer.shape[1], device=answer.device)[None] <= first_end[:, None]).float()
            attention = torch.cat([prompt_mask, mask.long()], dim=1)
            old_logprobs = token_logprobs(policy, sequences, attention, width) * mask
            ref_logprobs = token_logprobs(reference, sequences, attention, width) * mask
            old_values = critic_values(critic, sequences, attention, width) * mask
            texts = [tokenizer.decode(row[: int(end) + 1], skip_special_tokens=True).strip()
                     for row, end in zip(answer.tolist(), first_end.tolist())]
            scores = torch.tensor(score_fn(batch_prompts, texts), device=answer.device, dtype=torch.float)
            # 2. rewards: the KL penalty on every token, the score on the last one
            kl = (old_logprobs - ref_logprobs) * mask
            rewards = -controller.beta * kl
            rewards[torch.arange(len(texts)), first_end] += scores
            # 3. advantages
            advantages, returns = gae(rewards, old_values, mask, settings.gamma, settings.lam)
            advantages = whiten(advantages, mask)
        # 4. update
        stats = {"policy_loss": [], "value_loss": [], "clip_fraction": []}
        for _ in range(settings.ppo_epochs):
            order = torch.randperm(len(texts))
            for begin in range(0, len(texts), settings.minibatch_size):
                index = order[begin:begin + settings.minibatch_size]
                logprobs = token_logprobs(policy, sequences[index], attention[index], width)
                loss, clipped = policy_loss(logprobs, old_logprobs[index], advantages[index], mask[index],
                                            settings.clip)
                optimizer.zero_grad()
                accelerator.backward(loss)
                optimizer.step()
                values = critic_values(critic, sequences[index], attention[index], width)
                v_loss = value_loss(values, old_values[index], returns[index], mask[index], settings.value_clip)
                critic_optimizer.zero_grad()
                accelerator.backward(v_loss)
                critic_optimizer.step()
                stats["policy_loss"].append(loss.item())
                stats["value_loss"].append(v_loss.item())
                stats["clip_fraction"].append(clipped.item())
        # 5. β
        sequence_kl = accelerator.reduce(kl.sum(1).mean(), "mean").item()  # what the controller targets
        beta = controller.update(sequence_kl, len(texts) * accelerator.num_processes)
        token_kl = accelerator.reduce(masked_mean(kl, mask), "mean").item()  # per token, as TRL logs it
        metrics = {"rm_score": accelerator.reduce(scores.mean(), "mean").item(), "kl": token_kl,
                   "kl_sequence": sequence_kl, "beta": beta,
                   "length": accelerator.reduce(mask.sum(1).mean(), "mean").item(),
                   **{k: sum(v) / len(v) for k, v in stats.items()}}
        for name, value in (answer_metrics(batch_prompts, texts) if answer_metrics else {}).items():
            metrics[name] = accelerator.reduce(torch.tensor(float(value), device=accelerator.device), "mean").item()
        loop.step = step
        if checkpoint_dir and save_every and (step % save_every == 0 or step == settings.steps):
            save_checkpoint(accelerator, checkpoint_dir, step)
        if on_log is not None and on_log(step, metrics, batch_prompts, texts):
            break
    bar.close()
    return accelerator.unwrap_model(policy)


def save_checkpoint(accelerator, folder, step: int) -> None:
    """Save this step's state, mark it complete, then drop older checkpoints (keep the newest)."""
    import shutil
    from pathlib import Path

    target = Path(folder) / f"step-{step}"
    accelerator.save_state(str(target))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (target / "complete").write_text(str(step))

        for older in Path(folder).glob("step-*"):
            if older != target and checkpoint_step(older, "step-") is not None:  # a user's `step-4-best` stays
                shutil.rmtree(older, ignore_errors=True)
