"""The report card from what the stages leave in a run directory; stages that did not run are left out."""

import json

from hfstack.core.layout import RunLayout
from hfstack.stages.report import ReportConfig, report


def test_report_card_from_a_partial_run(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "stats.json").write_text(json.dumps({"steps": [
        {"step": "read warc", "docs_in": None, "docs_out": 10, "dropped": {}},
        {"step": "language", "docs_in": 10, "docs_out": 7, "dropped": {"lang_fr": 3}}]}))
    (run / "base").mkdir()
    (run / "base" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 10, "loss": 7.0, "tokens_per_s": 1000.0}, {"step": 20, "loss": 6.0, "tokens_per_s": 3000.0},
        {"step": 20, "eval_loss": 6.2, "eval_bpb": 2.1}]))
    (run / "base" / "summary.json").write_text(json.dumps({"parameters": 1234, "steps": 20, "tokens_seen": 5000,
                                                            "seconds": 3.0, "eval_loss": 6.2, "eval_bpb": 2.1}))
    (run / "base" / "config.json").write_text("{}")  # the newest model of this run: it gets the card
    (run / "regurgitation").mkdir()
    (run / "regurgitation" / "report.json").write_text(json.dumps({
        "prefix_tokens": 32, "continuation_tokens": 32, "train": {"docs": 40, "mean_matched_tokens": 3.5,
        "exact_continuations": 1}, "heldout": {"docs": 11, "mean_matched_tokens": 0.4, "exact_continuations": 0},
        "heldout_in_context": {"docs": 11, "mean_matched_tokens": 0.5, "exact_continuations": 0}}))
    (run / "data" / ".hfstack-done").write_text(json.dumps({"stage": "data", "seconds": 1.5}))
    out = report(ReportConfig(run=str(run)))
    text = (out / "report.md").read_text()
    assert "## Data: the funnel" in text and "lang_fr=3" in text and "## Pretraining" in text
    assert "| 1,234 | 20 | 5,000 | 3.0 | 6.2 | 2.1 |" in text
    assert "| held-out, passage in context | 11 | 0.5 | 0 |" in text
    assert "| training documents | 40 | 3.5 | 1 |" in text
    assert "Pretraining throughput: 2,000 tokens/s" in text and "| data | 1.5 |" in text
    assert "## Tokenizer" not in text and "## RLHF" not in text  # those stages did not run
    assert (out / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "pretraining.png").is_file()
    assert "<h2>Environment</h2>" in (out / "report.html").read_text()
    card = (run / "base" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "## Pretraining" in card


def test_time_per_step_from_the_markers_in_the_output_folders(tmp_path):
    """The speedrun's marker in each step's folder names the step: eval and final-eval both run the eval
    stage and get a row each. A run of the previous layout kept the step's seconds in RUN/<step name>,
    beside the stage's own marker: those seconds are still shown."""
    run = RunLayout(tmp_path / "run")
    markers = {"eval": {"stage": "eval", "step": "eval", "seconds": 4.5},
               "final-eval": {"stage": "eval", "step": "final-eval", "seconds": 5.5},
               "reward": {"stage": "reward", "step": "reward", "seconds": 6.5},
               "pretrain": {"stage": "pretrain", "steps": 20}}  # the stage's own, from the previous layout
    for step, info in markers.items():
        run.folder(step).mkdir(parents=True)
        (run.folder(step) / ".hfstack-done").write_text(json.dumps(info))
    run.old_marker("pretrain").mkdir()
    (run.old_marker("pretrain") / ".hfstack-done").write_text(json.dumps({"stage": "pretrain", "seconds": 2.5}))
    text = (report(ReportConfig(run=str(run.root))) / "report.md").read_text()
    for row in ("| eval | 4.5 |", "| final-eval | 5.5 |", "| reward | 6.5 |", "| pretrain | 2.5 |"):
        assert row in text, text
    assert text.count("| pretrain |") == 1
