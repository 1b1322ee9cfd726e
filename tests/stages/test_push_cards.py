"""The cards `hfstack push` writes (hfstack.core.cards), read back through the real huggingface_hub client
from a loopback Hub (tests/hub_server.py) with ModelCard / DatasetCard and checked with `card.validate()`:
each model's pipeline, license, lineage, tags and model-index (the run's evaluation figures, numeric), the
reward model as text-classification, and each dataset's configs, funnel or rankings summary.

    python -m pytest -q tests/stages/test_push_cards.py
"""

import json
import subprocess
import sys
import textwrap

import pytest
import test_push
from test_push import hub_env, parsed_card

from hub_server import start_hub

run_dir = test_push.run_dir  # the small run (tokenizer, sft, rl, rlhf, data, prefs) these cards are made from


CARDS = textwrap.dedent("""
    import json, sys
    from huggingface_hub import DatasetCard, ModelCard
    from hfstack.cli import main
    code = main(["push", "--run", sys.argv[1], "--repo_id", "tester/tiny", "--datasets", "true", "--intermediate",
                 "true", "--model_license", "mit"])
    cards = {}
    for repo, kind in json.loads(sys.argv[2]).items():
        card = (ModelCard if kind == "model" else DatasetCard).load(repo, repo_type=kind)  # README.md via the Hub
        card.validate()  # POST /api/validate-yaml: the loopback Hub's metadata check
        cards[repo] = card.data.to_dict() | {"text": card.text}
    try:
        ModelCard("---\\npipeline_tag: not-a-pipeline\\n---\\n# x\\n").validate()
        refused = None
    except ValueError as e:
        refused = str(e)
    print("RESULT " + json.dumps({"exit": code, "cards": cards, "refused": refused}))
""")
HARNESS = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.41, "acc_stderr,none": 0.01,
                                    "acc_norm,none": 0.39}}}


@pytest.fixture
def carded_run(run_dir):
    """run_dir with a base model, a reward model (a sequence classifier) and the figures the stages leave:
    the data funnel, the rankings summary, pretraining's validation loss, the eval steps' held-out accuracies
    (with lm-evaluation-harness results), RL pass@1 and the reward model's pairwise accuracy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from hfstack.core.model import build_config, model_dims
    from hfstack.stages.rank import RankingStore

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "sft")
    config, scorer = (build_config(len(tokenizer), 64, model_dims(1), tokenizer) for _ in range(2))
    scorer.num_labels = 1  # as hfstack reward trains it: one score per answer
    torch.manual_seed(7)
    for folder, model in (("base", AutoModelForCausalLM.from_config(config)),
                          ("rm", AutoModelForSequenceClassification.from_config(scorer))):
        model.save_pretrained(run_dir / folder)
        tokenizer.save_pretrained(run_dir / folder)
    store = RankingStore(run_dir / "prefs")
    store.save_ranking(3, [0, 1, 2], ranker="hfstack.tasks.judges:reference_judge")  # prompt 3 re-ranked by a judge
    figures = {
        "data/stats.json": {"documents_read": 10, "documents_kept": 7, "steps": [
            {"step": "read warc", "docs_in": None, "docs_out": 10, "dropped": {}},
            {"step": "language", "docs_in": 10, "docs_out": 7, "dropped": {"lang_fr": 3}}]},
        "prefs/summary.json": {"prompts": 12, "ranked": 12, "pairs": {"train": 20, "test": 16}},
        "base/summary.json": {"steps": 20, "eval_loss": 6.25, "eval_bpb": 2.5},
        "eval/eval.json": {"identity": {"items": 5, "accuracy": 0.8, "examples": []},
                           "arithmetic": {"items": 5, "accuracy": 0.6, "accuracy_without_tools": 0.2,
                                          "one_answer_baseline": 0.2, "tool_use_rate": 1.0},
                           "knowledge": {"items": 4, "refusal_rate_on_unknown": 0.5, "accuracy_on_known": None},
                           "harness": HARNESS},
        "rl/eval.json": {"pass@1_before": {"arithmetic": 0.4}, "pass@1_after": {"arithmetic": 0.7},
                         "held_out_items": {"arithmetic": 5}, "steps": 3},
        "rm/eval.json": {"held_out_accuracy_before": 0.5, "held_out_accuracy_after": 0.75, "train_pairs": 20},
        "rlhf/eval.json": {"algo": "rloo", "beta": 0.05, "last": {"step": 3, "rm_score": 1.5, "judge": 0.25}},
        "final-eval/eval.json": {"identity": {"items": 5, "accuracy": 0.9}},
    }
    for name, value in figures.items():
        (run_dir / name).parent.mkdir(exist_ok=True)
        (run_dir / name).write_text(json.dumps(value))
    return run_dir


def metrics(meta: dict) -> dict[tuple[str, str], object]:
    """{(dataset name, metric name): value} of a card's model-index."""
    (index,) = meta["model-index"]
    return {(result["dataset"]["name"], metric.get("name", metric["type"])): metric["value"]
            for result in index["results"] for metric in result["metrics"]}


def test_pushed_cards_parse_back_with_hub_metadata_and_pass_validation(carded_run, tmp_path):
    repos = {f"tester/tiny{suffix}": "model" for suffix in ("", "-base", "-sft", "-rl", "-rm")}
    repos |= {"tester/tiny-data": "dataset", "tester/tiny-prefs": "dataset"}
    server, state = start_hub()
    done = subprocess.run([sys.executable, "-c", CARDS, str(carded_run), json.dumps(repos)], capture_output=True,
                          text=True, env=hub_env(server, tmp_path), timeout=300)
    server.shutdown()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["exit"] == 0 and "not-a-pipeline" in result["refused"]  # the validation is no rubber stamp
    # each README.md as pushed: checked by the commit (huggingface_hub validates a card before committing it),
    # then read back unchanged and checked again by card.validate(); the last check is the refused card
    pushed = [(key.split(":")[0], files["README.md"].decode()) for key, files in state.repos.items()]
    assert sorted(state.validated[:-1]) == sorted(pushed * 2)
    cards = result["cards"]
    for repo, kind in repos.items():
        meta = cards[repo]
        assert meta["language"] == "en" and "hfstack" in meta["tags"], (repo, meta)
        assert meta["license"] == ("mit" if kind == "model" else "other"), (repo, meta)
        if kind == "model":
            assert meta["library_name"] == "transformers" and all(
                isinstance(v, (int, float)) for v in metrics(meta).values()), (repo, meta)
    final, base, sft, rl, rm = (cards[f"tester/tiny{s}"] for s in ("", "-base", "-sft", "-rl", "-rm"))
    assert {repo: cards[repo]["pipeline_tag"] for repo in repos if repos[repo] == "model"} == {
        "tester/tiny": "text-generation", "tester/tiny-base": "text-generation", "tester/tiny-sft": "text-generation",
        "tester/tiny-rl": "text-generation", "tester/tiny-rm": "text-classification"}
    assert [m.get("base_model") for m in (base, sft, rl, rm, final)] == [
        None, "tester/tiny-base", "tester/tiny-sft", "tester/tiny-rl", "tester/tiny-rl"]
    assert base["datasets"] == ["tester/tiny-data"] and rm["datasets"] == final["datasets"] == ["tester/tiny-prefs"]
    assert base["tags"] == ["hfstack", "pretrain"] and rl["tags"] == ["hfstack", "trl", "rl", "grpo"]
    assert rm["tags"] == ["hfstack", "trl", "reward", "reward-model"] and "rloo" in final["tags"]
    assert metrics(base) == {("held-out documents", "validation loss"): 6.25,
                             ("held-out documents", "validation bits per byte"): 2.5}
    assert metrics(sft) == {("hfstack held-out identity", "identity accuracy"): 0.8,
                            ("hfstack held-out arithmetic", "arithmetic accuracy"): 0.6,
                            ("hfstack held-out arithmetic", "arithmetic accuracy without tools"): 0.2,
                            ("hfstack held-out knowledge", "knowledge refusal rate on unknown facts"): 0.5,
                            ("arc_easy", "acc"): 0.41, ("arc_easy", "acc_norm"): 0.39}
    harness = [r for r in sft["model-index"][0]["results"] if r["dataset"]["type"] == "arc_easy"]
    assert harness[0]["source"]["name"] == "lm-evaluation-harness"
    assert metrics(rl) == {("hfstack held-out arithmetic", "arithmetic pass@1"): 0.7}
    assert metrics(rm) == {("held-out preference pairs", "pairwise accuracy"): 0.75}
    assert rm["model-index"][0]["results"][0]["dataset"]["type"] == "tester/tiny-prefs"
    assert metrics(final) == {("hfstack held-out identity", "identity accuracy"): 0.9}  # final-eval, not rlhf's watch
    assert "# report card" in final["text"]
    assert "| hfstack held-out arithmetic | arithmetic pass@1 | 0.7 |" in rl["text"]  # a generated card's table
    data, prefs = cards["tester/tiny-data"], cards["tester/tiny-prefs"]
    assert data["task_categories"] == prefs["task_categories"] == ["text-generation"]
    assert data["size_categories"] == prefs["size_categories"] == ["n<1K"]
    assert data["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": ["00000.parquet"]}]}]
    assert "| language | 10 | 7 | lang_fr: 3 |" in data["text"] and "7 of 10 documents read were kept" in data["text"]
    assert "- train pairs: 20" in prefs["text"] and "- prompts: 12" in prefs["text"]
    assert "- ranked by a person (the ranking page): 11" in prefs["text"]
    assert "- ranked by the judge `hfstack.tasks.judges:reference_judge`: 1" in prefs["text"]


def test_a_stage_that_started_from_the_hub_names_it_as_base_model(tmp_path):
    """A folder whose fingerprint records a Hub model and dataset (what hfstack.core.rundir stores) gets them as
    lineage when nothing in the push is its parent; an adapter is a peft model, a SEQ_CLS one a classifier."""
    from hfstack.core.hub import plan_model_repo

    folder = tmp_path / "rlhf"
    folder.mkdir()
    (folder / ".hfstack-run.json").write_text(json.dumps({"stage": "rlhf", "inputs": {
        "model_name_or_path": {"hub": "acme/chat-7b", "commit": "abc"}, "reward_model_path": {"folder": "x"}}}))
    (folder / "eval.json").write_text(json.dumps({"algo": "ppo"}))
    (folder / "adapter_config.json").write_text(json.dumps({"task_type": "SEQ_CLS"}))
    card = plan_model_repo(folder, "tester/tiny", license="cc-by-4.0").card
    meta = parsed_card({"README.md": card.encode()}).data
    assert (meta.base_model, meta.library_name, meta.pipeline_tag, meta.license) == (
        "acme/chat-7b", "peft", "text-classification", "cc-by-4.0")
    assert meta.tags == ["hfstack", "rlhf", "ppo", "reward-model"] and meta.eval_results is None  # ppo: not TRL
    assert "trained from [acme/chat-7b]" in card and "model-index" not in card


def test_a_dpo_model_in_a_run_gets_trl_tags_its_held_out_figures_and_the_final_eval(carded_run):
    """The preference tail that saved last is the run's final model: the final-eval scores it, not rlhf."""
    import os
    import shutil

    from hfstack.core.cards import eval_reports, model_card
    from hfstack.core.layout import RunLayout

    shutil.copytree(carded_run / "rlhf", carded_run / "dpo")
    later = (carded_run / "rlhf" / "config.json").stat().st_mtime_ns + 10**9
    os.utime(carded_run / "dpo" / "config.json", ns=(later, later))
    (carded_run / "dpo" / "eval.json").write_text(json.dumps({"algo": "orpo", "held_out": {
        "before": {"rewards/accuracies": 0.5}, "after": {"rewards/accuracies": 0.625, "rewards/margins": 0.25}}}))
    run = RunLayout(carded_run)
    cards = {step: parsed_card({"README.md": model_card(
        run.folder(step), None, f"tester/{step}", datasets=["tester/tiny-prefs"], stage=step,
        reports=eval_reports(run.folder(step), run, step)).encode()}).data for step in ("dpo", "rlhf")}
    assert cards["dpo"].tags == ["hfstack", "trl", "dpo", "orpo"]
    assert {(r.dataset_name, r.metric_name): r.metric_value for r in cards["dpo"].eval_results} == {
        ("held-out preference pairs", "preference accuracy (implicit reward)"): 0.625,
        ("held-out preference pairs", "reward margin (implicit reward)"): 0.25,
        ("hfstack held-out identity", "identity accuracy"): 0.9}  # final-eval/eval.json
    assert cards["rlhf"].eval_results is None  # no longer the final model: its watch rows are no evaluation
