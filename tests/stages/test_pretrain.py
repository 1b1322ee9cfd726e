"""Pretraining and sampling on tiny models: learning, saving, resuming, launching, bad input,
seeded sampling, the few-shot assistant and the regurgitation probe."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from hfstack.core.config import ConfigError
from hfstack.core.model import model_dims
from hfstack.core.recipes import recipes_dir
from hfstack.core.splits import stable_split
from hfstack.core.stdlib_text import stdlib_articles
from hfstack.stages.generate import GenerateConfig, generate
from hfstack.stages.pretrain import PretrainConfig, run_pretrain
from hfstack.stages.regurgitation import RegurgitationConfig, in_context_probe, regurgitation
from hfstack.stages.tokenizer import TokenizerConfig, run_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Standard-library prose: a jsonl corpus and a 512-token tokenizer trained on it."""
    root = tmp_path_factory.mktemp("pretrain")
    data = root / "docs.jsonl"
    with data.open("w") as handle:
        for title, paragraphs in stdlib_articles()[:60]:
            handle.write(json.dumps({"text": title + "\n\n" + "\n\n".join(paragraphs)}) + "\n")
    run_tokenizer(TokenizerConfig(input=[str(data)], output_dir=str(root / "tok"), vocab_size=512,
                                  compare_cl100k=False, progress=False))
    return root, data, root / "tok"


def tiny(corpus, out, **overrides) -> PretrainConfig:
    root, data, tok = corpus
    options = dict(data=[str(data)], tokenizer=str(tok), output_dir=str(out), depth=1, seq_len=64,
                   per_device_train_batch_size=4, batch_tokens=256, max_steps=12, warmup_steps=2, learning_rate=1e-2,
                   eval_steps=6, save_steps=6, logging_steps=1, val_fraction=0.1, sample_tokens=4,
                   sample_prompts=["The"], progress=False)
    return PretrainConfig(**(options | overrides))


class Snapshot(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {name: p.detach().clone() for name, p in model.named_parameters()}


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").open()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base"
    snapshot = Snapshot()
    run_pretrain(tiny(corpus, out, max_steps=30), callbacks=[snapshot])
    return out, snapshot.before


def test_depth_dial_and_explicit_sizes():
    assert model_dims(2) == {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2,
                             "num_key_value_heads": 2, "intermediate_size": 320}
    assert model_dims(12)["hidden_size"] == 768 and model_dims(12)["num_attention_heads"] == 12
    assert model_dims(4, hidden_size=192, num_heads=3, num_kv_heads=1)["num_key_value_heads"] == 1
    with pytest.raises(ConfigError, match="not divisible"):
        model_dims(2, hidden_size=100, num_heads=3)


def test_loss_goes_down_and_every_parameter_changes(trained):
    out, before = trained
    steps = losses(out)
    assert steps[30] < steps[1] - 0.5, steps
    from transformers import AutoModelForCausalLM

    after = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    unchanged = [name for name, p in before.items() if torch.equal(p, after[name].detach())]
    assert not unchanged
    records = [json.loads(line) for line in (out / "log.jsonl").open()]
    evals = [r for r in records if "eval_bpb" in r]
    # the last step's own evaluation; the one after it measures the saved weights (unseen tokens spread)
    last = [r for r in evals if r["step"] == 30]
    assert evals and all(r["eval_bpb"] > 0 for r in evals) and last[0]["eval_loss"] < evals[0]["eval_loss"]
    assert len(last) == 2 and json.loads((out / "summary.json").read_text())["eval_loss"] == last[1]["eval_loss"]
    assert any("samples" in r for r in records) and any("mfu" in r and "tokens_per_s" in r for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["world_size"] == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-24", "checkpoint-30"]


def test_spreading_pulls_collapsed_unseen_rows_apart_and_leaves_the_rest():
    from hfstack.stages.pretrain import spread_unseen_tokens

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.get_input_embeddings = lambda: embedding
    embedding = torch.nn.Embedding(40, 16)
    with torch.no_grad():  # rows 20-39: one shared vector plus a little noise, as pretraining leaves them
        embedding.weight[20:] = 3.0 + 0.01 * torch.randn(20, 16)
        embedding.weight[39] = 0.0  # a padding row
    before = embedding.weight.detach().clone()
    spread_unseen_tokens(model, torch.arange(20, 40))
    after = embedding.weight.detach()
    assert torch.equal(after[:20], before[:20]) and torch.equal(after[39], before[39])
    rows = torch.nn.functional.normalize(after[20:39], dim=1)
    cosines = (rows @ rows.T)[~torch.eye(19, dtype=torch.bool)]
    assert abs(cosines.mean().item() - 0.2) < 0.05, cosines.mean()  # from cosine ~1.0
    mean_norm = before[:20].norm(dim=1).mean()
    assert abs(after[20:39].norm(dim=1).mean() / (mean_norm * 1.25 ** 0.5) - 1) < 0.1  # the seen rows' scale


def test_pretraining_saves_unseen_tokens_spread_apart(trained):
    import numpy as np
    from transformers import AutoModelForCausalLM

    out, before = trained
    (stream,) = (out / "cache").glob("tokens-*/train.bin")
    counts = np.bincount(np.fromfile(stream, dtype=np.uint16), minlength=len(before["model.embed_tokens.weight"]))
    final = AutoModelForCausalLM.from_pretrained(out).model.embed_tokens.weight.detach()
    unseen = [i for i in np.flatnonzero(counts == 0) if final[i].norm() > 0]
    assert len(unseen) > 5
    rows = torch.nn.functional.normalize(final[unseen], dim=1)
    cosines = (rows @ rows.T)[~torch.eye(len(unseen), dtype=torch.bool)]
    assert abs(cosines.mean().item() - 0.2) < 0.1, cosines.mean()


def test_saved_model_loads_in_a_fresh_offline_process_and_generates(trained):
    out, _ = trained
    code = ("import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]);"
            "ids = torch.tensor([[t.bos_token_id] + t('The')['input_ids']]);"
            "print(m.generate(ids, max_new_tokens=5, do_sample=False).shape[1] - ids.shape[1])")
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120,
                            env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "5"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_resume_continues_with_identical_losses(corpus, tmp_path):
    straight = run_pretrain(tiny(corpus, tmp_path / "straight", max_steps=10, save_steps=5))
    interrupted = tmp_path / "interrupted"
    run_pretrain(tiny(corpus, interrupted, max_steps=10, save_steps=5), callbacks=[StopAt(7)])
    assert not (interrupted / "model.safetensors").exists()  # killed: only checkpoint-5 survives the steps
    run_pretrain(tiny(corpus, interrupted, max_steps=10, save_steps=5))  # resume: auto
    reference, resumed = losses(straight), losses(interrupted)
    for step in range(6, 11):  # after checkpoint-5 the resumed run retraces the uninterrupted one
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5), step


@pytest.mark.slow
def test_two_process_cpu_launch_through_accelerate(corpus, tmp_path):
    root, data, tok = corpus
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(recipes_dir() / "accelerate/cpu.yaml"), "-m", "hfstack", "pretrain", "--data", str(data),
               "--tokenizer", str(tok), "--output_dir", str(tmp_path / "ddp"), "--depth", "1", "--seq_len", "64",
               "--per_device_train_batch_size", "2", "--batch_tokens", "256", "--max_steps", "6", "--eval_steps", "3",
               "--save_steps", "3", "--logging_steps", "1", "--val_fraction", "0.1", "--progress", "false"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert "1×2×2 sequences per step" in result.stdout


def test_accelerate_gpu_configs_construct():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import LlamaConfig, LlamaForCausalLM

    def launch_args(name):
        parsed = launch_command_parser().parse_args(
            ["--config_file", str(recipes_dir() / f"accelerate/{name}.yaml"), "-m", "hfstack", "pretrain"])
        return _validate_launch_command(parsed)[0]

    ddp = launch_args("multi_gpu")
    assert ddp.multi_gpu and ddp.mixed_precision == "bf16" and not ddp.use_fsdp
    fsdp = launch_args("fsdp2")
    env = prepare_multi_gpu_env(fsdp)
    old = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith(("FSDP", "ACCELERATE"))})
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2))
        plugin.set_auto_wrap_policy(model)  # fails if the layer class named in the config is not in the model
        assert plugin.auto_wrap_policy is not None
    finally:
        os.environ.clear()
        os.environ.update(old)
    import yaml

    for name, stage in (("zero2", 2), ("zero3", 3)):
        args = launch_args(name)
        assert args.use_deepspeed and args.zero_stage == stage
        options = yaml.safe_load((recipes_dir() / f"accelerate/{name}.yaml").read_text())["deepspeed_config"]
        plugin = DeepSpeedPlugin(zero_stage=options["zero_stage"], zero3_init_flag=options["zero3_init_flag"],
                                 zero3_save_16bit_model=options.get("zero3_save_16bit_model", False))
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == stage


def test_bad_input_is_a_clear_error_before_training(corpus, trained, tmp_path):
    root, data, tok = corpus
    other_tok = tmp_path / "tok1k"
    run_tokenizer(TokenizerConfig(input=[str(data)], output_dir=str(other_tok), vocab_size=300,
                                  compare_cl100k=False, progress=False))
    out, _ = trained
    with pytest.raises(ConfigError, match="vocab_size 512 but the tokenizer .* has 300 tokens"):
        run_pretrain(tiny(corpus, tmp_path / "a", init_from=str(out), tokenizer=str(other_tok)))
    with pytest.raises(ConfigError, match="seq_len 128 is above the model's maximum"):
        run_pretrain(tiny(corpus, tmp_path / "b", init_from=str(out), seq_len=128, batch_tokens=512))
    no_text = tmp_path / "notext.jsonl"
    no_text.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(ConfigError, match="no field 'text'"):
        run_pretrain(tiny(corpus, tmp_path / "c", data=[str(no_text)]))
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"text": "just a few words"}) + "\n")
    with pytest.raises(ConfigError, match="too little data for one batch"):
        run_pretrain(tiny(corpus, tmp_path / "d", data=[str(small)]))
    with pytest.raises(ConfigError, match="no tokenizer at"):
        run_pretrain(tiny(corpus, tmp_path / "e", tokenizer=str(tmp_path / "nothing")))


def test_sampling_seeds_and_greedy(trained, capsys):
    out, _ = trained
    sample = lambda **kw: generate(GenerateConfig(model_name_or_path=str(out), prompt="The", max_new_tokens=12,  # noqa: E731
                                                  stream=False, **kw))[0]
    assert sample(seed=1) == sample(seed=1)
    assert len({sample(seed=s) for s in range(4)}) > 1
    assert len({sample() for _ in range(4)}) > 1  # no seed: fresh randomness each time
    assert sample(temperature=0) == sample(temperature=0, seed=5)
    three = generate(GenerateConfig(model_name_or_path=str(out), prompt="The", max_new_tokens=6, num_samples=3, seed=2,
                                    stream=True))
    assert len(three) == 3 and "--- sample 3" in capsys.readouterr().out


def test_as_assistant_stops_at_the_end_of_the_turn(trained):
    out, _ = trained
    answer = generate(GenerateConfig(model_name_or_path=str(out), as_assistant="What is a module?", max_new_tokens=40,
                                     temperature=0, stream=False))[0]
    assert "Human:" not in answer


def test_in_context_probe_shows_the_passage_before_its_prefix():
    ids = list(range(100, 140))
    prompt, truth = in_context_probe(ids, prefix_tokens=10, separator=0)
    assert prompt == ids + [0] + ids[:10] and truth == ids[10:]
    assert prompt[prompt.index(0) - 30:prompt.index(0)] == truth  # what must be produced is in the context


def test_regurgitation_separates_memorised_from_unseen_documents(tmp_path):
    """A model trained hard on a few documents recites them; documents it never saw it cannot."""
    texts = [" ".join(paragraphs)[:600] for _, paragraphs in stdlib_articles()[:40]]
    seen = [t for t in texts if not stable_split(t, 0.5)][:6]
    unseen = [t for t in texts if stable_split(t, 0.5)][:6]
    assert len(seen) == 6 and len(unseen) == 6
    train_file, all_file = tmp_path / "train.jsonl", tmp_path / "all.jsonl"
    train_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in seen * 4))
    all_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in seen + unseen))
    run_tokenizer(TokenizerConfig(input=[str(all_file)], output_dir=str(tmp_path / "tok"), vocab_size=400,
                                  heldout_fraction=0, compare_cl100k=False, progress=False))
    run_pretrain(PretrainConfig(data=[str(train_file)], tokenizer=str(tmp_path / "tok"),
                                output_dir=str(tmp_path / "m"), depth=2, seq_len=64, per_device_train_batch_size=8,
                                batch_tokens=512, max_steps=800, warmup_steps=5, learning_rate=1e-2,
                                val_fraction=0.01, eval_steps=1000, save_steps=1000, logging_steps=20,
                                sample_prompts=[], progress=False, seed=0))
    report = regurgitation(RegurgitationConfig(model_name_or_path=str(tmp_path / "m"), data=[str(all_file)],
                                               prefix_tokens=16,
                                               continuation_tokens=15, val_fraction=0.5))
    assert report["train"]["docs"] == 6 and report["heldout"]["docs"] == report["heldout_in_context"]["docs"] == 6
    assert report["induction"]["sequences"] == 32 and 0 <= report["induction"]["repeat_accuracy"] <= 1
    assert report["train"]["mean_matched_tokens"] > report["heldout"]["mean_matched_tokens"] + 4, report


def test_the_induction_probe_credits_looking_back_and_nothing_else():
    """Random tokens shown twice: a model that copies from one sequence back predicts the whole second
    copy and none of the first; one that always says the same token scores alike on both (chance)."""
    import torch

    from hfstack.stages.regurgitation import induction_probe

    class Stub(torch.nn.Module):
        def __init__(self, looks_back: bool, length: int, vocab: int = 50):
            super().__init__()
            self.looks_back, self.length, self.vocab = looks_back, length, vocab
            self.device = torch.device("cpu")

        def forward(self, input_ids):
            batch, width = input_ids.shape
            guess = torch.full_like(input_ids, 7)
            if self.looks_back:  # position t predicts the token one sequence-length back from t + 1
                back = torch.arange(width) + 1 - self.length
                guess[:, back >= 0] = input_ids[:, back[back >= 0]]
            return type("Out", (), {"logits": torch.nn.functional.one_hot(guess, self.vocab).float()})

    vocabulary = list(range(8, 50))
    copying = induction_probe(Stub(True, 24), vocabulary, sequences=16, length=24)
    assert copying == {"sequences": 16, "tokens": 24, "first_copy_accuracy": 0.0, "repeat_accuracy": 1.0}
    constant = induction_probe(Stub(False, 24), vocabulary + [7], sequences=16, length=24)
    first, repeat = constant["first_copy_accuracy"], constant["repeat_accuracy"]
    assert repeat < 0.2 and abs(repeat - first) < 0.1


def test_a_context_window_longer_than_the_training_blocks(corpus, tmp_path):
    """max_position_embeddings past seq_len: trained on blocks of 64, the model's window is 128 (later
    stages train the rest), and a continuation past 64 tokens works; shorter than seq_len is refused."""
    from transformers import AutoModelForCausalLM

    out = run_pretrain(tiny(corpus, tmp_path / "wide", max_position_embeddings=128, max_steps=2, eval_steps=100,
                            save_steps=100))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.max_position_embeddings == 128
    assert model(torch.arange(100).unsqueeze(0)).logits.shape == (1, 100, model.config.vocab_size)
    with pytest.raises(ConfigError, match="'max_position_embeddings' 32 must be at least seq_len 64"):
        tiny(corpus, tmp_path / "narrow", max_position_embeddings=32)
