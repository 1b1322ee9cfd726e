"""Push a run to the Hugging Face Hub: the final model with its tokenizer and model card, and
optionally the datasets and the intermediate models, linked to each other.

    hfstack push --run runs/tiny --repo_id USER/NAME [--private true] [--datasets true] [--intermediate true]

Repositories (with `--repo_id USER/NAME`):
- `USER/NAME`: the final model (RUN/rlhf, else the newest of rl, sft, base), its tokenizer and chat
  template, and the report card as README.md;
- `--datasets`: `USER/NAME-data` (the data stage's parquet) and `USER/NAME-prefs` (the preference
  pairs and raw rankings), as dataset repositories;
- `--intermediate`: `USER/NAME-base`, `-sft`, `-rl` and `-rm`.
Each model card names its parent as `base_model` and the datasets it was trained on, so the Hub
shows the lineage. The token comes from the usual places (`HF_TOKEN`, `huggingface-cli login`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hfstack.config import ConfigError
from hfstack.reportcard import FINAL_MODELS, card_front_matter, final_model

PARENTS = {"sft": "base", "rl": "sft", "rlhf": "rl", "rm": "rl"}  # stage → the model it started from
SKIP = ["checkpoints/*", "*.hfstack-done", ".hfstack-done", "cache/*"]


@dataclass
class PushConfig:
    run: str = "runs/tiny"
    repo_id: str = ""
    private: bool = False
    datasets: bool = False  # also push the data stage's parquet and the preference pairs
    intermediate: bool = False  # also push base, sft, rl and the reward model

    def __post_init__(self):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo_id or ""):
            raise ConfigError(f"push: --repo_id must look like USER/NAME, got '{self.repo_id}'")
        if not Path(self.run).is_dir():
            raise ConfigError(f"push: no run directory at '{self.run}'")


def model_card(folder: Path, repo_id: str, parent: str | None, datasets: list[str]) -> str:
    """The folder's README (the report card, when there is one) with lineage in its metadata."""
    body = (folder / "README.md").read_text() if (folder / "README.md").is_file() else f"# {repo_id}\n"
    body = re.sub(r"\A---\n.*?\n---\n\n?", "", body, flags=re.S)  # replace any earlier metadata
    return card_front_matter(parent, datasets) + body


def push(cfg: PushConfig) -> dict[str, str]:
    """Returns {what: repo url}."""
    from huggingface_hub import HfApi

    run = Path(cfg.run)
    api = HfApi()
    try:
        api.whoami()
    except Exception as e:
        raise ConfigError(f"push: cannot use the Hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "log in with `huggingface-cli login` or set HF_TOKEN") from None
    final = final_model(run)
    if final is None:
        raise ConfigError(f"push: no model in '{run}' (looked for {', '.join(FINAL_MODELS)})")
    names = {stage: f"{cfg.repo_id}-{stage}" for stage in ("base", "sft", "rl", "rm")}
    names[final] = cfg.repo_id
    data_repos = {}
    if cfg.datasets:
        if list((run / "data").glob("*.parquet")):
            data_repos["data"] = f"{cfg.repo_id}-data"
        if (run / "prefs" / "data").is_dir():
            data_repos["prefs"] = f"{cfg.repo_id}-prefs"
    trained_on = {"base": ["data"], "rm": ["prefs"], "rlhf": ["prefs"]}
    pushed = {}
    for name, repo in data_repos.items():
        api.create_repo(repo, repo_type="dataset", private=cfg.private, exist_ok=True)
        patterns = ["*.parquet", "stats.json"] if name == "data" else ["data/*.parquet", "rankings.jsonl",
                                                                        "rollouts.jsonl", "summary.json"]
        api.upload_folder(folder_path=str(run / name), repo_id=repo, repo_type="dataset", allow_patterns=patterns,
                          commit_message=f"hfstack: {name} from run {run.name}")
        pushed[name] = f"{api.endpoint}/datasets/{repo}"
    stages = [final] + ([s for s in ("base", "sft", "rl", "rm") if s != final and (run / s / "config.json").is_file()]
                        if cfg.intermediate else [])
    for stage in stages:
        parent = PARENTS.get(stage)
        parent_repo = names[parent] if parent in stages else None  # link only to what this push uploads
        datasets = [data_repos[d] for d in trained_on.get(stage, []) if d in data_repos]
        api.create_repo(names[stage], private=cfg.private, exist_ok=True)
        folder = run / stage
        card = model_card(folder, names[stage], parent_repo, datasets)
        api.upload_folder(folder_path=str(folder), repo_id=names[stage], ignore_patterns=SKIP + ["README.md"],
                          commit_message=f"hfstack: {stage} model from run {run.name}")
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=names[stage],
                        commit_message="hfstack: model card")
        pushed[stage] = f"{api.endpoint}/{names[stage]}"
    for what, url in pushed.items():
        print(f"[push] {what:>5} → {url}")
    return pushed
