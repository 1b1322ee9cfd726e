"""`DataConfig`: every setting of the data stage, the same object from YAML, CLI flags and Python.

    hfstack data --config recipes/tiny/data.yaml [--field value ...]
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Literal

from hfstack.core.config import ConfigError, bounded, check_fields
from hfstack.dataprep.sources import check_parquet_inputs

# The default order: the read-only Gopher filters first, cheap and selective before expensive (Gopher
# quality drops most documents at ~5 ms each; repetition costs ~18 ms), then C4, which also removes
# lines and so must come where it did in FineWeb's order (before FineWeb's own filter).
QUALITY_FILTERS = ("gopher_quality", "gopher_repetition", "c4", "fineweb")
EXECUTORS = ("local", "slurm", "ray")


def quality_filter_classes() -> dict:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {"gopher_repetition": GopherRepetitionFilter, "gopher_quality": GopherQualityFilter,
            "c4": C4QualityFilter, "fineweb": FineWebQualityFilter}


def _default_quality_filters() -> dict:
    return {name: {} for name in QUALITY_FILTERS}


@dataclass
class DataConfig:
    """Web data pipeline: read → URL filter → HTTP status/type → same page → language gate → extract → language →
    quality → dedup → parquet.

    Every step can be switched off. `quality_filters` maps a filter name to its datatrove keyword
    arguments; a filter set to false (or left out) is off, `{}` runs it with datatrove's defaults.
    """

    # --- inputs
    input: list[str] = field(default_factory=list)  # paths, globs, directories, s3:// or https:// URLs
    hub_dataset: str | None = None  # a Hub dataset read in streaming mode, e.g. HuggingFaceFW/fineweb
    hub_split: str = "train"  # the split of hub_dataset read
    hub_subset: str | None = None  # the subset (config name) of hub_dataset, e.g. sample-10BT
    text_column: str = "text"  # for jsonl, parquet and Hub inputs
    # documents per task and input kind, for quick trials
    limit: int = bounded(-1, ge=1, unset=-1, why="-1 reads everything")  # documents read per task and input kind
    # --- output
    output_dir: str = "runs/data"  # the parquet shards, stats.json, logs/ and work files go here
    overwrite: bool = False  # start afresh in an output_dir a different run made (removes only hfstack's files)
    write_excluded: bool = False  # write dropped documents per step under output_dir/excluded/
    # --- execution
    executor: Literal["local", "slurm", "ray"] = "local"  # datatrove executor: local processes, Slurm jobs or Ray
    tasks: int = bounded(1, ge=1)  # datatrove tasks: the input is split among them, one parquet shard each
    workers: int = bounded(-1, ge=1, unset=-1, why="-1: one per task")  # local only: parallel processes
    executor_options: dict = field(default_factory=dict)  # passed to the Slurm/Ray executor (partition, time, ...)
    progress: bool = True  # progress bars
    # --- steps
    url_filter: bool = True  # drop URLs on datatrove's bundled blocklists and the block_* lists
    block_domains: list[str] = field(default_factory=list)  # more domains the URL filter drops
    block_urls: list[str] = field(default_factory=list)  # more exact URLs the URL filter drops
    block_words: list[str] = field(default_factory=list)  # a URL containing one of these words is dropped
    http_filter: bool = True  # WARC input: keep only complete HTTP 200 HTML responses
    max_page_bytes: int = bounded(5_000_000, ge=1)  # WARC input: a larger response body is dropped (too_large)
    same_page_filter: bool = True  # drop a page whose HTML this task has already seen, before extracting it
    extractor: Literal["trafilatura", "resiliparse", "none"] = "trafilatura"  # HTML to text; none keeps the HTML
    extract_timeout: float = bounded(10.0, gt=0)  # seconds per page
    extract_sandbox: bool = False  # extract in a subprocess (survives extractor crashes; ~25% slower)
    language_filter: bool = True  # identify each document's language; drop those not in languages
    languages: list[str] = field(default_factory=lambda: ["en"])  # empty: keep all, still label
    language_threshold: float = bounded(0.65, ge=0, le=1)  # a lower language-ID score drops the document
    language_backend: Literal["py3langid", "ft176", "glotlid"] = "py3langid"  # fastText ones download a model
    # before trafilatura, drop pages whose quick (resiliparse) text py3langid is this sure is in another
    # language; saves the extractor's ~0.12 s on each. Only with py3langid, `languages` set and trafilatura
    language_gate: bool = True  # the quick language check before trafilatura
    language_gate_threshold: float = bounded(0.9, ge=0, le=1)  # the gate drops a page only at this score or more
    quality: bool = True  # master switch for all quality filters below
    quality_filters: dict = field(default_factory=_default_quality_filters)  # name → datatrove options; false: off
    exact_dedup: bool = True  # drop documents whose text is exactly another's
    minhash_dedup: bool = True  # drop near-duplicate documents (MinHash; its options in minhash)
    minhash: dict = field(default_factory=dict)  # n_grams, num_buckets, hashes_per_bucket, seed

    def __post_init__(self):
        check_fields(self, "data")
        if not self.input and not self.hub_dataset:
            raise ConfigError("data: set 'input' (paths, globs or URLs) or 'hub_dataset'")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"data: 'executor' must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if isinstance(self.input, str):
            self.input = [self.input]

        check_parquet_inputs(self.input)  # here, so a torn file stops the stage before it writes anything
        self._check_quality_filters()
        from datatrove.pipeline.dedup.minhash import MinhashConfig

        for key in self.minhash:
            if key not in ("n_grams", "num_buckets", "hashes_per_bucket", "seed"):
                raise ConfigError(f"data: unknown key 'minhash.{key}'; valid: n_grams, num_buckets, "
                                  f"hashes_per_bucket, seed")
        MinhashConfig(**self.minhash)

    def _check_quality_filters(self):
        classes = quality_filter_classes()
        for name, options in self.quality_filters.items():
            if name not in classes:
                raise ConfigError(f"data: unknown quality filter '{name}'; valid: {', '.join(QUALITY_FILTERS)}")
            if options in (False, None):
                continue
            if options is True:
                self.quality_filters[name] = options = {}
            if not isinstance(options, dict):
                raise ConfigError(f"data: quality_filters.{name} must be a mapping of options, true or false")
            params = set(inspect.signature(classes[name].__init__).parameters) - {"self", "exclusion_writer",
                                                                                  "language"}
            for key in options:
                if key not in params:
                    raise ConfigError(f"data: unknown option 'quality_filters.{name}.{key}'; "
                                      f"valid: {', '.join(sorted(params))}")

    def enabled_quality_filters(self) -> dict[str, dict]:
        if not self.quality:
            return {}
        return {k: v for k, v in self.quality_filters.items() if v not in (False, None)}
