"""Push a run to the Hugging Face Hub: the final model with its tokenizer and model card, and
optionally the datasets and the intermediate models, linked to each other.

    hfstack push --run runs/tiny --repo_id USER/NAME [--dry_run true] [--datasets true] [--intermediate true]
                 [--private false] [--include_eval_sets true] [--license other]

What goes up is an allowlist, never a folder: a run directory also holds secrets (`.env`), logs
(nohup.out, wandb/, runs/), checkpoints, pickles (training_args.bin) and held-out evaluation sets.
`files_to_push` names every file; each repository gets exactly those in one commit.
- `USER/NAME`: the final model (RUN/rlhf, else the newest of rl, sft, base): top-level weights
  (*.safetensors and their index, or a PEFT adapter), config.json, generation_config.json, the
  tokenizer files and chat template, the report card as README.md and the PNGs that card shows;
- `--intermediate`: `USER/NAME-base`, `-sft`, `-rl` and `-rm`, chosen the same way;
- `--datasets`: `USER/NAME-data` (the data stage's parquet shards) and `USER/NAME-prefs` (the
  preference pairs' training split), each with a dataset card.
Held-out sets (the SFT stage's eval_sets.jsonl, the rank stage's test split) stay local unless
`--include_eval_sets true`. Repositories are created private unless `--private false`.
`--dry_run true` prints each repository's files and sizes and uploads nothing (no login needed).
Each model card names its parent as `base_model` and the datasets it was trained on, so the Hub
shows the lineage. The token comes from `HF_TOKEN` or `hf auth login`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.cards import card_front_matter
from hfstack.core.config import ConfigError, check_fields
from hfstack.core.layout import FINAL_MODELS, final_model

PARENTS = {"sft": "base", "rl": "sft", "rlhf": "rl", "rm": "rl"}  # stage → the model it started from
TRAINED_ON = {"base": ["data"], "rm": ["prefs"], "rlhf": ["prefs"]}  # stage → the dataset pushes it used

# A model folder's files that `from_pretrained` reads, by exact name (weights by suffix, below):
# the model, a PEFT adapter, and everything transformers writes for a tokenizer of any kind
# (this repo's own BPE tokenizer saves tokenizer.json, tokenizer_config.json, chat_template.jinja).
MODEL_FILES = frozenset({
    "config.json", "generation_config.json", "adapter_config.json", "chat_template.jinja",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
})
WEIGHTS = (".safetensors", ".safetensors.index.json")  # never *.bin or *.pt: those are pickles
EVAL_SETS = "eval_sets.jsonl"  # `hfstack sft` writes the held-out conversations `hfstack eval` scores
HELD_OUT_SPLIT = "test.parquet"  # the rank stage's held-out pairs, the reward model's test set
CARD_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


@dataclass
class PushConfig:
    run: str = "runs/tiny"
    repo_id: str = ""
    private: bool = True  # new repos are private; `--private false` publishes them (an existing repo keeps its own)
    datasets: bool = False  # also push the data stage's parquet and the preference pairs
    intermediate: bool = False  # also push base, sft, rl and the reward model
    dry_run: bool = False  # list what would go up, with sizes; no login, no upload
    include_eval_sets: bool = False  # also push the held-out sets (once public, they can leak into training data)
    license: str = "other"  # for the dataset cards: web text keeps its pages' own terms

    def __post_init__(self):
        check_fields(self, "push")  # an empty --run would mean the current directory
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo_id or ""):
            raise ConfigError(f"push: --repo_id must look like USER/NAME, got '{self.repo_id}'")
        if not Path(self.run).is_dir():
            raise ConfigError(f"push: no run directory at '{self.run}'")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.license or ""):
            raise ConfigError(f"push: --license must be a Hub license id such as 'other' or 'apache-2.0', "
                              f"got '{self.license}'")


@dataclass
class RepoPush:
    """One repository's commit: its files (path in the repo → local file) and the generated README.md."""

    what: str  # a stage name, "data" or "prefs"
    repo_id: str
    repo_type: str  # "model" or "dataset"
    files: dict[str, Path]
    card: str

    def sizes(self) -> dict[str, int]:
        return {"README.md": len(self.card.encode())} | {name: path.stat().st_size
                                                          for name, path in self.files.items()}


def card_images(card: str) -> list[str]:
    """The local PNGs a card shows, by bare file name: a path with a folder in it, or a url, is not ours."""
    found = [a or b for a, b in CARD_IMAGE.findall(card)]
    return sorted({name for name in found if name.endswith(".png") and Path(name).name == name})


def files_to_push(folder: Path, kind: str, card: str = "", include_eval_sets: bool = False,
                  image_dirs: tuple[Path, ...] = ()) -> dict[str, Path]:
    """Everything one repository gets besides its README.md, as {path in the repo: local file}.

    kind "model": the folder's top-level weights, config and tokenizer files (nothing nested: no
    checkpoints/, no first_phase/), plus the PNGs `card` shows, found in the folder or `image_dirs`.
    kind "data": the folder's top-level parquet shards. kind "prefs": data/*.parquet, the preference
    pairs. Held-out sets only with `include_eval_sets`. Reads file names only; writes nothing."""
    folder = Path(folder)
    top = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}
    if kind == "model":
        files = {name: p for name, p in top.items() if name in MODEL_FILES or name.endswith(WEIGHTS)}
        if include_eval_sets and EVAL_SETS in top:
            files[EVAL_SETS] = top[EVAL_SETS]
        for image in card_images(card):
            where = next((d / image for d in (folder, *image_dirs) if (d / image).is_file()), None)
            if where is not None:  # a missing plot leaves a broken image, not a failed push
                files[image] = where
        return files
    if kind == "data":
        return {name: p for name, p in top.items() if name.endswith(".parquet")}
    if kind == "prefs":
        shards = sorted((folder / "data").glob("*.parquet")) if (folder / "data").is_dir() else []
        return {f"data/{p.name}": p for p in shards if p.is_file() and (include_eval_sets or p.name != HELD_OUT_SPLIT)}
    raise ValueError(f"files_to_push: unknown kind '{kind}' (model, data or prefs)")


def model_card(body: str | None, repo_id: str, parent: str | None, datasets: list[str]) -> str:
    """A card body (the report card, when there is one) with lineage in its metadata."""
    body = re.sub(r"\A---\n.*?\n---\n\n?", "", body or f"# {repo_id}\n", flags=re.S)  # replace earlier metadata
    return card_front_matter(parent, datasets) + body


def dataset_card(what: str, repo_id: str, files: dict[str, Path], run: Path, license_id: str,
                 model_repo: str) -> str:
    """README.md with the metadata the Hub's viewer and `load_dataset` read: splits, license."""
    import pyarrow.parquet as pq

    splits: dict[str, list[str]] = {}
    for name in files:
        split = Path(name).stem if what == "prefs" else "train"  # prefs: data/train.parquet, data/test.parquet
        splits.setdefault(split, []).append(name)
    configs = "".join(f"  - split: {split}\n    path: [{', '.join(paths)}]\n"
                      for split, paths in sorted(splits.items()))
    shards = {name: pq.ParquetFile(path) for name, path in files.items()}  # reads only the footers
    columns = ", ".join(next(iter(shards.values())).schema_arrow.names)
    counts = ", ".join(f"{split}: {sum(shards[n].metadata.num_rows for n in names):,} rows"
                       for split, names in sorted(splits.items()))
    model = f"[{model_repo}](https://huggingface.co/{model_repo})"
    if what == "data":
        about = (f"Cleaned, deduplicated text documents: the pretraining data that the `data` stage of the hfstack "
                 f"run `{run.name}` made for {model}.")
    else:
        about = (f"Preference pairs in TRL's conversational format, from rankings of the policy's sampled answers in "
                 f"the `rank` stage of the hfstack run `{run.name}`; the reward model and RLHF of {model} trained on "
                 "them.")
        if "test" not in splits:
            about += " The held-out test split is not published."
    front_matter = (f"license: {license_id}\ntags: [hfstack]\n"
                    f"configs:\n- config_name: default\n  data_files:\n{configs}")
    return f"---\n{front_matter}---\n\n# {repo_id}\n\n{about}\n\nColumns: {columns}. {counts}.\n"


def plan_push(cfg: PushConfig) -> list[RepoPush]:
    """Every repository this push writes, with its exact files and card; touches no network."""
    run = Path(cfg.run)
    final = final_model(run)
    if final is None:
        raise ConfigError(f"push: no model in '{run}' (looked for {', '.join(FINAL_MODELS)})")
    plans: list[RepoPush] = []
    if cfg.datasets:
        for what in ("data", "prefs"):
            files = files_to_push(run / what, what, include_eval_sets=cfg.include_eval_sets)
            if files:
                repo = f"{cfg.repo_id}-{what}"
                card = dataset_card(what, repo, files, run, cfg.license, cfg.repo_id)
                plans.append(RepoPush(what, repo, "dataset", files, card))
    data_repos = {plan.what: plan.repo_id for plan in plans}
    names = {stage: f"{cfg.repo_id}-{stage}" for stage in ("base", "sft", "rl", "rm")} | {final: cfg.repo_id}
    stages = [final] + ([s for s in ("base", "sft", "rl", "rm") if s != final and (run / s / "config.json").is_file()]
                        if cfg.intermediate else [])
    for stage in stages:
        folder = run / stage
        parent = PARENTS.get(stage)
        parent_repo = names[parent] if parent in stages else None  # link only to what this push uploads
        datasets = [data_repos[d] for d in TRAINED_ON.get(stage, []) if d in data_repos]
        body = None
        if (folder / "README.md").is_file():
            body = (folder / "README.md").read_text()
        elif stage == final and (run / "report" / "report.md").is_file():  # the report card is the final model's
            body = (run / "report" / "report.md").read_text()
        card = model_card(body, names[stage], parent_repo, datasets)
        files = files_to_push(folder, "model", card=card, include_eval_sets=cfg.include_eval_sets,
                              image_dirs=(run / "report",))
        plans.append(RepoPush(stage, names[stage], "model", files, card))
    return plans


def print_plan(plans: list[RepoPush]) -> None:
    print("[push] dry run: nothing is uploaded")
    for plan in plans:
        sizes = plan.sizes()
        total = sum(sizes.values())
        print(f"[push] {plan.repo_id} ({plan.repo_type}, {plan.what}): {len(sizes)} files, {total:,} bytes")
        for name, size in sorted(sizes.items()):
            print(f"  {size:>14,}  {name}" + ("  (generated)" if name == "README.md" else ""))


def push(cfg: PushConfig) -> dict[str, str]:
    """Returns {what: repo url}, or {what: repo id} for a dry run."""
    plans = plan_push(cfg)
    if cfg.dry_run:
        print_plan(plans)
        return {plan.what: plan.repo_id for plan in plans}
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    try:
        api.whoami()
    except Exception as e:
        raise ConfigError(f"push: cannot use the Hub "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "log in with `hf auth login` or set HF_TOKEN") from None
    run_name = Path(cfg.run).name
    pushed = {}
    for plan in plans:
        api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=cfg.private, exist_ok=True)
        operations = [CommitOperationAdd("README.md", plan.card.encode())]
        operations += [CommitOperationAdd(name, str(path)) for name, path in plan.files.items()]
        api.create_commit(plan.repo_id, operations, repo_type=plan.repo_type,
                          commit_message=f"hfstack: {plan.what} from run {run_name}")
        kind = "datasets/" if plan.repo_type == "dataset" else ""
        pushed[plan.what] = f"{api.endpoint}/{kind}{plan.repo_id}"
    for what, url in pushed.items():
        print(f"[push] {what:>5} → {url}")
    return pushed


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = PushConfig
run = push
