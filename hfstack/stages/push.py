"""Push a run to the Hugging Face Hub: the final model with its tokenizer and model card, and
optionally the datasets and the intermediate models, linked to each other.

    hfstack push --run runs/tiny --repo_id USER/NAME [--dry_run true] [--datasets true] [--intermediate true]
                 [--private false] [--include_eval_sets true] [--license other] [--model_license apache-2.0]

What goes up is an allowlist, never a folder: a run directory also holds secrets (`.env`), logs
(nohup.out, wandb/, runs/), checkpoints, pickles (training_args.bin) and held-out evaluation sets.
`files_to_push` (hfstack.core.hub, which the training stages' push_to_hub share) names every file;
each repository gets exactly those in one commit.
- `USER/NAME`: the final model (RUN/rlhf, else the newest of rl, sft, base): top-level weights
  (*.safetensors and their index, or a PEFT adapter), config.json, generation_config.json, the
  tokenizer files and chat template, the report card as README.md and the PNGs that card shows;
- `--intermediate`: `USER/NAME-base`, `-sft`, `-rl` and `-rm`, chosen the same way;
- `--datasets`: `USER/NAME-data` (the data stage's parquet shards) and `USER/NAME-prefs` (the
  preference pairs' training split), each with a dataset card.
Held-out sets (the SFT stage's eval_sets.jsonl, the rank stage's test split) stay local unless
`--include_eval_sets true`. Repositories are created private unless `--private false`.
`--dry_run true` prints each repository's files and sizes and uploads nothing (no login needed).
Each model card names its parent as `base_model` (the parent's repository in this push, else the Hub
model the stage started from) and the datasets it was trained on, so the Hub shows the lineage
(hfstack.core.layout.RunLayout: which folder holds which model, and its parent); its metadata also gives
the license (`--model_license`), language, pipeline (text-classification for the reward model), tags
and the evaluation results the run measured (hfstack.core.cards). Each dataset card gives the license
(`--license`), the parquet files as `configs`, and the data funnel or the rankings summary.
The token comes from `HF_TOKEN` or `hf auth login`.
Tests: python -m pytest -q tests/stages/test_push.py
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.cards import dataset_card, eval_reports
from hfstack.core.config import ConfigError, check_fields
from hfstack.core.hub import (
    RepoPush,
    commit_repo,
    files_to_push,
    hub_api,
    plan_model_repo,
    print_plan,
)
from hfstack.core.layout import DATASETS, FINAL_CANDIDATES, RunLayout

DATASET_KINDS = {"data": "data", "rank": "preferences"}  # dataset step → its kind for files_to_push and dataset_card


@dataclass
class PushConfig:
    run: str = "runs/tiny"  # the run directory to push
    repo_id: str = ""  # USER/NAME: the final model's repository; the others add -base, -data, ...
    private: bool = True  # new repos are private; `--private false` publishes them (an existing repo keeps its own)
    datasets: bool = False  # also push the data stage's parquet and the preference pairs
    intermediate: bool = False  # also push base, sft, rl and the reward model
    dry_run: bool = False  # list what would go up, with sizes; no login, no upload
    include_eval_sets: bool = False  # also push the held-out sets (once public, they can leak into training data)
    license: str = "other"  # for the dataset cards: web text keeps its pages' own terms
    model_license: str = "apache-2.0"  # for the model cards: a Hub license id
    language: str = "en"  # the cards' `language`: what the data, the chat template and the evaluations are in

    def __post_init__(self):
        check_fields(self, "push")  # an empty --run would mean the current directory
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo_id or ""):
            raise ConfigError(f"push: --repo_id must look like USER/NAME, got '{self.repo_id}'")
        if not Path(self.run).is_dir():
            raise ConfigError(f"push: no run directory at '{self.run}'")
        for name in ("license", "model_license"):
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", getattr(self, name) or ""):
                raise ConfigError(f"push: --{name} must be a Hub license id such as 'other' or 'apache-2.0', "
                                  f"got '{getattr(self, name)}'")
        if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)?|code|multilingual", self.language or ""):
            raise ConfigError(f"push: --language must be a language code such as 'en', got '{self.language}'")


def plan_push(cfg: PushConfig) -> list[RepoPush]:
    """Every repository this push writes, with its exact files and card; touches no network. Repositories
    are named after the run's folders (NAME-base, NAME-prefs): RunLayout says which is which."""
    run = RunLayout(Path(cfg.run))
    final = run.final_step()
    if final is None:
        looked = ", ".join(run.folder(step).name for step in FINAL_CANDIDATES)
        raise ConfigError(f"push: no model in '{cfg.run}' (looked for {looked})")
    plans: list[RepoPush] = []
    data_repos: dict[str, str] = {}  # dataset step → the repo this push uploads it to
    for step in DATASETS if cfg.datasets else ():
        kind, what = DATASET_KINDS[step], run.folder(step).name
        files = files_to_push(run.folder(step), kind, include_eval_sets=cfg.include_eval_sets)
        if files:
            data_repos[step] = f"{cfg.repo_id}-{what}"
            card = dataset_card(kind, run.folder(step), data_repos[step], files, run.root.name, cfg.license,
                                cfg.repo_id, cfg.language)
            plans.append(RepoPush(what, data_repos[step], "dataset", files, card))
    names = {step: f"{cfg.repo_id}-{run.folder(step).name}" for step in run.models()} | {final: cfg.repo_id}
    steps = [final] + ([s for s in run.models() if s != final] if cfg.intermediate else [])
    for step in steps:
        parent = run.parent(step)
        body = None  # the folder's README.md, else (the final model) the report card
        if step == final and not (run.folder(step) / "README.md").is_file() and (run.report / "report.md").is_file():
            body = (run.report / "report.md").read_text()
        plans.append(plan_model_repo(
            run.folder(step), names[step], what=run.folder(step).name, card=body,
            base_model=names[parent] if parent in steps else None,  # else the Hub model it started from, if any
            datasets=[data_repos[d] for d in run.trained_on(step) if d in data_repos],
            include_eval_sets=cfg.include_eval_sets, image_dirs=(run.report,), stage=step,
            license=cfg.model_license, language=cfg.language, reports=eval_reports(run.folder(step), run, step)))
    return plans


def push(cfg: PushConfig) -> dict[str, str]:
    """Returns {what: repo url}, or {what: repo id} for a dry run."""
    plans = plan_push(cfg)
    if cfg.dry_run:
        print_plan(plans)
        return {plan.what: plan.repo_id for plan in plans}
    api = hub_api("push")
    run_name = Path(cfg.run).name
    pushed = {plan.what: commit_repo(api, plan, f"hfstack: {plan.what} from run {run_name}", private=cfg.private)
              for plan in plans}
    for what, url in pushed.items():
        print(f"[push] {what:>5} → {url}")
    return pushed


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = PushConfig
run = push
