"""The WARC reader and HTTP filter on damaged and odd input: nothing stops the run, everything is counted."""

import pytest
from conftest import html_page, http_response, warc_record

from hfstack.core.config import ConfigError
from hfstack.dataprep.filters import HttpResponseFilter, SamePageFilter
from hfstack.dataprep.readers import WarcResponseReader, decode_html
from hfstack.dataprep.sources import resolve_inputs


def read_all(paths, **kwargs):
    reader = WarcResponseReader([str(p) for p in paths], **kwargs)
    http = HttpResponseFilter()
    docs = list(http(reader()))
    return docs, reader.stats.to_dict()["stats"], http.stats.to_dict()["stats"]


def test_every_response_kind_is_counted(tmp_path):
    crawl = tmp_path / "c.warc.gz"
    crawl.write_bytes(b"".join([
        warc_record("https://a.example/ok", http_response(html_page("ok")), 1),
        warc_record("https://a.example/img.png", http_response(b"\x89PNG....", "image/png"), 2),
        warc_record("https://a.example/old", http_response(b"<html>moved</html>", status="301 Moved"), 3),
        warc_record("https://a.example/bad", b"HTPP/1.1 two hundred\r\n\x00\xff\r\n\r\n<html>x</html>", 4),
        warc_record("https://a.example/huge", http_response(b"<html>" + b"a" * 5000 + b"</html>"), 5),
    ]))
    docs, reader_stats, http_stats = read_all([crawl], max_page_bytes=4000)
    assert [d.metadata["url"] for d in docs] == ["https://a.example/ok"]
    assert http_stats["dropped_not_html"] == 1
    assert http_stats["dropped_not_200"] == 1
    assert http_stats["dropped_broken_http_headers"] == 1
    assert http_stats["dropped_too_large"] == 1
    assert http_stats["total"] == 5


def test_same_page_filter_drops_exact_repeats_of_html_only(tmp_path):
    crawl = tmp_path / "c.warc.gz"
    crawl.write_bytes(b"".join([
        warc_record("https://a.example/1", http_response(html_page("one")), 1),
        warc_record("https://mirror.a.example/1", http_response(html_page("one")), 2),  # same bytes
        warc_record("https://a.example/2", http_response(html_page("one ")), 3),  # one byte differs
        warc_record("https://a.example/1?ref=x", http_response(html_page("one")), 4),
    ]))
    docs, _, _ = read_all([crawl])
    same = SamePageFilter()
    kept = list(same(iter(docs)))
    assert [d.metadata["url"] for d in kept] == ["https://a.example/1", "https://a.example/2"]
    assert same.stats.to_dict()["stats"]["dropped_duplicate_html"] == 2
    from datatrove.data import Document

    text_docs = [Document(text="same", id=str(i), metadata={}) for i in range(2)]  # not fetched: left to dedup
    assert len(list(SamePageFilter()(iter(text_docs)))) == 2


def test_truncated_and_corrupt_gzip_keep_what_came_before(tmp_path):
    good = b"".join(warc_record(f"https://a.example/{i}", http_response(html_page(str(i))), i) for i in range(3))
    truncated = tmp_path / "truncated.warc.gz"
    truncated.write_bytes(good[:-30])
    corrupt = tmp_path / "corrupt.warc.gz"
    first = warc_record("https://b.example/0", http_response(html_page("b0")), 9)
    corrupt.write_bytes(first + b"\x1f\x8b\x08\x00garbage-not-deflate" * 5)
    empty = tmp_path / "empty.warc.gz"
    empty.write_bytes(b"")
    docs, reader_stats, http_stats = read_all([truncated, corrupt, empty])
    urls = sorted(d.metadata["url"] for d in docs)
    assert urls == ["https://a.example/0", "https://a.example/1", "https://b.example/0"]
    assert http_stats["dropped_truncated"] == 1
    assert reader_stats["corrupt_files"] == 1
    assert reader_stats["files_without_responses"] == 1
    assert reader_stats["input_files"] == 3


def test_non_utf8_pages_are_decoded_or_counted(tmp_path):
    latin1 = "<html><body><p>Café crème brûlée, à la française.</p></body></html>".encode("latin-1")
    crawl = tmp_path / "c.warc.gz"
    crawl.write_bytes(
        warc_record("https://a.example/declared", http_response(latin1, "text/html; charset=iso-8859-1"), 1)
        + warc_record("https://a.example/undeclared", http_response(latin1, "text/html"), 2))
    docs, _, _ = read_all([crawl])
    assert len(docs) == 2
    assert all("Café crème brûlée" in d.text for d in docs)


def test_decode_html_falls_back_and_gives_up_cleanly():
    assert decode_html("naïve".encode(), "text/html; charset=bogus-charset") == "naïve"
    assert decode_html(b"plain", "") == "plain"


def test_records_are_split_across_tasks_when_files_are_few(tmp_path):
    crawl = tmp_path / "c.warc.gz"
    crawl.write_bytes(b"".join(warc_record(f"https://a.example/{i}", http_response(html_page(str(i))), i)
                               for i in range(7)))
    reader = WarcResponseReader([str(crawl)])
    shards = [[d.metadata["url"] for d in reader.run(rank=r, world_size=3)] for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(f"https://a.example/{i}" for i in range(7))
    assert all(shards)


def test_missing_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as err:
        resolve_inputs([str(tmp_path / "nope.warc.gz")])
    assert "nope.warc.gz" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="matches no files"):
        resolve_inputs([str(tmp_path / "*.warc.gz")])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConfigError, match="unknown file type"):
        resolve_inputs([str(tmp_path / "x.txt")])


def test_inputs_are_grouped_by_kind_in_order(tmp_path):
    for name in ("b.warc.gz", "a.warc", "t.jsonl", "p.parquet"):
        (tmp_path / name).write_bytes(b"")
    grouped = resolve_inputs([str(tmp_path / "*.warc*"), str(tmp_path / "t.jsonl"), str(tmp_path)])
    assert [p.rsplit("/", 1)[1] for p in grouped["warc"]] == ["a.warc", "b.warc.gz"]
    assert len(grouped["jsonl"]) == 1 and len(grouped["parquet"]) == 1


def test_hub_dataset_fails_fast_when_offline(tmp_path):
    from hfstack.dataprep.config import DataConfig
    from hfstack.stages.data import run_data

    with pytest.raises(ConfigError, match="hub_dataset 'someone/web': HF_HUB_OFFLINE is set"):
        run_data(DataConfig(hub_dataset="someone/web", output_dir=str(tmp_path / "o")))
