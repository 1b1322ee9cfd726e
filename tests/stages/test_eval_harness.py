"""`hfstack eval` with lm-evaluation-harness: the held-out sets exported as lm_eval tasks reproduce hfstack's
prompts, answers and tool-free scores through stock `lm_eval.simple_evaluate`; the exported scoring agrees
with hfstack's scorers; local GSM8K- and ARC-format tasks run from `--include_path` on a Hub id, with
chance-corrected multiple-choice accuracy; bad task names and paths are one-line errors. Offline: every
dataset is a local jsonl (tests/fixtures/harness/), and conftest's guard fails any network call.

    python -m pytest -q tests/stages/test_eval_harness.py
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path

import pytest

from hfstack.cli import main
from hfstack.stages.eval import EvalConfig, evaluate
from hfstack.tasks.harness import KNOWLEDGE, SCORING, task_config, write_utils
from hfstack.tasks.identity import IdentityCard, IdentityTask
from hfstack.tasks.judges import is_refusal, word_overlap_judge
from hfstack.tasks.registry import TASKS

pytest.importorskip("lm_eval")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "harness"


def lm_eval_scores(name: str, answers: list[str], rows: list[dict]) -> list[float]:
    """The exported task's scoring of the answers, run by lm_eval's own regex filter and exact_match."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    config = task_config(name, Path("unused.jsonl"), [], [], 96, "model")
    regex = config["filter_list"][0]["filter"][0]
    options = {k: v for k, v in config["metric_list"][0].items() if k not in ("metric", "aggregation",
                                                                              "higher_is_better")}
    extracted = RegexFilter(regex["regex_pattern"], regex["group_select"]).apply([[a] for a in answers], rows)
    return [exact_match_hf_evaluate([e[0]], [r["answer"]], **options)["exact_match"] for e, r in zip(extracted, rows)]


def test_exported_scoring_agrees_with_hfstacks_scorers(tmp_path):
    """Regex filters + exact_match score every answer as the task's own `score` does (tool-free), and
    utils.py, written from hfstack's judges' source, scores identity and knowledge as hfstack does."""
    rng = random.Random(0)
    for name in ("arithmetic", "counting", "spelling"):
        rows = TASKS[name].generate(60, seed=1)["eval"]
        answers = []
        for row in rows:
            right = row["messages"][-1]["content"]
            answers += [right, right.replace(row["answer"], str(int(row["answer"]) + 1)) if row["answer"].lstrip(
                "-").isdigit() else right.upper(), rng.choice(["", "p (1), o (2), so 2", "The answer is 1,234.",
                                                                "-7 or 7?", "x1,2", f"{row['answer']}0"])]
        rows = [r for r in rows for _ in range(3)]
        expected = [float(TASKS[name].score(r, a, no_tools=True)) for r, a in zip(rows, answers)]
        assert lm_eval_scores(name, answers, rows) == expected, name
        assert 0 < sum(expected) < len(expected)  # both right and wrong answers were scored

    write_utils(tmp_path)
    spec = importlib.util.spec_from_file_location("exported_utils", tmp_path / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    for row in IdentityTask().generate(40, seed=0, card=IdentityCard())["eval"]:
        for answer in (row["messages"][-1]["content"], "I am a helpful assistant.", row["facts"][0].upper()):
            doc = {"facts": row["facts"], "answer": row["messages"][-1]["content"]}
            assert utils.identity(doc, [answer])["accuracy"] == float(IdentityTask().score(row, answer))
    for answer, reference, known in [("Paris is the capital of France.", "The capital of France is Paris.", True),
                                     ("I don't know that one.", "Heaps are arrays.", False)]:
        scores = utils.knowledge({"answer": reference, "known": known}, [answer])
        assert scores["accuracy"] == float(word_overlap_judge(answer, reference))
        assert scores["refusal_rate_on_unknown" if not known else "accuracy_on_known"] == float(
            is_refusal(answer) if not known else word_overlap_judge(answer, reference))
    assert utils.mean_of_present([1.0, None, 0.0]) == 0.5 and utils.mean_of_present([None]) is None
    assert set(SCORING) >= {"identity", "arithmetic", "counting", "spelling", KNOWLEDGE}


def test_stock_lm_eval_on_the_exported_tasks_reproduces_hfstacks_tool_free_eval(tiny_sft_model, tmp_path):
    """Stock `lm_eval.simple_evaluate` on the exported tasks renders hfstack's prompts to the token (multi-turn
    identity rows included), generates hfstack's tool-free answers, and its scores are hfstack's "no tools"
    scores on the same items."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from hfstack.core.model import load_model

    out = tmp_path / "tasks"
    exported = evaluate(EvalConfig(model_name_or_path=str(tiny_sft_model), export_tasks=str(out)))["export"]
    rows = [json.loads(line) for line in (tiny_sft_model / "eval_sets.jsonl").open()]
    by_task = {name: [r for r in rows if r["task"] == name] for name in ("identity", "arithmetic", "counting")}
    assert exported["tasks"] == {f"hfstack_{name}": len(items) for name, items in by_task.items()}
    assert exported["earlier_turns_dropped"] == 0 and "add_bos_token=True" in exported["command"]
    group = (out / "hfstack.yaml").read_text()
    assert "group: hfstack" in group and all(f"- hfstack_{name}" in group for name in by_task)
    assert "<|assistant_end|>" in (out / "hfstack_arithmetic.yaml").read_text()

    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(tiny_sft_model), "add_bos_token": True, "max_length": 512,
                                "dtype": "float32", "device": "cpu", "batch_size": 16},
        tasks=["hfstack"], task_manager=TaskManager(include_path=str(out), include_defaults=False),
        apply_chat_template=True, log_samples=True, verbosity="ERROR")
    model, tokenizer = load_model(str(tiny_sft_model))
    for name, items in by_task.items():
        key, task = f"hfstack_{name}", TASKS[name]
        metric = "accuracy,none" if name == "identity" else "exact_match,hfstack"
        metrics = results["results"][key]
        assert {metric, metric.replace(",", "_stderr,")} <= set(metrics)
        assert results["n-samples"][key]["effective"] == len(items)
        samples = sorted(results["samples"][key], key=lambda s: s["doc_id"])
        accuracy, replies = task.accuracy(model, tokenizer, items, 96, tools={}, no_tools=True)  # eval's "no tools"
        prefill = task.no_tool_prefill or ""
        for row, sample, reply in zip(items, samples, replies):
            context = tokenizer(sample["arguments"][0][0], add_special_tokens=False)["input_ids"]
            assert context == reply.prompt_ids, (name, sample["arguments"][0][0])  # hfstack's prompt, prefill included
            answer = sample["resps"][0][0]
            assert (prefill + answer).strip() == reply.answer  # the same greedy answer
            assert sample[metric.split(",")[0]] == float(task.score(row, answer, no_tools=True))
        assert 0 <= metrics[metric] <= 1 and metrics[metric] == pytest.approx(accuracy, abs=1e-4)
    multi_turn = [r for r in by_task["identity"] if sum(m["role"] == "user" for m in r["messages"]) > 1]
    assert multi_turn  # the fixture's identity set has folded rows, so the token check above covered them


def test_local_gsm8k_and_arc_tasks_run_on_a_hub_id(tiny_sft_model, tmp_path, monkeypatch):
    """`hfstack eval --harness lm_eval` on a Hub id (served from the offline cache): GSM8K-format generation
    with regex exact match and ARC-format log-likelihood multiple choice from --include_path, stderr beside
    each metric and, for multiple choice, accuracy corrected for guessing among k choices."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-sft" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in tiny_sft_model.iterdir():
        if path.is_file():
            (snapshot / path.name).write_bytes(path.read_bytes())
    (cache / "models--acme--tiny-sft" / "refs").mkdir()
    (cache / "models--acme--tiny-sft" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(FIXTURES)  # the fixtures' data_files are relative to it
    output = tmp_path / "eval.json"
    output.write_text(json.dumps({"arithmetic": {"items": 8, "accuracy": 0.5}}))  # an earlier held-out run's
    assert main(["eval", "--model_name_or_path", "acme/tiny-sft", "--harness", "lm_eval", "--tasks",
                 "tiny_gsm8k,tiny_arc", "--include_path", str(FIXTURES), "--num_fewshot", "1", "--limit", "7",
                 "--batch_size", "4", "--max_length", "512", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["arithmetic"] == {"items": 8, "accuracy": 0.5}  # kept beside the harness results
    harness = report["harness"]
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert harness["model_args"]["add_bos_token"] is True  # hfstack's tokenizer has <|endoftext|> as bos
    assert harness["model_args"]["dtype"] == ("bfloat16" if bf16 else "float32")
    assert Path(harness["model_args"]["pretrained"]) == snapshot and harness["num_fewshot"] == 1
    gsm8k, arc = harness["results"]["tiny_gsm8k"], harness["results"]["tiny_arc"]
    assert gsm8k["items"] == arc["items"] == 7 and gsm8k["num_fewshot"] == 1
    for key in ("exact_match,strict-match", "exact_match,flexible-extract"):
        assert 0 <= gsm8k[key] <= 1 and isinstance(gsm8k[key.replace(",", "_stderr,")], float)
    assert len(gsm8k["examples"]) == 3 and gsm8k["examples"][0]["target"].endswith("#### 7")
    chance = (6 / 4 + 1 / 3) / 7  # the first 7 items: six with 4 choices, one with 3
    assert arc["chance"] == pytest.approx(chance, abs=1e-4)
    for metric in ("acc", "acc_norm"):
        raw = arc[f"{metric},none"]
        assert 0 <= raw <= 1 and isinstance(arc[f"{metric}_stderr,none"], float)
        assert arc[f"{metric}_chance_corrected,none"] == pytest.approx((raw - chance) / (1 - chance), abs=1e-4)


def fake_model(tmp_path: Path) -> Path:
    """A folder that passes the model checks (config.json, a weights file): enough for errors raised before loading."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"")
    return model


@pytest.mark.parametrize("flags, message", [
    (["--harness", "lm_eval", "--tasks", "tiny_arc,no_such_task", "--include_path", str(FIXTURES)],
     "no lm_eval task named 'no_such_task' among lm_eval's .* tasks or in .*; list them with `lm_eval ls tasks`"),
    (["--harness", "lm_eval", "--tasks", "tiny_arc", "--include_path", "/no/such/folder"],
     "include_path '/no/such/folder' is not a folder of lm_eval task YAMLs"),
    (["--harness", "lm_eval"], "--harness lm_eval needs --tasks"),
    (["--tasks", "hellaswag", "--num_fewshot", "5"], "--tasks, --num_fewshot set for an lm_eval run; add --harness"),
    (["--harness", "lm_eval", "--tasks", "hfstack", "--export_tasks", "x", "--include_path", "y"],
     "leave --include_path out"),
])
def test_bad_harness_input_is_a_one_line_error(tmp_path, capsys, flags, message):
    model = fake_model(tmp_path)
    assert main(["eval", "--model_name_or_path", str(model), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hfstack eval: error: eval: ") and re.search(message, err)
    assert not (model / "heldout_eval.json").exists()
