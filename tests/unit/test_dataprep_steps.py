"""Unit tests of the data stage's own datatrove steps."""

from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter

from hfstack.dataprep.extractors import ResiliparseExtractor, TrafilaturaExtractor
from hfstack.dataprep.filters import LanguageGate, OfflineURLFilter, OfflineWordTokenizer, Py3LangidFilter
from hfstack.dataprep.funnel import Metered
from hfstack.dataprep.synthetic import _blocklisted_domains


def doc(text="", url=None, **meta):
    return Document(text=text, id="x", metadata=({"url": url} if url else {}) | meta)


def test_url_filter_blocks_bundled_and_user_lists_offline():
    import random

    blocked = _blocklisted_domains(random.Random(0), 1)[0]  # a domain from datatrove's bundled blocklist
    url_filter = OfflineURLFilter(extra_domains=["spam.example"], banned_words=["forbiddenword"])
    docs = [doc("a", f"https://{blocked}/page"), doc("b", "https://spam.example/x"),
            doc("c", "https://ok.example/forbiddenword/1"), doc("d", "https://docs.python.org/3/"), doc("e")]
    kept = [d.text for d in url_filter(docs)]
    assert kept == ["d", "e"]  # `e` has no URL (text input) and passes
    stats = url_filter.stats.to_dict()["stats"]
    assert stats["dropped"] == 3 and stats["no_url"] == 1


def test_url_filters_share_the_bundled_lists_but_not_each_others_extras():
    import random

    blocked = _blocklisted_domains(random.Random(0), 1)[0]
    first = OfflineURLFilter(extra_domains=["first.example"], banned_words=["firstword"])
    second = OfflineURLFilter(extra_domains=["second.example"])
    plain = OfflineURLFilter()
    urls = [f"https://{blocked}/", "https://first.example/", "https://ok.example/firstword",
            "https://second.example/", "https://ok.example/"]
    kept = {name: [d.metadata["url"] for d in f([doc("t", u) for u in urls])]
            for name, f in (("first", first), ("second", second), ("plain", plain))}
    assert kept["first"] == ["https://second.example/", "https://ok.example/"]
    assert kept["second"] == ["https://first.example/", "https://ok.example/firstword", "https://ok.example/"]
    assert kept["plain"] == urls[1:]
    again = OfflineURLFilter()
    list(again([doc("t", "https://ok.example/")]))
    assert again.block_listed_domains is plain.block_listed_domains  # one parsed copy per process


def test_language_filter_labels_and_drops():
    lang = Py3LangidFilter(["en"], threshold=0.65)
    docs = [doc("The weather today is lovely and we are going for a long walk in the park."),
            doc("Le marché du village ouvre chaque samedi matin sur la place de l'église."),
            doc("Der Wochenmarkt findet jeden Samstag auf dem Platz vor dem Rathaus statt.")]
    kept = list(lang(docs))
    assert [d.metadata["language"] for d in kept] == ["en"]
    assert kept[0].metadata["language_score"] >= 0.65
    assert docs[1].metadata["language"] == "fr" and docs[2].metadata["language"] == "de"
    stats = lang.stats.to_dict()["stats"]
    assert stats["dropped_lang_fr"] == 1 and stats["dropped_lang_de"] == 1


def test_language_filter_keeps_all_languages_when_list_empty():
    kept = list(Py3LangidFilter([], threshold=0.5)([doc("Los vecinos compran allí verduras frescas y pan.")]))
    assert kept[0].metadata["language"] == "es"


def html_page(paragraph: str, repeat: int = 6) -> str:
    return ("<html><body><nav>Home About Contact</nav><article><h1>Title</h1>"
            + f"<p>{paragraph}</p>" * repeat + "</article><footer>Copyright 2024</footer></body></html>")


def test_language_gate_drops_only_pages_it_is_sure_of():
    gate = LanguageGate(["en"], threshold=0.9)
    pages = {"en": html_page("The weather today is lovely and we are going for a long walk in the park."),
             "fr": html_page("Le marché du village ouvre chaque samedi matin sur la place de l'église."),
             "de": html_page("Der Wochenmarkt findet jeden Samstag auf dem Platz vor dem Rathaus statt."),
             "short fr": html_page("Le marché ouvre le samedi.", repeat=1),  # too little to judge
             "broken": "<html><body><p>" + "\x00" * 500}
    kept = [d.id for d in gate([Document(text=html, id=name) for name, html in pages.items()])]
    assert kept == ["en", "short fr", "broken"]
    stats = gate.stats.to_dict()["stats"]
    assert stats["dropped_lang_fr"] == 1 and stats["dropped_lang_de"] == 1
    assert stats["wanted"] == 1 and stats["unsure"] == 2
    # a higher bar than the identifier's confidence lets the foreign page through to the language step
    strict = LanguageGate(["en"], threshold=1.01)
    assert len(list(strict([Document(text=pages["fr"], id="fr")]))) == 1


def test_resiliparse_extracts_main_text_without_boilerplate():
    html = ("<html><body><nav>Home About Contact</nav><article><h1>Title</h1><p>" + "Real content here. " * 20
            + "</p></article><footer>Copyright 2024</footer></body></html>")
    text = ResiliparseExtractor().extract(html)
    assert "Real content here." in text
    assert "Copyright 2024" not in text


ARTICLE = ("<html><body><nav>Home About Contact</nav><article><h1>Title</h1><p>" + "Real content here. " * 20
           + "</p></article><footer>Copyright 2024</footer></body></html>")


class SlowOnMarker(ResiliparseExtractor):
    """Hangs on pages that contain 'HANG', like a pathological page would."""

    def extract(self, text):
        if "HANG" in text:
            import time

            time.sleep(5)
        if "CRASH" in text:
            raise ValueError("cannot parse")
        return super().extract(text)


def test_in_process_extraction_times_out_and_counts_bad_pages_then_goes_on():
    step = SlowOnMarker(timeout=0.2)
    pages = [ARTICLE, ARTICLE.replace("Title", "HANG"), ARTICLE.replace("Title", "CRASH"), "<html></html>", ARTICLE]
    out = list(step.run(iter(Document(text=p, id=str(i)) for i, p in enumerate(pages))))
    assert [d.id for d in out] == ["0", "4"]
    assert all("Real content here." in d.text for d in out)
    stats = step.stats
    assert stats["timeout"].total == 1 and stats["clean_error"].total == 1
    assert stats["dropped"].total == 1 and stats["forwarded"].total == 2


def test_in_process_trafilatura_matches_datatrove_sandboxed_step():
    pages = [ARTICLE, ARTICLE.replace("Real content", "Other words"), "<html><body></body></html>"]
    in_process = list(TrafilaturaExtractor().run(iter(Document(text=p, id=str(i)) for i, p in enumerate(pages))))
    sandboxed = list(TrafilaturaExtractor(sandbox=True).run(iter(Document(text=p, id=str(i))
                                                                 for i, p in enumerate(pages))))
    assert [(d.id, d.text) for d in in_process] == [(d.id, d.text) for d in sandboxed]
    assert len(in_process) == 2


def test_offline_word_tokenizer_matches_treebank_style():
    tok = OfflineWordTokenizer("en")
    assert tok.word_tokenize("Don't split e-mail or 3.14, (but split this).") == \
        ["Don't", "split", "e-mail", "or", "3.14", ",", "(", "but", "split", "this", ")."]
    assert tok.sent_tokenize("One. Two! Three?") == ["One.", "Two!", "Three?"]
    text = "First sentence. Second one."
    assert [text[a:b] for a, b in tok.span_tokenize(text)] == ["First sentence.", "Second one."]


def test_gopher_quality_runs_offline_with_our_tokenizer():
    gopher = GopherQualityFilter(language=OfflineWordTokenizer("en"))
    prose = "The children walked to the school with their friends and the dog followed them all the way. " * 6
    kept = list(gopher([doc(prose), doc("buy now " * 3)]))
    assert len(kept) == 1
    assert gopher.stats.to_dict()["stats"]["dropped_gopher_short_doc"] == 1


def test_metered_counts_docs_and_utf8_bytes_in_and_out():
    lang = Metered(Py3LangidFilter(["en"]))
    docs = [doc("The weather today is lovely and we are going for a walk in the park."),
            doc("Café au lait, s'il vous plaît, merci beaucoup.")]
    kept = list(lang.run(iter(docs)))
    stats = lang.stats.to_dict()["stats"]
    assert stats["in_docs"] == 2 and stats["out_docs"] == len(kept) == 1
    assert stats["in_bytes"]["total"] == sum(len(d.text.encode()) for d in docs)
    assert stats["out_bytes"]["total"] == len(kept[0].text.encode())
