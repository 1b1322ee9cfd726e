"""The data stage end to end: the shared crawl sample with its labels, the synthetic crawl, text inputs,
resume, and executor construction."""

import json
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_dataset

from hfstack.core.rundir import is_done
from hfstack.dataprep.config import DataConfig
from hfstack.dataprep.synthetic import write_crawl
from hfstack.stages.data import DataPipeline, build_executors, run_data


def kept_urls(out: Path) -> list[str]:
    rows = load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
    return rows["url"]


@pytest.mark.slow
def test_sample_drops_every_url_html_and_status_record(sample_run):
    out, _, labels = sample_run
    kinds = Counter(labels[url]["expect"] for url in kept_urls(out))
    for reason in ("drop:url", "drop:not-html", "drop:not-200"):
        assert kinds[reason] == 0, reason


@pytest.mark.slow
def test_sample_language_drops(sample_run):
    """No French/German/Japanese/Chinese page is kept, except the chapters that the sample's README
    says are mostly English (untranslated text with a few localised labels): those are English text,
    and the identifier is right to call them so. We allow at most 5% of them and check they are English."""
    out, _, labels = sample_run
    rows = load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
    slipped = [(u, t) for u, t in zip(rows["url"], rows["text"]) if labels[u]["expect"] == "drop:language"]
    total = sum(1 for label in labels.values() if label["expect"] == "drop:language")
    assert len(slipped) <= 0.05 * total
    for url, text in slipped:
        assert (labels[url]["lang"] in ("fr", "de") and text.isascii()
                or sum(c.isascii() for c in text) > 0.97 * len(text))


@pytest.mark.slow
def test_sample_language_gate_drops_only_foreign_pages(sample_run, crawl_sample):
    """The gate before extraction drops nothing the labels call English, and most of the foreign pages
    (the rest are left to the language step after extraction)."""
    _, funnel, labels = sample_run
    from hfstack.dataprep.filters import HttpResponseFilter, LanguageGate
    from hfstack.dataprep.readers import WarcResponseReader

    pages = list(HttpResponseFilter()(WarcResponseReader([str(crawl_sample)])()))
    passed = {d.metadata["url"] for d in LanguageGate(["en"])(pages)}
    dropped = [d.metadata["url"] for d in pages if d.metadata["url"] not in passed]
    assert all(labels[url]["expect"] == "drop:language" for url in dropped), dropped
    foreign = sum(1 for label in labels.values() if label["expect"] == "drop:language")
    assert len(dropped) >= 0.75 * foreign
    gate_row = next(r for r in funnel["steps"] if r["step"] == "language gate (html)")
    assert 0 < sum(gate_row["dropped"].values()) <= foreign


@pytest.mark.slow
def test_sample_keeps_at_most_one_of_each_duplicate_pair(sample_run):
    out, _, labels = sample_run
    kept = set(kept_urls(out))
    pairs = [(url, label["dup_of"]) for url, label in labels.items() if label["kind"] == "exact-duplicate"]
    assert len(pairs) == 10
    assert all(not (a in kept and b in kept) for a, b in pairs)


@pytest.mark.slow
def test_sample_keeps_at_least_97_percent_of_keep_pages(sample_run):
    """A keep page counts as kept when it, or its exact copy under another URL, survives: which copy of
    an exact duplicate wins is the first seen in the crawl, and the labels sometimes name the later one."""
    out, _, labels = sample_run
    kept = set(kept_urls(out))
    copies = {label["dup_of"]: url for url, label in labels.items() if label["kind"] == "exact-duplicate"}
    keep = [url for url, label in labels.items() if label["expect"] == "keep"]
    survived = [url for url in keep if url in kept or copies.get(url) in kept]
    assert len(survived) >= 0.97 * len(keep), f"{len(survived)}/{len(keep)} keep pages survived"


@pytest.mark.slow
def test_sample_funnel_is_consistent(sample_run):
    out, _, _ = sample_run
    stats = json.loads((out / "stats.json").read_text())
    steps = {s["step"]: s for s in stats["steps"]}
    assert steps["read warc"]["docs_out"] == 390
    assert steps["url filter"]["dropped"] == {"domain": 10}
    assert steps["http status/type"]["dropped"] == {"not_html": 20, "not_200": 10}
    for row in stats["steps"][1:]:
        assert row["docs_in"] - row["docs_out"] == sum(row["dropped"].values()), row
    for before, after in zip(stats["steps"], stats["steps"][1:]):
        assert after["docs_in"] == before["docs_out"]
    assert stats["documents_kept"] == len(kept_urls(out))
    assert is_done(out)


@pytest.mark.slow
def test_sample_quality_filters_report_their_drops(sample_run, tmp_path):
    """Quality filters on, run over the sample's extracted text (parquet input): the funnel says how many
    each filter dropped and why. The filters keep datatrove's defaults; they are not tuned to this file."""
    out, _, _ = sample_run
    funnel = run_data(DataConfig(input=[str(out / "*.parquet")], output_dir=str(tmp_path / "q"), tasks=1,
                                 url_filter=False, language_filter=False, exact_dedup=False, minhash_dedup=False,
                                 progress=False))
    rows = {r["step"]: r for r in funnel["steps"]}
    assert set(rows) >= {"quality: gopher_repetition", "quality: gopher_quality", "quality: c4", "quality: fineweb"}
    total_dropped = sum(sum(r["dropped"].values()) for name, r in rows.items() if name.startswith("quality"))
    assert total_dropped > 0
    assert all(r["docs_in"] - r["docs_out"] == sum(r["dropped"].values())
               for n, r in rows.items() if n != "read parquet")


@pytest.mark.slow
def test_synthetic_crawl_gives_every_step_something_to_drop(tmp_path):
    crawl = write_crawl(tmp_path / "crawl" / "c.warc.gz", pages=60, seed=1)
    assert set(crawl.counts) >= {"page", "foreign", "foreign_note", "spam", "exact_duplicate", "republished",
                                 "not_html", "not_200", "blocked_url"}
    out = tmp_path / "data"
    funnel = run_data(DataConfig(input=[str(tmp_path / "crawl")], output_dir=str(out), progress=False,
                                 quality_filters={"gopher_repetition": {}, "gopher_quality": {}},
                                 minhash={"num_buckets": 4, "hashes_per_bucket": 8}))
    rows = {r["step"]: r for r in funnel["steps"]}
    for step in ("url filter", "http status/type", "same page (html)", "language gate (html)", "language",
                 "quality: gopher_repetition", "exact dedup"):
        assert sum(rows[step]["dropped"].values()) > 0, step
    assert rows["http status/type"]["dropped"]["broken_http_headers"] == 1
    texts = load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
    assert len(texts) > 20 and set(texts["language"]) == {"en"}
    assert texts.column_names == ["text", "id", "url", "language", "language_score", "date"]
    # rerunning the same command skips every finished task and reports the same funnel
    again = run_data(DataConfig(input=[str(tmp_path / "crawl")], output_dir=str(out), progress=False,
                                quality_filters={"gopher_repetition": {}, "gopher_quality": {}},
                                minhash={"num_buckets": 4, "hashes_per_bucket": 8}))
    assert again["steps"] == funnel["steps"]


def test_text_inputs_skip_html_steps(tmp_path):
    data = tmp_path / "docs.jsonl"
    lines = [{"text": "The quick brown fox jumps over the lazy dog near the river bank today.", "id": "1"},
             {"text": "Le renard brun saute par-dessus le chien paresseux près de la rivière.", "id": "2"},
             {"body": "no text column here", "id": "3"}]
    data.write_text("\n".join(json.dumps(line) for line in lines))
    funnel = run_data(DataConfig(input=[str(data)], output_dir=str(tmp_path / "out"), quality=False,
                                 exact_dedup=False, minhash_dedup=False, progress=False))
    assert [r["step"] for r in funnel["steps"]] == ["read jsonl", "url filter", "language", "write parquet"]
    assert funnel["steps"][-1]["docs_out"] == 1


def test_slurm_and_ray_executors_are_constructed(tmp_path):
    from datatrove.executor import RayPipelineExecutor, SlurmPipelineExecutor

    crawl = write_crawl(tmp_path / "c.warc.gz", pages=10).path
    slurm = DataConfig(input=[crawl], output_dir=str(tmp_path / "s"), executor="slurm", tasks=8,
                       executor_options={"partition": "cpu", "time": "01:00:00"})
    stages = DataPipeline(slurm).stages()
    executors = build_executors(slurm, stages)
    assert all(isinstance(e, SlurmPipelineExecutor) for e in executors)
    assert [e.tasks for e in executors] == [s.tasks for s in stages]
    assert executors[0].tasks == 8 and executors[0].partition == "cpu"
    assert all(later.depends is earlier for earlier, later in zip(executors, executors[1:]))
    assert [s.name for s in stages] == ["filter", "exact-signatures", "exact-find", "exact-filter",
                                        "minhash-signatures", "minhash-buckets", "minhash-cluster", "minhash-filter"]
    ray = DataConfig(input=[crawl], output_dir=str(tmp_path / "r"), executor="ray", tasks=4,
                     executor_options={"cpus_per_task": 2})
    ray_executors = build_executors(ray, DataPipeline(ray).stages())
    assert all(isinstance(e, RayPipelineExecutor) for e in ray_executors)
    assert ray_executors[0].cpus_per_task == 2
    from hfstack.core.config import ConfigError

    with pytest.raises(ConfigError, match="partition, time"):
        build_executors(DataConfig(input=[crawl], executor="slurm"), stages[:1])


def test_a_run_that_keeps_nothing_finishes_with_an_empty_funnel(tmp_path):
    data = tmp_path / "fr.jsonl"
    data.write_text(json.dumps({"text": "Le marché du village ouvre chaque samedi matin sur la place de l'église."}))
    funnel = run_data(DataConfig(input=[str(data)], output_dir=str(tmp_path / "out"), progress=False,
                                 minhash={"num_buckets": 2}))
    assert funnel["steps"][-1]["docs_out"] == 0
    assert funnel["steps"][2]["dropped"] == {"lang_fr": 1}
