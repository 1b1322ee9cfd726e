"""The README.md cards of what hfstack publishes, built with huggingface_hub's ModelCard, ModelCardData and
EvalResult, and DatasetCard and DatasetCardData, so the metadata is what the Hub itself parses:

- a model card (`hfstack push`, a training stage's push_to_hub, `hfstack report` for the final model):
  library_name, pipeline_tag (text-generation, or text-classification for a `*ForSequenceClassification`
  such as the reward model: read from config.json), license, language, base_model (the parent repository,
  or the Hub model the stage started from), datasets, tags (hfstack, trl for a TRL-trained stage, the
  stage) and a model-index of the folder's figures as EvalResults: hfstack's held-out tasks, RL pass@1,
  the reward model's pairwise accuracy, DPO's held-out preference accuracy, pretraining's validation loss
  and bits per byte, and the lm-evaluation-harness results an eval report holds under `harness`;
- a dataset card: license, language, task_categories, tags, size_categories and the `configs` that point
  the viewer and `load_dataset` at the pushed parquet files; the data stage's card shows its funnel
  (what each filter dropped), the preference pairs' card the rankings (prompts, pairs, judge or person).

    text = model_card(Path("runs/tiny/sft"), None, "USER/NAME-sft", base_model="USER/NAME-base")

Tests: python -m pytest -q tests/stages/test_push.py
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from hfstack.core.layout import RunLayout
from hfstack.core.rundir import FINGERPRINT, read_json

MODEL_LICENSE = "apache-2.0"  # a model card's license unless told otherwise (`hfstack push --model_license`)
LANGUAGE = "en"  # what the run's data, chat template and evaluations are in
TRL_STAGES = ("sft", "rl", "reward", "rlhf", "dpo")  # trained with TRL's trainers (rlhf unless its algo is ppo)
ALGORITHMS = {"rl": "grpo"}  # a stage's algorithm tag; rlhf's and dpo's are in their eval.json
TAILS = ("rlhf", "dpo")  # the preference tails: the speedrun's final-eval scores the run's final one
# the metadata keys in the order a card shows them (the rest follow): library first, as the Hub's own cards
KEY_ORDER = ["library_name", "pipeline_tag", "license", "language", "base_model", "datasets", "tags"]
FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n\n?", re.S)
EVAL_REPORTS = ("heldout_eval.json", "eval.json", "summary.json")  # a model folder's figures (eval, stages)
EVALUATED_BY = {"sft": "eval"}  # model step → the speedrun step whose eval.json scores it (and TAILS: final-eval)
HELD_OUT = "hfstack-heldout"  # the dataset type of the SFT run's held-out sets (eval_sets.jsonl, not on the Hub)
HELD_OUT_METRICS = {"accuracy": "accuracy", "accuracy_without_tools": "accuracy without tools",
                    "refusal_rate_on_unknown": "refusal rate on unknown facts",
                    "accuracy_on_known": "accuracy on known facts",
                    "accuracy_with_passage": "accuracy with the passage",
                    "accuracy_without_passage": "accuracy without the passage"}  # `hfstack eval`'s figures per task
HARNESS = ("lm-evaluation-harness", "https://github.com/EleutherAI/lm-evaluation-harness")
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pipeline_tag(folder: Path) -> str:
    """text-classification for a sequence classifier (the reward model), else text-generation: from
    config.json's architectures, or a PEFT adapter's task_type."""
    config = read_json(Path(folder) / "config.json") or {}
    architectures = config.get("architectures") or []
    if any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return "text-classification"
    adapter = read_json(Path(folder) / "adapter_config.json") or {}
    return "text-classification" if not architectures and adapter.get("task_type") == "SEQ_CLS" else "text-generation"


def fingerprint_of(folder: Path) -> dict:
    """What made the folder (hfstack.core.rundir's OUT/.hfstack-run.json): its stage, settings and inputs."""
    return read_json(Path(folder) / FINGERPRINT) or {}


def hub_inputs(folder: Path) -> tuple[str | None, list[str]]:
    """The Hub model the folder's stage started from and the Hub datasets it read, as its fingerprint
    recorded them (an input the Hub cache held: {"hub": id}); local inputs are no lineage on the Hub."""
    inputs = fingerprint_of(folder).get("inputs") or {}
    hub = lambda value: value.get("hub") if isinstance(value, dict) else None  # noqa: E731
    model = next((hub(inputs.get(key)) for key in ("model_name_or_path", "init_from") if hub(inputs.get(key))), None)
    datasets = [hub(inputs.get("dataset_name"))]
    mixture = inputs.get("dataset_mixture")
    if isinstance(mixture, dict):
        datasets += [hub(entry.get("id")) for entry in mixture.get("datasets") or [] if isinstance(entry, dict)]
    return model, [name for name in datasets if name]


def held_out_result(task: str, metric: str, value: float, name: str) -> object:
    from huggingface_hub import EvalResult

    return EvalResult(task_type="text-generation", task_name="hfstack held-out evaluation", dataset_type=HELD_OUT,
                      dataset_name=f"hfstack held-out {task}", dataset_config=task, dataset_split="test",
                      metric_type=metric, metric_name=name, metric_value=value)


def report_results(report: dict, datasets: Sequence[str] = ()) -> list:
    """The EvalResults in one report: `hfstack eval`'s held-out tasks (and its `harness` results), rl's
    pass@1 after training, the reward model's held-out pairwise accuracy, pretraining's validation figures.
    Anything else in it (rlhf's watch rows, counts, examples) is not an evaluation result."""
    from huggingface_hub import EvalResult

    found = []
    for task, value in (report.get("pass@1_after") or {}).items():
        if _numeric(value):
            found.append(held_out_result(task, "pass@1", value, f"{task} pass@1"))
    if _numeric(report.get("held_out_accuracy_after")):
        found.append(EvalResult(task_type="text-classification", task_name="pairwise preference",
                                dataset_type=datasets[0] if datasets else "hfstack-preferences",
                                dataset_name="held-out preference pairs", dataset_split="test",
                                metric_type="accuracy", metric_name="pairwise accuracy",
                                metric_value=report["held_out_accuracy_after"]))
    held_out = report.get("held_out")  # dpo: TRL's figures on the held-out pairs, before and after
    after = held_out.get("after") if isinstance(held_out, dict) else None
    for key, metric, label in (("rewards/accuracies", "accuracy", "preference accuracy (implicit reward)"),
                               ("rewards/margins", "reward_margin", "reward margin (implicit reward)")):
        if isinstance(after, dict) and _numeric(after.get(key)):
            found.append(EvalResult(task_type="text-generation", task_name="pairwise preference",
                                    dataset_type=datasets[0] if datasets else "hfstack-preferences",
                                    dataset_name="held-out preference pairs", dataset_split="test",
                                    metric_type=metric, metric_name=label, metric_value=after[key]))
    for key, metric in (("eval_loss", "loss"), ("eval_bpb", "bits_per_byte")):
        if _numeric(report.get(key)):
            found.append(EvalResult(task_type="text-generation", task_name="language modelling",
                                    dataset_type=datasets[0] if datasets else "hfstack-data",
                                    dataset_name="held-out documents", dataset_split="validation",
                                    metric_type=metric, metric_name=f"validation {metric.replace('_', ' ')}",
                                    metric_value=report[key]))
    for task, entry in report.items():
        if isinstance(entry, dict) and "items" in entry:  # one task of `hfstack eval`
            found += [held_out_result(task, "refusal_rate" if key.startswith("refusal") else "accuracy", entry[key],
                                      f"{task} {name}") for key, name in HELD_OUT_METRICS.items()
                      if _numeric(entry.get(key))]
    harness = report.get("harness")
    results = harness.get("results") if isinstance(harness, dict) else None
    for task, metrics in (results or {}).items():
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            metric, _, kind = str(key).partition(",")  # lm-eval's "acc,none", "exact_match,strict-match"
            if _numeric(value) and "stderr" not in metric:
                found.append(EvalResult(
                    task_type="text-generation", dataset_type=str(task), dataset_name=str(metrics.get("alias", task)),
                    metric_type=metric, metric_name=metric if kind in ("", "none") else f"{metric} ({kind})",
                    metric_value=value, source_name=HARNESS[0], source_url=HARNESS[1]))
    return found


def eval_results(paths: Sequence[Path], datasets: Sequence[str] = ()) -> list:
    """The EvalResults of the reports at `paths` (missing or unreadable ones skipped); where two report
    the same figure, the newer file's wins."""
    reports = sorted((p for p in map(Path, paths) if p.is_file()), key=lambda p: -p.stat().st_mtime_ns)
    found, seen = [], set()
    for path in reports:
        for result in report_results(read_json(path) or {}, datasets):
            key = (*result.unique_identifier, result.dataset_name, result.metric_type, result.metric_name)
            if key not in seen:
                seen.add(key)
                found.append(result)
    return found


def eval_reports(folder: Path, run: RunLayout | None = None, step: str | None = None) -> list[Path]:
    """Where a model's figures are: its folder's reports, and in a run the speedrun's eval of that step."""
    paths = [Path(folder) / name for name in EVAL_REPORTS]
    if run is not None and step in EVALUATED_BY:
        paths.append(run.folder(EVALUATED_BY[step]) / "eval.json")
    if run is not None and step in TAILS and step == run.final_step():
        paths.append(run.final_eval / "eval.json")
    return paths


def model_tags(folder: Path, stage: str | None) -> list[str]:
    tags = ["hfstack"]
    if stage:
        algo = ALGORITHMS.get(stage) or (read_json(Path(folder) / "eval.json") or {}).get("algo")
        if stage in TRL_STAGES and algo != "ppo":
            tags.append("trl")
        tags += [stage] + ([str(algo)] if stage in ("rl", *TAILS) and algo else [])
    if pipeline_tag(folder) == "text-classification":
        tags.append("reward-model")
    return list(dict.fromkeys(tags))


def results_table(results: list) -> str:
    rows = [f"| {r.dataset_name} | {r.metric_name or r.metric_type} | {r.metric_value:.4g} |" for r in results]
    return "\n".join(["| evaluation | metric | value |", "|---|---|---|", *rows]) + "\n" if rows else ""


def model_card(folder: Path, body: str | None, name: str, *, base_model: str | None = None,
               datasets: Sequence[str] = (), license: str | None = MODEL_LICENSE, language: str | None = LANGUAGE,
               stage: str | None = None, reports: Sequence[Path] | None = None) -> str:
    """README.md for the model in `folder`: `body` (a report card; its own metadata is replaced) or a
    generated one, under metadata the Hub reads. `name` is the repository (the model-index's name);
    `base_model` and `datasets` are Hub ids (else the Hub ids the folder's fingerprint started from);
    `stage` defaults to the fingerprint's; the figures come from `reports` (default: eval_reports)."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    stage = stage or fingerprint_of(folder).get("stage")
    start_model, start_datasets = hub_inputs(folder)
    base_model = base_model or start_model
    datasets = list(dict.fromkeys([*datasets, *start_datasets]))
    results = eval_results(eval_reports(folder) if reports is None else reports, datasets)
    adapter = (folder / "adapter_config.json").is_file()
    data = ModelCardData(library_name="peft" if adapter else "transformers", pipeline_tag=pipeline_tag(folder),
                         license=license, language=language, base_model=base_model, datasets=datasets or None,
                         tags=model_tags(folder, stage), model_name=name if results else None,
                         eval_results=results or None)
    if body is None:
        about = f"The {f'`{stage}` ' if stage else ''}model of an hfstack run"
        body = (f"# {name}\n\n{about}" + (f", trained from [{base_model}](https://huggingface.co/{base_model})"
                                          if base_model else "") + ".\n\n" + results_table(results))
    body = FRONT_MATTER.sub("", body)
    return str(ModelCard(f"---\n{data.to_yaml(original_order=KEY_ORDER)}\n---\n\n{body}"))  # parsed: checked


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZES if rows < limit), "n>1B")


def funnel(folder: Path) -> str:
    """The data stage's funnel (stats.json) as Markdown: each step's documents in and out, and what it dropped."""
    stats = read_json(Path(folder) / "stats.json") or {}
    steps = [s for s in stats.get("steps") or [] if isinstance(s, dict)]
    if not steps:
        return ""
    cell = lambda value: "-" if value is None else f"{value:,}" if _numeric(value) else str(value)  # noqa: E731
    rows = [f"| {s.get('step', '?')} | {cell(s.get('docs_in'))} | {cell(s.get('docs_out'))} | "
            + (", ".join(f"{k}: {cell(v)}" for k, v in (s.get("dropped") or {}).items()) or "-") + " |"
            for s in steps]
    kept = (f" {cell(stats['documents_kept'])} of {cell(stats['documents_read'])} documents read were kept."
            if "documents_kept" in stats and "documents_read" in stats else "")
    return ("## The funnel\n\nWhat each step of the data pipeline let through and dropped." + kept + "\n\n"
            + "\n".join(["| step | documents in | documents out | dropped |", "|---|---|---|---|", *rows]) + "\n")


def rankings(folder: Path) -> str:
    """The rank stage's summary (summary.json) and who ranked (rankings.jsonl: a judge or a person), as Markdown."""
    folder = Path(folder)
    summary = read_json(folder / "summary.json") or {}
    newest: dict = {}  # prompt id → who ranked it last (a later ranking of a prompt replaces the earlier one)
    if (folder / "rankings.jsonl").is_file():
        for line in (folder / "rankings.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a write cut short
                continue
            if isinstance(row, dict):
                newest[row.get("prompt_id")] = row.get("ranker")
    rankers = Counter("a person (the ranking page)" if who == "person" else f"the judge `{who}`"
                      for who in newest.values())
    pairs = summary.get("pairs") if isinstance(summary.get("pairs"), dict) else {}
    lines = [f"- {label}: {summary[key]:,}" for key, label in (("prompts", "prompts"), ("ranked", "rankings"))
             if _numeric(summary.get(key))]
    lines += [f"- {split} pairs: {count:,}" for split, count in pairs.items() if _numeric(count)]
    lines += [f"- ranked by {who}: {count:,}" for who, count in rankers.most_common()]
    return "## The rankings\n\n" + "\n".join(lines) + "\n" if lines else ""


def dataset_card(kind: str, folder: Path, repo_id: str, files: dict[str, Path], run_name: str, license: str,
                 model_repo: str, language: str | None = LANGUAGE) -> str:
    """README.md for a dataset of `kind` "data" or "preferences" made from `folder`'s pushed `files`
    ({path in the repo: local parquet}), with the metadata the Hub's viewer and `load_dataset` read."""
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard, DatasetCardData

    splits: dict[str, list[str]] = {}
    for name in files:
        split = Path(name).stem if kind == "preferences" else "train"  # data/train.parquet, data/test.parquet
        splits.setdefault(split, []).append(name)
    shards = {name: pq.ParquetFile(path) for name, path in files.items()}  # reads only the footers
    columns = ", ".join(next(iter(shards.values())).schema_arrow.names)
    rows = {split: sum(shards[n].metadata.num_rows for n in names) for split, names in sorted(splits.items())}
    counts = ", ".join(f"{split}: {count:,} rows" for split, count in rows.items())
    model = f"[{model_repo}](https://huggingface.co/{model_repo})"
    if kind == "data":
        about = (f"Cleaned, deduplicated text documents: the pretraining data that the `data` stage of the hfstack "
                 f"run `{run_name}` made for {model}.")
        tags, figures = ["hfstack", "data", "pretraining"], funnel(folder)
    else:
        about = (f"Preference pairs in TRL's conversational format, from rankings of the policy's sampled answers in "
                 f"the `rank` stage of the hfstack run `{run_name}`; the reward model and RLHF of {model} trained on "
                 "them.")
        if "test" not in splits:
            about += " The held-out test split is not published."
        tags, figures = ["hfstack", "trl", "rank", "preferences"], rankings(folder)
    data = DatasetCardData(license=license, language=language, task_categories=["text-generation"], tags=tags,
                           size_categories=[size_category(sum(rows.values()))],
                           configs=[{"config_name": "default", "data_files": [
                               {"split": split, "path": sorted(names)} for split, names in sorted(splits.items())]}])
    body = f"# {repo_id}\n\n{about}\n\nColumns: {columns}. {counts}.\n" + (f"\n{figures}" if figures else "")
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
