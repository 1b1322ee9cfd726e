"""The data stage: turn a raw crawl (or text files, or a Hub dataset) into clean, deduplicated parquet.

    hfstack data --input crawl/*.warc.gz --output_dir runs/data [--config recipes/tiny/data.yaml]

Everything is a datatrove step run by a datatrove executor, in up to eight stages:
  filter:          read → URL filter → HTTP status/type → same page → language gate → extract →
                   language → quality → write
  exact dedup:     content-hash signatures → find duplicates → drop them
  MinHash dedup:   signatures → buckets → clusters → drop near-duplicates, then write the parquet shards
Each stage logs under DIR/logs/<stage>/ with datatrove's completion markers, so rerunning the same
command skips finished tasks; other inputs or settings into the same DIR are refused (--overwrite
starts afresh: hfstack.core.rundir). DIR/stats.json holds the funnel (docs and bytes in/out per step).
`executor: ray` runs the stages in order on a Ray cluster; `executor: slurm` submits them as chained job
arrays and returns (rerun once they finish to write the funnel). Tested on real clusters by
tests/stages/test_data_engines.py.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from datatrove.pipeline.readers import JsonlReader

from hfstack.core.config import ConfigError
from hfstack.core.errors import StageFailed
from hfstack.core.rundir import claim_output, finish_output
from hfstack.core.textfiles import check_hub_dataset
from hfstack.dataprep.config import DataConfig, quality_filter_classes
from hfstack.dataprep.extractors import ResiliparseExtractor, TrafilaturaExtractor
from hfstack.dataprep.filters import (
    HttpResponseFilter,
    LanguageGate,
    OfflineURLFilter,
    OfflineWordTokenizer,
    Py3LangidFilter,
    SamePageFilter,
)
from hfstack.dataprep.funnel import Metered, build_funnel, format_funnel, write_funnel
from hfstack.dataprep.readers import WarcResponseReader, hub_reader, text_reader
from hfstack.dataprep.sources import resolve_inputs

OUTPUT_COLUMNS = ("text", "id", "url", "language", "language_score", "date")


def document_text(doc) -> str:  # datatrove's exact dedup reads the return annotation to pick its hash
    return doc.text


def output_row(writer, doc) -> dict:
    """The published schema: flat, stable columns that `datasets.load_dataset("parquet")` reads."""
    meta = doc.metadata
    score = meta.get("language_score")
    return {"text": doc.text, "id": str(doc.id), "url": str(meta.get("url") or ""),
            "language": str(meta.get("language") or ""), "language_score": float(score) if score is not None else None,
            "date": str(meta.get("date") or "")}


class IntermediateReader(JsonlReader):
    """Reads a previous stage's output; an empty output (every document dropped) reads as no documents."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if self.data_folder.list_files():
            yield from super().run(data, rank, world_size)


@dataclass
class Stage:
    name: str
    pipeline: list
    tasks: int
    funnel_labels: list[str]  # one label per Metered step, in pipeline order
    funnel_offset: int  # index of the first Metered step in the pipeline


class DataPipeline:
    """Builds the stages for a DataConfig. `stages()` is pure construction, so tests can inspect it."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir).absolute()
        self.work = self.out / "work"
        self.word_tokenizer = OfflineWordTokenizer("en")

    def _excluded(self, step: str):
        if not self.cfg.write_excluded:
            return None
        from datatrove.pipeline.writers import JsonlWriter

        return JsonlWriter(str(self.out / "excluded" / step))

    def _final_writer(self):
        from datatrove.pipeline.writers import ParquetWriter

        return ParquetWriter(str(self.out), output_filename="${rank}.parquet", adapter=output_row)

    def _intermediate(self, name: str):
        from datatrove.pipeline.writers import JsonlWriter

        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)  # an empty result must read as empty, not as missing
        folder = str(folder)
        return JsonlWriter(folder), lambda: IntermediateReader(folder, doc_progress=self.cfg.progress)

    def readers(self) -> list[tuple[str, object]]:
        cfg = self.cfg
        files = resolve_inputs(cfg.input) if cfg.input else {}
        readers = []
        if files.get("warc"):
            readers.append(("read warc", WarcResponseReader(files["warc"], cfg.max_page_bytes, cfg.limit,
                                                            progress=cfg.progress)))
        for kind in ("jsonl", "parquet"):
            if files.get(kind):
                readers.append((f"read {kind}", text_reader(kind, files[kind], cfg.text_column, cfg.limit,
                                                            cfg.progress, str(self.work))))
        if cfg.hub_dataset:
            readers.append(("read hub", hub_reader(cfg.hub_dataset, cfg.hub_split, cfg.hub_subset,
                                                   cfg.text_column, cfg.limit, cfg.progress)))
        return readers

    def filter_steps(self, has_html: bool) -> list[tuple[str, object]]:
        from datatrove.pipeline.filters import LanguageFilter

        cfg, steps = self.cfg, []
        if cfg.url_filter:
            steps.append(("url filter", OfflineURLFilter(extra_domains=cfg.block_domains or None,
                                                         extra_urls=cfg.block_urls or None,
                                                         banned_words=cfg.block_words or None,
                                                         exclusion_writer=self._excluded("url"))))
        if has_html and cfg.http_filter:
            steps.append(("http status/type", HttpResponseFilter(exclusion_writer=self._excluded("http"))))
        if has_html and cfg.same_page_filter:
            steps.append(("same page (html)", SamePageFilter(exclusion_writer=self._excluded("same_page"))))
        if (has_html and cfg.extractor == "trafilatura" and cfg.language_gate and cfg.language_filter
                and cfg.languages and cfg.language_backend == "py3langid"):
            steps.append(("language gate (html)", LanguageGate(cfg.languages, cfg.language_gate_threshold,
                                                               exclusion_writer=self._excluded("language_gate"))))
        if has_html and cfg.extractor == "trafilatura":
            steps.append(("extract (trafilatura)", TrafilaturaExtractor(cfg.extract_timeout, cfg.extract_sandbox)))
        elif has_html and cfg.extractor == "resiliparse":
            steps.append(("extract (resiliparse)", ResiliparseExtractor(cfg.extract_timeout,
                                                                             sandbox=cfg.extract_sandbox)))
        if cfg.language_filter:
            if cfg.language_backend == "py3langid":
                lang = Py3LangidFilter(cfg.languages, cfg.language_threshold,
                                       exclusion_writer=self._excluded("language"))
            else:  # datatrove's fastText identifiers: the model is downloaded on first use
                lang = LanguageFilter(cfg.languages or None, cfg.language_threshold, backend=cfg.language_backend,
                                      exclusion_writer=self._excluded("language"))
            steps.append(("language", lang))
        classes = quality_filter_classes()
        for name, options in cfg.enabled_quality_filters().items():
            step = classes[name](**options, language=self.word_tokenizer, exclusion_writer=self._excluded(name))
            steps.append((f"quality: {name}", step))
        return steps

    def stages(self) -> list[Stage]:
        from datatrove.pipeline.dedup import (
            ExactDedupConfig,
            ExactDedupFilter,
            ExactDedupSignature,
            ExactFindDedups,
            MinhashConfig,
            MinhashDedupBuckets,
            MinhashDedupCluster,
            MinhashDedupFilter,
            MinhashDedupSignature,
        )

        cfg, tasks = self.cfg, self.cfg.tasks
        readers = self.readers()
        has_html = any(label == "read warc" for label, _ in readers)
        steps = readers + self.filter_steps(has_html)
        dedups = [name for name, on in (("exact", cfg.exact_dedup), ("minhash", cfg.minhash_dedup)) if on]
        write_final = [("write parquet", self._final_writer())]
        stages = []

        def add(name: str, head: list = (), metered: list = (), tail: list = (), n_tasks: int = tasks):
            pipeline = list(head) + [Metered(step) for _, step in metered] + list(tail)
            stages.append(Stage(name, pipeline, n_tasks, [label for label, _ in metered], len(head)))

        if not dedups:
            add("filter", metered=steps + write_final)
            return stages
        writer, source = self._intermediate("filtered")
        add("filter", metered=steps, tail=[writer])
        if "exact" in dedups:
            exact = ExactDedupConfig(content_getter=document_text)
            sigs, dups = str(self.work / "exact" / "sigs"), str(self.work / "exact" / "dups")
            add("exact-signatures", head=[source(), ExactDedupSignature(sigs, config=exact)])
            add("exact-find", head=[ExactFindDedups(sigs, dups, config=exact)], n_tasks=1)
            drop = [("exact dedup", ExactDedupFilter(dups, config=exact, exclusion_writer=self._excluded("exact")))]
            if "minhash" in dedups:
                writer, next_source = self._intermediate("exact-kept")
                add("exact-filter", head=[source()], metered=drop, tail=[writer])
                source = next_source
            else:
                add("exact-filter", head=[source()], metered=drop + write_final)
        if "minhash" in dedups:
            mh = MinhashConfig(**cfg.minhash)
            sigs, buckets, remove = (str(self.work / "minhash" / d) for d in ("sigs", "buckets", "remove"))
            add("minhash-signatures",
                head=[source(), MinhashDedupSignature(sigs, config=mh, language=self.word_tokenizer)])
            add("minhash-buckets", head=[MinhashDedupBuckets(sigs, buckets, config=mh)], n_tasks=mh.num_buckets)
            add("minhash-cluster", head=[MinhashDedupCluster(buckets, remove, config=mh)], n_tasks=1)
            drop = [("minhash dedup", MinhashDedupFilter(remove, exclusion_writer=self._excluded("minhash")))]
            add("minhash-filter", head=[source()], metered=drop + write_final)
        return stages


# set by hfstack for every stage; executor_options cannot override them
_RESERVED_OPTIONS = ("pipeline", "tasks", "logging_dir", "depends", "skip_completed", "workers", "job_name")


def _check_options(cls, options: dict, executor: str) -> None:
    import inspect

    reserved = sorted(set(options) & set(_RESERVED_OPTIONS))
    if reserved:
        raise ConfigError(f"data: executor_options {', '.join(reserved)} are set by hfstack (use tasks/workers)")
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"data: executor_options {', '.join(unknown)} not accepted by the {executor} executor "
                          f"(datatrove {cls.__name__}: {', '.join(sorted(accepted - set(_RESERVED_OPTIONS)))})")


def make_executor(cfg: DataConfig, stage: Stage, logging_dir: Path, depends=None):
    """The configured datatrove executor for one stage. Slurm/Ray options come from cfg.executor_options.

    Slurm: `partition` and `time` are required; the jobs run this Python's virtualenv unless
    `venv_path`, `condaenv` or `env_command` says otherwise. Ray: `address` (for `ray.init`, e.g. "auto")
    is hfstack's; the rest (cpus_per_task, mem_per_cpu_gb, ...) goes to datatrove's RayPipelineExecutor.
    """

    options = dict(cfg.executor_options)
    common = dict(pipeline=stage.pipeline, tasks=stage.tasks, logging_dir=str(logging_dir), depends=depends,
                  skip_completed=True)
    if cfg.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        _check_options(LocalPipelineExecutor, options, "local")
        workers = stage.tasks if cfg.workers < 1 else min(cfg.workers, stage.tasks)
        return LocalPipelineExecutor(**common, workers=workers, **options)
    if cfg.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        _check_options(SlurmPipelineExecutor, options, "slurm")
        missing = [k for k in ("partition", "time") if k not in options]
        if missing:
            raise ConfigError(f"data: executor 'slurm' needs executor_options {', '.join(missing)}")
        if sys.prefix != sys.base_prefix and not {"venv_path", "condaenv", "env_command"} & set(options):
            options["venv_path"] = str(Path(sys.prefix) / "bin" / "activate")  # not the node's default python
        return SlurmPipelineExecutor(**common, job_name=f"hfstack-{stage.name}",
                                     workers=cfg.workers, **options)
    from datatrove.executor import RayPipelineExecutor

    options.pop("address", None)
    _check_options(RayPipelineExecutor, options, "ray")
    return RayPipelineExecutor(**common, workers=cfg.workers, **options)


def build_executors(cfg: DataConfig, stages: list[Stage]) -> list:
    """One executor per stage. Slurm's depend on the previous one (sbatch --dependency schedules the chain);
    local and Ray stages are run in order by run_data, which stops at the first stage with failed tasks."""
    executors, previous = [], None
    for stage in stages:
        chained = previous if cfg.executor == "slurm" else None
        previous = make_executor(cfg, stage, Path(cfg.output_dir).absolute() / "logs" / stage.name, chained)
        executors.append(previous)
    return executors


def connect_ray(address: str | None) -> None:
    """Join the Ray cluster at `address` ("auto": the one `ray start` runs here; None: RAY_ADDRESS, else a
    cluster started for this process). A driver that already called ray.init keeps its cluster."""
    try:
        import ray
    except ImportError:
        raise ConfigError("data: executor 'ray' needs Ray: pip install 'hfstack[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address)


def submit_slurm(executors: list, stages: list[Stage], out: Path) -> dict | None:
    """Submit the chain of Slurm jobs and return their ids, or None when every stage had already finished
    (a rerun of the same command after the jobs end: run_data then writes the funnel)."""
    executors[-1].run()  # launches every stage's job array, each depending on the previous stage's
    jobs = {stage.name: executor.job_id for stage, executor in zip(stages, executors) if executor.job_id != -1}
    if not jobs:
        return None
    print(f"Submitted {len(jobs)} Slurm stage(s) (jobs {', '.join(map(str, jobs.values()))}); logs under "
          f"{out / 'logs'}. Rerun the same command once they finish to write stats.json.", flush=True)
    return {"slurm_jobs": jobs}


def run_data(cfg: DataConfig) -> dict:
    """Run the data stage and return the funnel (also in DIR/stats.json)."""

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if cfg.hub_dataset:
        check_hub_dataset(cfg.hub_dataset)
    if cfg.input:
        resolve_inputs(cfg.input)  # a bad input is reported before anything is written
    # the same fingerprint continues (datatrove skips its completed tasks); other inputs or settings
    # never meet the old completion logs: refused, or with --overwrite removed first
    out = claim_output("data", cfg).absolute()
    stages = DataPipeline(cfg).stages()
    executors = build_executors(cfg, stages)
    if cfg.executor == "slurm" and (submitted := submit_slurm(executors, stages, out)) is not None:
        return submitted
    if cfg.executor == "ray":
        connect_ray(cfg.executor_options.get("address"))
    if cfg.executor != "slurm":
        for stage, executor in zip(stages, executors):
            print(f"[data] stage {stage.name} ({stage.tasks} task(s))", flush=True)
            executor.run()
            failed = executor.get_incomplete_ranks(skip_completed=True) if cfg.executor == "ray" else []
            if failed:  # Ray logs failed tasks and returns; the next stage must not read a partial output
                raise StageFailed(f"data: stage {stage.name}: {len(failed)}/{stage.tasks} task(s) failed "
                                   f"(ranks {failed[:10]}); see {out / 'logs' / stage.name / 'logs'}")
    rows = build_funnel([(out / "logs" / s.name, s.funnel_labels, s.funnel_offset) for s in stages])
    shards = sorted(str(p.name) for p in out.glob("*.parquet"))
    write_funnel(rows, out / "stats.json", {"shards": shards, "columns": list(OUTPUT_COLUMNS)})
    print(format_funnel(rows), flush=True)
    finish_output(out, "data", documents=rows[-1]["docs_out"] if rows else 0)
    return {"steps": rows, "shards": shards}


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = DataConfig
run = run_data
