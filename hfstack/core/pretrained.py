"""Where a model comes from: a local folder, or a Hub id (`org/name`, with a revision) that is
downloaded into the Hugging Face cache once and then read from there like any folder.

    folder = resolve_model("HuggingFaceTB/SmolLM2-135M", revision="main", stage="sft")
    folder = resolve_model("runs/tiny/base", stage="sft")      # a local folder: checked, returned

Every stage that takes a model resolves it first, so the rest of the stage (the search index beside
the model, its held-out sets, the folder copied into the next stage) sees one kind of thing: a folder.
Only what loading needs is downloaded (config, weights, tokenizer and template files), never a repo's
training logs or checkpoints. Errors are one line: the reference, and why neither a folder nor the Hub
gave a model.

Tests: python -m pytest -q tests/unit/test_pretrained.py
"""

from __future__ import annotations

import re
from pathlib import Path

from hfstack.core.errors import ConfigError
from hfstack.core.fields import WEIGHT_FILES, check_model_folder

# org/name or a bare name, as the Hub spells repo ids (letters, digits, - _ .; no leading or double dots)
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")

# what loading a model and its tokenizer reads, at the repo's top level only (never a checkpoint-500/ or a
# consolidated.safetensors twin of the shards); safetensors first, pickled weights only when there is nothing else
MODEL_FILES = ["*.json", "model*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "eval_sets.jsonl"]
PICKLED_WEIGHTS = ["pytorch_model*.bin"]
SUBFOLDERS = ["*/*"]


def looks_like_hub_id(ref: str) -> bool:
    """True for `org/name` or `name` that is not an existing path and not spelled like one."""
    text = str(ref)
    if not text or Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or ".." in text:
        return False
    return bool(HUB_ID.match(text)) and not text.endswith((".json", ".jsonl", ".parquet", ".yaml", ".safetensors",
                                                           ".gz"))


def is_local(ref: str) -> bool:
    return Path(str(ref)).expanduser().exists() or not looks_like_hub_id(ref)


def resolve_model(ref: str, revision: str | None = None, stage: str = "", what: str = "model") -> str:
    """A local folder holding the model `ref` names: the folder itself, or the Hub snapshot it names
    (downloaded once, then served from the cache, also offline). One-line ConfigError otherwise."""
    prefix = f"{stage}: " if stage else ""
    if is_local(ref):
        if revision not in (None, "", "main"):
            raise ConfigError(f"{prefix}{what} '{ref}' is a local folder; 'model_revision' ({revision}) applies only "
                              "to a Hub id")
        check_model_folder(ref, stage, what)
        return str(Path(ref).expanduser())
    folder = download(ref, revision, stage, what)
    try:
        check_model_folder(folder, stage, what)
    except ConfigError:  # name the repo, not the cache folder it landed in
        raise ConfigError(f"{prefix}{what} '{ref}' (revision {revision or 'main'}) on the Hub is not a transformers "
                          "model: no config.json with a model_type and safetensors weights at its top level") from None
    return folder


def download(repo_id: str, revision: str | None = None, stage: str = "", what: str = "model") -> str:
    """The Hub repo's model files in the local cache (downloaded when missing); its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    prefix = f"{stage}: " if stage else ""
    disable_progress_bars()
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES, ignore_patterns=SUBFOLDERS)
        if not any((Path(folder) / name).is_file() for name in WEIGHT_FILES):
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES + PICKLED_WEIGHTS,
                                       ignore_patterns=SUBFOLDERS)
    except Exception as e:  # the client's many error classes all say the same: no model from the Hub
        raise ConfigError(f"{prefix}no {what} at '{repo_id}': not a local folder, and the Hub gave none "
                          f"({hub_reason(e, revision)})") from None
    return folder


def hub_reason(error: Exception, revision: str | None) -> str:
    """What went wrong reaching the Hub, in a few words."""
    name = type(error).__name__
    if name == "RepositoryNotFoundError":
        return "no such repository, or it is private: log in with `hf auth login`"
    if name == "RevisionNotFoundError":
        return f"no revision '{revision}'"
    if name == "GatedRepoError":
        return "the repository is gated: accept its terms on the Hub and log in with `hf auth login`"
    if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return "the Hub could not be reached (or HF_HUB_OFFLINE is set) and it is not in the local cache"
    detail = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
    return f"{name}: {detail[:160]}"


def beside_model(ref: str, name: str) -> Path:
    """Where a result about a model goes by default: next to a local model, or for a Hub id (whose
    cache folder is no place for results) in the current folder as `org--name.<name>`."""
    if is_local(ref):
        return Path(ref).expanduser() / name
    return Path(f"{ref.replace('/', '--')}.{name}")


# config.json too: a tokenizer_config.json without a tokenizer_class (gpt2's) is read by the model_type
TOKENIZER_FILES = ["tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.jinja",
                   "config.json"]


def resolve_tokenizer(ref: str, revision: str | None = None, stage: str = "") -> str:
    """A local folder holding a fast tokenizer (tokenizer.json): the folder `ref`, or the tokenizer
    files of the Hub repo it names (a tokenizer-only repo is fine: no weights are fetched)."""
    from huggingface_hub import snapshot_download

    prefix = f"{stage}: " if stage else ""
    folder = Path(ref).expanduser()
    if not is_local(ref):
        try:
            folder = Path(snapshot_download(ref, revision=revision, allow_patterns=TOKENIZER_FILES,
                                            ignore_patterns=SUBFOLDERS))
        except Exception as e:
            raise ConfigError(f"{prefix}no tokenizer at '{ref}': not a local folder, and the Hub gave none "
                              f"({hub_reason(e, revision)})") from None
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{prefix}no tokenizer at '{ref}' (expected tokenizer.json, a fast tokenizer; "
                          "`hfstack tokenizer` writes one)")
    return str(folder)
