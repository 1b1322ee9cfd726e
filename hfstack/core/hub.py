"""Pushing to the Hugging Face Hub through an allowlist, never a folder: what `hfstack push` and a
training stage's `push_to_hub` upload. A run's folders also hold secrets (`.env`), logs (nohup.out,
wandb/, runs/), checkpoints, pickles (training_args.bin) and held-out evaluation sets; `files_to_push`
names every file that goes up, and each repository gets exactly those, with a generated card
(hfstack.core.cards: ModelCard metadata, lineage and evaluation results), in one commit.

    url = push_model_folder(Path("runs/tiny/sft"), "USER/NAME-sft", base_model="USER/NAME-base")

Repositories are created private unless asked otherwise (an existing one keeps its own setting). The
token comes from `HF_TOKEN` or `hf auth login`; a dry run lists each file and its size and needs neither.
Tests: python -m pytest -q tests/stages/test_push.py
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hfstack.core.cards import LANGUAGE, MODEL_LICENSE, model_card
from hfstack.core.config import ConfigError
from hfstack.core.rundir import TRAINER_STAGES

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
class RepoPush:
    """One repository's commit: its files (path in the repo → local file) and the generated README.md."""

    what: str  # what it holds, for messages: a run folder's name ("sft", "data", "prefs") or "model"
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
    kind "data": the folder's top-level parquet shards. kind "preferences": data/*.parquet, the
    preference pairs. Held-out sets only with `include_eval_sets`. Reads file names only; writes nothing."""
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
    if kind == "preferences":
        shards = sorted((folder / "data").glob("*.parquet")) if (folder / "data").is_dir() else []
        return {f"data/{p.name}": p for p in shards if p.is_file() and (include_eval_sets or p.name != HELD_OUT_SPLIT)}
    raise ValueError(f"files_to_push: unknown kind '{kind}' (model, data or preferences)")


def plan_model_repo(folder: Path, repo_id: str, *, what: str = "model", base_model: str | None = None,
                    datasets: Sequence[str] = (), card: str | None = None, include_eval_sets: bool = False,
                    image_dirs: tuple[Path, ...] = (), stage: str | None = None, license: str | None = MODEL_LICENSE,
                    language: str | None = LANGUAGE, reports: Sequence[Path] | None = None) -> RepoPush:
    """A model repository's commit: the allowlisted files of `folder` and its model card (hfstack.core.cards:
    lineage, pipeline, license, tags, evaluation results). The card's body is `card`, else the folder's
    README.md (the report card, for the final model), else a generated one."""
    folder = Path(folder)
    if card is None and (folder / "README.md").is_file():
        card = (folder / "README.md").read_text()
    text = model_card(folder, card, repo_id, base_model=base_model, datasets=datasets, license=license,
                      language=language, stage=stage, reports=reports)
    files = files_to_push(folder, "model", card=text, include_eval_sets=include_eval_sets, image_dirs=image_dirs)
    return RepoPush(what, repo_id, "model", files, text)


def print_plan(plans: list[RepoPush], who: str = "push") -> None:
    print(f"[{who}] dry run: nothing is uploaded")
    for plan in plans:
        sizes = plan.sizes()
        total = sum(sizes.values())
        print(f"[{who}] {plan.repo_id} ({plan.repo_type}, {plan.what}): {len(sizes)} files, {total:,} bytes")
        for name, size in sorted(sizes.items()):
            print(f"  {size:>14,}  {name}" + ("  (generated)" if name == "README.md" else ""))


def hub_api(who: str = "push"):
    """An HfApi that is logged in, checked before anything is created; else one line naming `hf auth login`."""
    from huggingface_hub import HfApi  # looked up on each call: tests put a recording client in its place

    api = HfApi()
    try:
        api.whoami()
    except Exception as e:
        raise ConfigError(f"{who}: cannot use the Hub "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "log in with `hf auth login` or set HF_TOKEN") from None
    return api


def repo_url(endpoint: str, plan: RepoPush) -> str:
    return f"{endpoint}/{'datasets/' if plan.repo_type == 'dataset' else ''}{plan.repo_id}"


def commit_repo(api, plan: RepoPush, message: str, private: bool = True) -> str:
    """Create the repository if needed (private by default) and upload exactly the plan's files and card in
    one commit. Returns the repository's URL."""
    from huggingface_hub import CommitOperationAdd

    api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=private, exist_ok=True)
    operations = [CommitOperationAdd("README.md", plan.card.encode())]
    operations += [CommitOperationAdd(name, str(path)) for name, path in plan.files.items()]
    api.create_commit(plan.repo_id, operations, repo_type=plan.repo_type, commit_message=message)
    return repo_url(api.endpoint, plan)


def push_model_folder(folder: Path, repo_id: str, *, private: bool = True, base_model: str | None = None,
                      datasets: Sequence[str] = (), card: str | None = None, include_eval_sets: bool = False,
                      image_dirs: tuple[Path, ...] = (), dry_run: bool = False, who: str = "push",
                      license: str | None = MODEL_LICENSE) -> str:
    """Push a model folder (a stage's output_dir) to `repo_id` through the allowlist: its weights, config,
    tokenizer files and the PNGs its card shows, with a model card naming `base_model` and `datasets` (Hub
    repo ids), `license`, and the folder's evaluation results. A training stage calls this at its end. `who`
    names the caller in messages and errors (a training stage's name also tags the card).
    Returns the repository's URL; a dry run prints the files and sizes instead and returns where they would go."""
    plan = plan_model_repo(folder, repo_id, what=Path(folder).name, base_model=base_model, datasets=datasets,
                           card=card, include_eval_sets=include_eval_sets, image_dirs=image_dirs,
                           stage=who if who in TRAINER_STAGES else None, license=license)
    if dry_run:
        from huggingface_hub import constants

        print_plan([plan], who)
        return repo_url(constants.ENDPOINT, plan)
    url = commit_repo(hub_api(who), plan, f"hfstack: {who} from {Path(folder).name}", private=private)
    print(f"[{who}] {repo_id} → {url}")
    return url
