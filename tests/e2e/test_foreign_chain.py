"""Post-training a foreign Hub base end to end, offline, through the real clients: a tiny Llama with its
own byte-level BPE tokenizer (no hfstack token, no pad), ChatML template and padded embeddings
(tests/foreign.py), served as `acme/tiny-base` with two chat datasets by the loopback Hub
(tests/hub_server.py). SFT draws a 0.7/0.3 mixture of the two (one in ShareGPT layout) plus the
arithmetic generator; the tool loop then runs the Python tool in batch chat; rl, rank, reward and rlhf
run 2 steps each from that SFT model, pulled back from the Hub by id; and the smollm preset's recipes
run on the same stand-in published under SmolLM2's and smol-smoltalk's ids.

    python -m pytest -q tests/e2e/test_foreign_chain.py
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hfstack.core.protocol import END_OF_TURN, SPECIAL_TOKENS
from hfstack.core.recipes import recipes_dir
from hfstack.core.templates import assistant_mask, has_generation_markers, training_template

from foreign import (
    BASE_REPO,
    CHAT_A_REPO,
    CHAT_B_REPO,
    CHATML_TEMPLATE,
    chat_b_rows,
    english_text,
    loopback_hub,
    publish,
)

pytestmark = pytest.mark.slow
SMOLLM_STAGES = ("sft", "rl", "rank", "reward", "rlhf")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with loopback_hub(tmp_path_factory.mktemp("hub")) as (server, state, env):
        yield state, env


def hfstack(env: dict, *args: str, cwd: Path | None = None, ok: bool = True) -> str:
    """`hfstack ARGS` in a fresh process that talks to the loopback Hub; its output, or a failure with it."""
    result = subprocess.run([sys.executable, "-m", "hfstack", *args], env=env, capture_output=True, text=True,
                            timeout=900, cwd=cwd)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == ok, f"hfstack {' '.join(args)}:\n{output[-6000:]}"
    return output


def summary(folder: Path, name: str = "summary.json") -> dict:
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module")
def sft_model(hub, tmp_path_factory):
    """SFT from the Hub base: 0.7/0.3 of two Hub chat datasets, plus arithmetic with the Python tool
    (enough steps that the tiny model calls the tool by itself); its folder and the seconds it took."""
    _, env = hub
    root = tmp_path_factory.mktemp("sft")
    recipe = root / "sft.yaml"
    recipe.write_text(f"""
model_name_or_path: {BASE_REPO}
output_dir: {root / "sft"}
dataset_mixture:
  datasets:
    - {{id: {CHAT_A_REPO}, weight: 0.7}}
    - {{id: {CHAT_B_REPO}, weight: 0.3}}
  test_split_size: 0.05
counts: {{arithmetic: 1000, chat: 400}}
max_steps: 100
learning_rate: 0.005
per_device_train_batch_size: 16
logging_steps: 10
progress: false
""")
    start = time.perf_counter()
    hfstack(env, "sft", "--config", str(recipe))
    return root / "sft", time.perf_counter() - start


def test_sft_adopts_the_protocol_on_a_foreign_hub_base(sft_model):
    out, _ = sft_model
    report = summary(out)
    assert report["base"]["model"] == BASE_REPO and report["base"]["tokens_added"] == len(SPECIAL_TOKENS)
    assert report["base"]["vocab_rows"] == 576  # the padded rows had room: no resize
    assert report["last_loss"][0] < report["first_loss"][0] / 3
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] >= len(tokenizer) and all(t in tokenizer.get_vocab() for t in SPECIAL_TOKENS)
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not has_generation_markers(tokenizer.chat_template)  # the inference template; training marks it
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids(END_OF_TURN) in (eos if isinstance(eos, list) else [eos])


def test_the_mixture_weights_hold_within_sampling_error(sft_model):
    report = summary(sft_model[0])["dataset_mixture"]
    drawn = report["rows"]
    total = sum(drawn.values())
    assert total == 400 and report["train"] + report["test"] == total
    share = drawn[CHAT_A_REPO] / total
    assert abs(share - 0.7) < 4 * math.sqrt(0.7 * 0.3 / total), drawn  # 4 standard errors: a wrong mixer fails


def test_the_mask_covers_exactly_the_assistant_turns(sft_model):
    tokenizer = AutoTokenizer.from_pretrained(sft_model[0])
    row = next(r for r in chat_b_rows() if len(r["conversations"]) == 4)  # ShareGPT layout, two exchanges
    roles = {"human": "user", "gpt": "assistant"}
    messages = [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
    ids, mask = assistant_mask(tokenizer, messages, training_template(tokenizer))
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert trained == "".join(m["content"] + END_OF_TURN for m in messages if m["role"] == "assistant")


def test_the_tool_loop_runs_python_in_batch_chat(hub, sft_model, tmp_path):
    _, env = hub
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?"}) + "\n"
                                 for a, b in ((12, 34), (250, 17), (7, 81))))
    hfstack(env, "chat", "--model_name_or_path", str(sft_model[0]), "--input", str(questions), "--output",
            str(tmp_path / "answers.jsonl"), "--max_new_tokens", "64")
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    calls = [c for a in answers for c in a["tool_calls"]]
    assert any(c["tool"] == "python" and c["output"].strip().lstrip("-").isdigit() for c in calls), answers


def test_rl_rank_reward_and_rlhf_run_from_the_sft_model_on_the_hub(hub, sft_model, tmp_path):
    state, env = hub
    publish(state, "acme/tiny-sft", sft_model[0])
    start = time.perf_counter()
    hfstack(env, "rl", "--model_name_or_path", "acme/tiny-sft", "--output_dir", str(tmp_path / "rl"),
            "--tasks", "{arithmetic: 16, counting: 0}", "--max_steps", "2", "--num_generations", "2",
            "--prompts_per_step", "2", "--max_completion_length", "24", "--eval_limit", "4", "--progress", "false")
    hfstack(env, "rank", "--model_name_or_path", "acme/tiny-sft", "--output_dir", str(tmp_path / "prefs"),
            "--num_prompts", "12", "--k", "2", "--max_new_tokens", "12", "--judge",
            "hfstack.tasks.judges:reference_judge")
    hfstack(env, "reward", "--model_name_or_path", "acme/tiny-sft", "--dataset_name", str(tmp_path / "prefs"),
            "--output_dir", str(tmp_path / "rm"), "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--progress", "false")
    hfstack(env, "rlhf", "--model_name_or_path", str(tmp_path / "rl"), "--reward_model_path", str(tmp_path / "rm"),
            "--output_dir", str(tmp_path / "rlhf"), "--max_steps", "2", "--num_generations", "2",
            "--prompts_per_step", "2", "--max_completion_length", "12", "--progress", "false")
    seconds = time.perf_counter() - start
    print(f"\n[foreign chain] sft {sft_model[1]:.0f} s, rl+rank+reward+rlhf {seconds:.0f} s")
    assert summary(tmp_path / "rl", "eval.json")["pass@1_before"] is not None
    assert (tmp_path / "prefs" / "data" / "train.parquet").is_file()
    assert summary(tmp_path / "rm", "eval.json")["train_pairs"] > 0
    for stage in ("rl", "rlhf"):  # both load everywhere: the tokenizer class and the turn end
        saved = json.loads((tmp_path / stage / "tokenizer_config.json").read_text())
        assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_a_hub_model_with_the_protocol_is_not_resized_again(hub, sft_model, tmp_path):
    state, env = hub
    publish(state, "acme/tiny-sft", sft_model[0])
    hfstack(env, "sft", "--model_name_or_path", "acme/tiny-sft", "--output_dir", str(tmp_path / "again"),
            "--counts", "{arithmetic: 40}", "--max_steps", "2", "--progress", "false")
    base = summary(tmp_path / "again")["base"]
    assert base["tokens_added"] == 0 and base["vocab_rows"] == 576


def smollm_overrides(stage: str, out: Path) -> list[str]:
    """Each smollm recipe as written, sized down to 2 steps on the stand-in, its paths under `out`."""
    small = {
        "sft": ["--counts", "{identity: 20, arithmetic: 20, counting: 20, spelling: 20, chat: 40}",
                "--max_length", "256", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
                "--output_dir", str(out / "sft")],
        "rl": ["--model_name_or_path", str(out / "sft"), "--tasks", "{arithmetic: 8, counting: 8}",
               "--num_generations", "2", "--prompts_per_step", "2", "--max_completion_length", "16",
               "--eval_limit", "4", "--output_dir", str(out / "rl")],
        "rank": ["--model_name_or_path", str(out / "rl"), "--num_prompts", "12", "--k", "2", "--max_new_tokens", "12",
                 "--output_dir", str(out / "prefs")],
        "reward": ["--model_name_or_path", str(out / "rl"), "--dataset_name", str(out / "prefs"),
                   "--per_device_train_batch_size", "4", "--max_length", "256", "--output_dir", str(out / "rm")],
        "rlhf": ["--model_name_or_path", str(out / "rl"), "--reward_model_path", str(out / "rm"),
                 "--num_generations", "2", "--prompts_per_step", "2", "--max_completion_length", "12",
                 "--output_dir", str(out / "rlhf")],
    }[stage]
    steps = [] if stage == "rank" else ["--max_steps", "2", "--bf16", "false", "--progress", "false"]
    return ["--config", str(recipes_dir() / "smollm" / f"{stage}.yaml"), *small, *steps]


def test_the_smollm_preset_runs_on_a_stand_in(hub, tmp_path):
    """The stand-in under the recipe's own ids: SmolLM2's architecture class and a foreign tokenizer."""
    state, env = hub
    recipe = (recipes_dir() / "smollm" / "sft.yaml").read_text()
    model_id = next(line.split(":", 1)[1].strip() for line in recipe.splitlines()
                    if line.startswith("model_name_or_path:"))
    for key, repo in list(state.repos.items()):
        if key == f"model:{BASE_REPO}":
            state.repos[f"model:{model_id}"] = dict(repo)
            state.commit(f"model:{model_id}")
        if key == f"dataset:{CHAT_A_REPO}":
            state.repos["dataset:HuggingFaceTB/smol-smoltalk"] = dict(repo)
            state.commit("dataset:HuggingFaceTB/smol-smoltalk")
    for stage in SMOLLM_STAGES:
        hfstack(env, stage, *smollm_overrides(stage, tmp_path))
    assert summary(tmp_path / "sft")["base"]["model"] == model_id
    assert (tmp_path / "rlhf" / "model.safetensors").is_file()


def test_the_other_commands_take_a_hub_id_too(hub, sft_model, tmp_path):
    state, env = hub
    sha = publish(state, "acme/tiny-sft", sft_model[0])
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "What is 3 + 4?"}) + "\n")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in english_text(40)))
    hfstack(env, "eval", "--model_name_or_path", "acme/tiny-sft", "--model_revision", sha, "--limit", "2",
            "--max_new_tokens", "24", cwd=tmp_path)
    assert json.loads((tmp_path / "acme--tiny-sft.heldout_eval.json").read_text())  # not in the Hub cache
    hfstack(env, "generate", "--model_name_or_path", BASE_REPO, "--prompt", "the cat", "--max_new_tokens", "8",
            "--seed", "0", "--stream", "false")
    hfstack(env, "regurgitation", "--model_name_or_path", BASE_REPO, "--data", str(tmp_path / "corpus.jsonl"),
            "--num_docs", "2", "--prefix_tokens", "4", "--continuation_tokens", "4", cwd=tmp_path)
    assert (tmp_path / "acme--tiny-base.regurgitation.json").is_file()
    hfstack(env, "teach", "--model_name_or_path", "acme/tiny-sft", "--prompts", str(tmp_path / "prompts.jsonl"),
            "--output", str(tmp_path / "taught.jsonl"), "--max_new_tokens", "8")
    assert len((tmp_path / "taught.jsonl").read_text().splitlines()) == 1
    error = hfstack(env, "chat", "--model_name_or_path", "acme/absent", "--input", str(tmp_path / "prompts.jsonl"),
                    ok=False)
    assert "no model at 'acme/absent': not a local folder, and the Hub gave none (no such repository" in error
    assert "Traceback" not in error
    error = hfstack(env, "chat", "--model_name_or_path", "acme/tiny-sft", "--model_revision", "v9", "--input",
                    str(tmp_path / "prompts.jsonl"), ok=False)
    assert "no revision 'v9'" in error and "Traceback" not in error


def test_pretraining_starts_from_a_hub_tokenizer(hub, tmp_path):
    _, env = hub
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in english_text(400)))
    hfstack(env, "pretrain", "--tokenizer", BASE_REPO, "--data", str(tmp_path / "corpus.jsonl"), "--output_dir",
            str(tmp_path / "base"), "--max_steps", "4", "--seq_len", "64", "--batch_tokens", "256",
            "--per_device_train_batch_size", "4", "--eval_steps", "2", "--progress", "false")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert len(tokenizer) == 512 and tokenizer.bos_token == "<s>"  # the Hub tokenizer, as it was
    assert json.loads((tmp_path / "base" / "config.json").read_text())["vocab_size"] == 512
    assert summary(tmp_path / "base")["eval_bpb"] > 0  # bits per byte through the foreign byte-level vocabulary


def test_keeping_the_models_own_template_trains_chat_only(hub, tmp_path):
    _, env = hub
    hfstack(env, "sft", "--model_name_or_path", BASE_REPO, "--chat_template", "keep", "--output_dir",
            str(tmp_path / "kept"), "--dataset_mixture", f"{{datasets: [{{id: {CHAT_B_REPO}}}]}}", "--counts",
            "{arithmetic: 30, chat: 40}", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--logging_steps", "1", "--progress", "false")
    report = summary(tmp_path / "kept")
    assert report["base"]["tokens_added"] == 0 and report["dropped_conversations"]["tool_calls"] > 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "kept")
    assert tokenizer.chat_template == CHATML_TEMPLATE and "<|user_start|>" not in tokenizer.get_vocab()
    eos = json.loads((tmp_path / "kept" / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])


def test_a_hub_download_takes_only_the_top_level_model_files(hub, tmp_path):
    state, env = hub
    repo = dict(state.repos[f"model:{BASE_REPO}"])
    repo |= {"checkpoint-500/model.safetensors": b"x" * 64, "checkpoint-500/trainer_state.json": b"{}",
             "consolidated.safetensors": b"x" * 64, "runs/events.txt": b"log"}
    state.repos["model:acme/with-checkpoints"] = repo
    state.commit("model:acme/with-checkpoints")
    code = ("from hfstack.core.pretrained import resolve_model; from pathlib import Path; "
            "print(sorted(p.name for p in Path(resolve_model('acme/with-checkpoints')).rglob('*')))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not {"checkpoint-500", "trainer_state.json", "consolidated.safetensors", "runs", "events.txt"} & set(names)
