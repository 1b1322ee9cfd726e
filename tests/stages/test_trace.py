"""`hfstack trace`: a verbatim sentence is traced to its crawl document first, with the exact span; a paraphrase
still finds its document by BM25 but no verbatim span; the index kept on disk is rebuilt when the parquet
changes, reused otherwise, and never takes a folder it did not make; bad input is one line. Then its users:
the regurgitation probe names the documents a memorising base recites, `hfstack serve` answers POST /v1/trace
(and refuses a foreign Origin; without crawl data, a clear error and no button on the page), and the report
card lists the sources only when the probe found some.

    python -m pytest -q tests/stages/test_trace.py
"""

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hfstack.cli import main
from hfstack.core.config import ConfigError
from hfstack.core.layout import RunLayout
from hfstack.stages.trace import TraceConfig, trace
from hfstack.tools.provenance import MANIFEST, Provenance, sources_section
from hfstack.ui.card import Report

from browser import launch_chromium, needs_chromium

DOCS = [  # (url, id, text): a small crawl of unrelated pages, split over two parquet shards
    ("https://example.org/rivers", "doc-rivers", "The river runs through the old town, past the market and the "
     "school. In spring the meadows along its banks flood, and herons wait in the shallow water for fish."),
    ("https://example.org/bread", "doc-bread", "To bake sourdough bread, feed the starter the night before. Mix "
     "flour, water and salt, fold the dough every half hour, then let it rise slowly in a cool kitchen."),
    ("https://example.org/trains", "doc-trains", "The night train leaves the capital at ten and reaches the coast "
     "at dawn. Passengers sleep in narrow bunks while the carriages rattle over the old iron bridges."),
    ("https://example.org/owls", "doc-owls", "Barn owls hunt by sound alone: their faces are shaped like dishes "
     "that gather the rustle of a mouse under the snow, and they strike without ever seeing it."),
    ("https://example.org/kites", "doc-kites", "A kite needs a steady wind of about fifteen kilometres an hour. "
     "Launch it with your back to the wind and let out the line slowly as it climbs."),
]
SENTENCE = "their faces are shaped like dishes that gather the rustle of a mouse under the snow"
PARAPHRASE = "owls find mice beneath snow by listening, their dish-like faces collecting the sound"


def write_parquet(path: Path, docs) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"text": text, "id": doc_id, "url": url} for url, doc_id, text in docs]),
                   path)
    return path


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """RUN/data as the data stage leaves it: parquet shards (and its working folder, which is not searched)."""
    run = RunLayout(tmp_path / "run")
    write_parquet(run.data / "000_00000.parquet", DOCS[:3])
    write_parquet(run.data / "000_00001.parquet", DOCS[3:])
    stale = [("https://example.org/old", "doc-old", "Barn owls " + SENTENCE)]
    write_parquet(run.data / "work" / "stale.parquet", stale)
    return run.root


def test_a_verbatim_sentence_is_traced_to_its_document_first_with_the_exact_span(run_dir, capsys):
    index = Provenance.open(run_dir / "data")
    best, *rest = index.trace(SENTENCE, top_k=3)
    owls = DOCS[3][2]
    assert (best.url, best.id, best.matched_chars, best.verbatim) == ("https://example.org/owls", "doc-owls",
                                                                     len(SENTENCE), True)
    assert best.span == SENTENCE == owls[best.start:best.end] and best.text_start == 0
    assert best.before == "Barn owls hunt by sound alone: " == owls[:best.start]  # the context, up to 40 chars
    assert best.after == ", and they strike without ever seeing it" == owls[best.end:best.end + 40]
    assert all(m.matched_chars < 20 and not m.verbatim for m in rest)  # the others share a word or two at most
    assert "doc-old" not in {m.id for m in index.trace("Barn owls " + SENTENCE, top_k=10)}  # data/work is not data

    assert main(["trace", "--run", str(run_dir), SENTENCE, "--top_k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = lines.index("1. https://example.org/owls  doc-owls")
    assert f"[{SENTENCE}]" in lines[first + 1] and f"{len(SENTENCE)} characters, verbatim" in lines[first + 1]
    assert main(["trace", "--run", str(run_dir), SENTENCE, "--top_k", "1", "--json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert (only["id"], only["span"], only["start"]) == ("doc-owls", SENTENCE, owls.index(SENTENCE))


def test_a_paraphrase_finds_its_document_without_a_verbatim_span_and_unrelated_text_none(run_dir):
    index = Provenance.open(run_dir / "data")
    paraphrased = index.trace(PARAPHRASE, top_k=5)
    assert paraphrased[0].id == "doc-owls"  # BM25 ranks it: no document holds the words in that order
    assert not any(m.verbatim for m in paraphrased)
    assert paraphrased[0].matched_chars < len(SENTENCE) // 2
    assert index.trace("quantum chromodynamics of gluon plasma") == []  # no word in common: nothing
    assert index.trace("the and of") == []  # only stopwords: nothing to search with
    # a verbatim span outranks a document BM25 prefers: the kites page repeats "wind"; the span is the rivers'
    mixed = index.trace("wind wind wind kite: past the market and the school. In spring the meadows", top_k=2)
    assert [m.id for m in mixed] == ["doc-rivers", "doc-kites"] and mixed[0].verbatim


def test_the_kept_index_is_rebuilt_when_the_data_changes_and_reused_otherwise(run_dir):
    folder = RunLayout(run_dir).trace
    said: list[str] = []
    Provenance.open(run_dir / "data", index_dir=folder, log=said.append)
    assert said[-1].startswith("[trace] indexed 5 documents from 2 parquet file(s)")
    assert json.loads((folder / MANIFEST).read_text())["complete"] is True
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    (folder / "notes.txt").write_text("mine")  # someone's file beside the index: a rebuild leaves it

    again = Provenance.open(run_dir / "data", index_dir=folder, log=said.append)
    assert said[-1].startswith("[trace] 5 documents, index reused") and len(again.ids) == 5
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten

    added = ("https://example.org/tea", "doc-tea", "Green tea is steeped at eighty degrees for two minutes only.")
    write_parquet(run_dir / "data" / "000_00002.parquet", [added])
    with pytest.raises(ConfigError, match="changed since the index was built"):
        again.trace(SENTENCE)  # an index in use notices too: its rows would point elsewhere
    rebuilt = Provenance.open(run_dir / "data", index_dir=folder, log=said.append)
    assert said[-2] == f"[trace] the data changed since the index in {folder} was built; rebuilding it"
    assert said[-1].startswith("[trace] indexed 6 documents from 3 parquet file(s)")
    assert rebuilt.trace("steeped at eighty degrees", top_k=1)[0].id == "doc-tea"
    assert (folder / "notes.txt").read_text() == "mine"


def test_the_index_never_takes_a_folder_it_did_not_make(run_dir, tmp_path):
    data = run_dir / "data"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match=f"index_dir '{foreign}' is not empty and has no {MANIFEST}"):
        Provenance.open(data, index_dir=foreign)
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    with pytest.raises(ConfigError, match="is inside the data folder .* which belongs to the data stage"):
        Provenance.open(data, index_dir=data / "trace")
    assert not (data / "trace").exists()
    ours = tmp_path / "ours"
    Provenance.open(data, index_dir=ours, log=lambda line: None)
    shutil.rmtree(ours / "bm25")
    (ours / "bm25").symlink_to(foreign)  # a link where the index was: never followed, never removed
    with pytest.raises(ConfigError, match="is a symbolic link"):
        Provenance.open(data, index_dir=ours)
    assert (foreign / "thesis.tex").read_text() == "x"


@pytest.mark.parametrize("args, expected", [
    (["--run", "{tmp}/nowhere", "some text"], "trace: no run directory at '{tmp}/nowhere'"),
    (["--run", "{tmp}", "some text"], "trace: no data at '{tmp}/data'"),
    (["--data", "{tmp}/empty", "some text"], "trace: no parquet files in '{tmp}/empty'"),
    (["--run", "{run}", "   "], "trace: the text to trace is empty"),
    (["some text"], "trace: give --run RUN"),
    (["--run", "{run}", "some text", "--top_k", "0"], "trace: 'top_k' must be in [1, 100], got 0"),
    (["--data", "{tmp}/other.parquet", "some text"], "has no column 'text' (columns: body)"),
])
def test_bad_input_is_one_line_naming_the_file_or_field(args, expected, run_dir, tmp_path, capsys, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.delenv("HFSTACK_DEBUG", raising=False)
    (tmp_path / "empty").mkdir()
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "other.parquet")
    fill = {"tmp": str(tmp_path), "run": str(run_dir)}
    assert main(["trace", *(a.format(**fill) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hfstack trace: error: "), err
    assert expected.format(**fill) in err, err
    with pytest.raises(ConfigError, match="the text to trace is empty"):
        TraceConfig(text="", run=str(run_dir))  # the same check from Python


def test_trace_from_python_returns_the_matches_it_prints(run_dir, capsys):
    matches = trace(TraceConfig(text=SENTENCE, data=str(run_dir / "data"), top_k=1))
    assert [m.id for m in matches] == ["doc-owls"]
    assert not RunLayout(run_dir).trace.exists()  # --data alone: built in memory, nothing written
    assert "doc-owls" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the regurgitation probe


def test_regurgitation_names_the_crawl_documents_a_memorising_base_recites(tiny_base_model, tmp_path):
    """A base trained hard on three documents recites them; the report's sources name those documents (not
    the other pages of the crawl), each span as the document has it, and a continuation that reproduces its own
    document exactly is traced to that very document."""
    from hfstack.core.stdlib_text import stdlib_articles
    from hfstack.stages.pretrain import PretrainConfig, run_pretrain
    from hfstack.stages.regurgitation import RegurgitationConfig, regurgitation

    articles = [" ".join(paragraphs)[:300] for _, paragraphs in stdlib_articles()]
    memorised = [(f"https://example.org/{i}", f"memorised-{i}", text) for i, text in enumerate(articles[:3])]
    others = [(f"https://other.example/{i}", f"other-{i}", text) for i, text in enumerate(articles[10:20])]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for _, _, t in memorised * 8))
    run_pretrain(PretrainConfig(data=[str(tmp_path / "train.jsonl")], tokenizer=str(tiny_base_model.parent / "tok"),
                                output_dir=str(tmp_path / "m"), depth=1, seq_len=64, per_device_train_batch_size=8,
                                batch_tokens=512, max_steps=90, warmup_steps=5, learning_rate=1e-2, val_fraction=0.01,
                                eval_steps=1000, save_steps=1000, logging_steps=100, sample_prompts=[], progress=False,
                                seed=0))
    data = write_parquet(tmp_path / "data" / "000_00000.parquet", memorised + others).parent
    report = regurgitation(RegurgitationConfig(model_name_or_path=str(tmp_path / "m"), data=[str(data)],
                                               prefix_tokens=8, continuation_tokens=20, val_fraction=0.01,
                                               induction_sequences=0, output=str(tmp_path / "r.json")))
    sources = json.loads((tmp_path / "r.json").read_text())["sources"]
    assert sources == report["sources"] and len(sources) >= 2, report
    texts = {doc_id: (url, text) for url, doc_id, text in memorised + others}
    assert sources[0]["id"].startswith("memorised-") and sources[0]["matched_chars"] >= 24
    for source in sources:
        url, text = texts[source["id"]]
        assert source["url"] == url and text[source["start"]:source["end"]] == source["span"]
        assert source["span"] in source["continuation"] and len(source["span"]) == source["matched_chars"]
    exact = [s for s in sources if s["matched_tokens"] == 20]
    assert exact, sources  # the base reproduced at least one document's own continuation
    for source in exact:
        assert texts[source["id"]][1].startswith(source["prompt"].strip())  # traced to the document it continued


# ----------------------------------------------------------------------------- serve: "where did this come from?"


def request(server, method: str, body=None, headers=None):
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/trace"
    data = None if body is None else json.dumps(body).encode()
    sent = urllib.request.Request(url, data=data, method=method,
                                  headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(sent, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


@pytest.fixture
def served(tiny_base_model, run_dir):
    """serve on a model that is RUN/sft of a run with crawl data, and one that is in no run."""
    from hfstack.stages.serve import ServeConfig, make_server

    shutil.copytree(tiny_base_model, RunLayout(run_dir).sft)
    servers = [make_server(ServeConfig(model_name_or_path=str(folder), port=0))
               for folder in (RunLayout(run_dir).sft, tiny_base_model)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_serve_traces_an_answer_to_the_models_own_run_and_refuses_a_foreign_origin(served, run_dir):
    in_run, alone = served
    assert request(in_run, "GET") == (200, {"object": "trace.status", "available": True, "documents": 5,
                                            "reason": None})
    status, answer = request(in_run, "POST", {"text": "Herons wait in the shallow water for fish.", "top_k": 2},
                             {"Origin": f"http://127.0.0.1:{in_run.server_address[1]}"})
    assert status == 200 and answer["object"] == "trace" and answer["data"] == str(RunLayout(run_dir).data)
    assert [m["id"] for m in answer["matches"]][:1] == ["doc-rivers"]
    assert answer["matches"][0]["span"] == "erons wait in the shallow water for fish."  # "Herons" is "herons" there
    assert (RunLayout(run_dir).trace / MANIFEST).is_file()  # kept in RUN/trace, outside RUN/data

    status, refused = request(in_run, "POST", {"text": SENTENCE}, {"Origin": "http://evil.example"})
    assert status == 403 and refused["error"]["message"] == "cross-origin request from 'http://evil.example' refused"
    status, refused = request(in_run, "POST", {"text": " "})
    assert status == 400 and refused["error"]["param"] == "text"

    assert request(alone, "GET")[1]["available"] is False
    status, refused = request(alone, "POST", {"text": SENTENCE})
    assert status == 404 and refused["error"]["code"] == "no_crawl_data"
    assert "start serve with --run RUN or --data DIR" in refused["error"]["message"]


ANSWER = "Herons wait in the shallow water for fish."


def canned_answer(route):
    """The chat API's streamed answer, canned in the browser: the page's trace button is what is tested."""
    chunks = [{"choices": [{"index": 0, "delta": {"content": ANSWER}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)


@needs_chromium
def test_the_chat_page_shows_where_an_answer_came_from_and_no_button_without_a_crawl(served):
    playwright_api = pytest.importorskip("playwright.sync_api")
    expect = playwright_api.expect
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        for server, has_crawl in zip(served, (True, False)):
            page = browser.new_page()
            page.route("**/v1/chat/completions", canned_answer)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.fill("#question", "Where do herons wait?")
            page.keyboard.press("Enter")
            expect(page.locator(".assistant.final")).to_have_text(ANSWER)
            expect(page.locator(f"body[data-crawl={'yes' if has_crawl else 'no'}]")).to_have_count(1)  # it asked
            if not has_crawl:
                expect(page.locator("button.trace")).to_have_count(0)
                continue
            page.click("button.trace")
            first = page.locator("ol.sources li").first
            expect(first).to_contain_text("https://example.org/rivers doc-rivers: 41 characters verbatim")
            expect(first.locator("mark")).to_have_text("erons wait in the shallow water for fish.")
            assert first.locator("a").get_attribute("href") == "https://example.org/rivers"
        browser.close()


def test_serve_refuses_a_run_without_crawl_data(tiny_base_model, tmp_path):
    from hfstack.stages.serve import ServeConfig

    with pytest.raises(ConfigError, match=f"serve: no data at '{tmp_path}/data'"):
        ServeConfig(model_name_or_path=str(tiny_base_model), run=str(tmp_path))


# ----------------------------------------------------------------------------- the report card


def test_the_report_lists_the_recited_sources_only_when_there_are_some(tmp_path):
    run = RunLayout(tmp_path / "run")
    run.regurgitation.mkdir(parents=True)
    card = Report(tmp_path)
    sources_section(card, run)  # the probe did not run
    assert card.parts == []
    report = {"train": {"docs": 4, "mean_matched_tokens": 1.0, "exact_continuations": 0}, "sources": []}
    (run.regurgitation / "report.json").write_text(json.dumps(report))
    sources_section(card, run)  # it ran and nothing was recited
    assert card.parts == []
    report["sources"] = [{"url": "https://example.org/owls", "id": "<urn:uuid:1>", "matched_chars": 42,
                          "span": "shaped like | dishes\nthat", "continuations": 2}]
    (run.regurgitation / "report.json").write_text(json.dumps(report))
    sources_section(card, run)
    text = card.markdown()
    assert "## Where the base's recitations come from" in text
    assert "| https://example.org/owls | `<urn:uuid:1>` | 42 | `shaped like \\| dishes that` | 2 |" in text

    from hfstack.stages.report import ReportConfig
    from hfstack.stages.report import report as report_card

    run.base.mkdir()
    (run.base / "config.json").write_text("{}")  # the run's final model: the card becomes its README.md
    report_card(ReportConfig(run=str(run.root)))
    assert "## Where the base's recitations come from" in (run.base / "README.md").read_text()
    assert "<h2>Where the base&#x27;s recitations come from</h2>" in (run.report / "report.html").read_text()
