"""The data stage's own filters, in pipeline order: offline URL filter, HTTP status/type, same page,
language gate (before extraction), offline language ID (after it), and the offline word tokenizer
that datatrove's quality filters split text with.

Each filter is a regular datatrove BaseFilter, so it runs under any datatrove executor and reports its
stats the datatrove way (`total`, `forwarded`, `dropped_<reason>`). Used by `hfstack data`; tested by
`python -m pytest -q tests/unit/test_dataprep_steps.py tests/unit/test_warc.py`.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import re
from urllib.parse import urlsplit

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.url_filter import URLFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from hfstack.dataprep.extractors import ResiliparseExtractor
from hfstack.dataprep.readers import HTML_TYPES

_URL_LISTS = ("block_listed_domains", "block_listed_url", "banned_words", "banned_subwords", "soft_banned_words")
_BUNDLED_URL_LISTS: dict[str, set] = {}  # parsed once per process: 4.5M domains take ~2.5 s to read
_LOOKUP_ONLY = ("block_listed_domains", "block_listed_url")  # the filter only asks `x in` these


class _EitherSet:
    """`x in` the shared bundled list or in one filter's own extras."""

    def __init__(self, bundled: set, extra: set):
        self.bundled, self.extra = bundled, extra

    def __contains__(self, item) -> bool:
        return item in self.extra or item in self.bundled


class OfflineURLFilter(URLFilter):
    """datatrove's URLFilter (bundled UT1 blocklists + user lists) that never touches the network.

    The stock filter's `tldextract` fetches the public suffix list on first use; this one reads the
    snapshot bundled inside tldextract. Documents without a URL (text input) pass and are counted.
    The bundled lists are parsed once per process and shared (read-only) by every filter in it, so
    a worker that runs many tasks, or a program that runs the stage many times, pays for it once.
    """

    name = "😈 URL filter"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)

    def download_data(self):
        if self._downloaded or not self.use_integrated_lists:
            return
        import ahocorasick

        extras = {name: getattr(self, name) for name in _URL_LISTS}
        if not _BUNDLED_URL_LISTS:  # datatrove reads the bundled lists into empty ones: those are the bundle
            for name in _URL_LISTS:
                setattr(self, name, set())
            super().download_data()
            _BUNDLED_URL_LISTS.update({name: getattr(self, name) for name in _URL_LISTS})
            # Every full garbage collection would walk the 4.5M-entry set (~0.35 s each; extraction
            # triggers one every ~25 pages, +12% to trafilatura's time); frozen objects are skipped.
            gc.freeze()
        for name in _URL_LISTS:
            bundled, extra = _BUNDLED_URL_LISTS[name], extras[name]
            if not extra:
                setattr(self, name, bundled)
            elif name in _LOOKUP_ONLY:  # never copy the big ones: a copy would be GC-walked again
                setattr(self, name, _EitherSet(bundled, extra))
            else:  # word lists are small, and iterated
                setattr(self, name, bundled | extra)
        self.banned_subwords_automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for word in self.banned_subwords:
            self.banned_subwords_automaton.add_word(word, len(self.banned_subwords_automaton))
        self.banned_subwords_automaton.make_automaton()
        self._downloaded = True

    def filter(self, document: Document):
        url = document.metadata.get("url")
        if not url:
            self.stat_update("no_url")
            return True
        verdict = super().filter(document)
        if verdict is not True:
            return verdict
        # hosts under suffixes the public suffix list lacks (intranet names, .example) match by host too
        host = (urlsplit(url).hostname or "").lower()
        parts = host.split(".")
        if any(".".join(parts[i:]) in self.block_listed_domains for i in range(len(parts) - 1)):
            return False, "host"
        return True


class HttpResponseFilter(BaseFilter):
    """Keeps only well-formed, complete HTTP 200 HTML responses; every other record is dropped by reason.

    Reasons: broken_http_headers, truncated, too_large, undecodable, not_200 (redirects, errors),
    not_html (images, CSS, JS, ...). Documents without HTTP metadata (jsonl/parquet input) pass.
    """

    name = "🚦 HTTP status/type"

    def filter(self, doc: Document):
        meta = doc.metadata
        if "http_status" not in meta:
            return True
        if meta.get("fetch_problem"):
            return False, meta["fetch_problem"]
        if meta["http_status"] != 200:
            return False, "not_200"
        if meta.get("content_type", "").split(";")[0].strip().lower() not in HTML_TYPES:
            return False, "not_html"
        return True


class SamePageFilter(BaseFilter):
    """Drops a page whose HTML is byte-for-byte one this task has already passed, before extraction.

    Crawls fetch the same page under several URLs (mirrors, tracking parameters, `index.html`), and
    extraction is the costliest step, so a repeat is dropped (`duplicate_html`) before it is paid for.
    It only sees its own task's pages and keeps a 16-byte digest per page; the exact and MinHash
    dedup stages after extraction still catch repeats across tasks and pages that differ in markup.
    """

    name = "👯 Same page (HTML)"

    def __init__(self, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.seen: set[bytes] = set()

    def filter(self, doc: Document):
        if "http_status" not in doc.metadata:  # text input: nothing was fetched, exact dedup handles it
            return True
        digest = hashlib.blake2b(doc.text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self.seen:
            return False, "duplicate_html"
        self.seen.add(digest)
        return True


class Py3LangidFilter(BaseFilter):
    """Offline language ID with py3langid, whose model ships inside its wheel.

    Sets `language` and `language_score` (a normalised probability) on every document, and keeps
    those whose language is in `languages` (all when empty) with a score of at least `threshold`.
    Drop reasons are `lang_<code>` for other languages and `low_confidence`.
    """

    name = "🌐 Language ID (py3langid)"
    _requires_dependencies = ["py3langid"]

    def __init__(self, languages: list[str] | None = None, threshold: float = 0.65, max_chars: int = 5_000,
                 exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages = set(languages or [])
        self.threshold = threshold
        # A page's first 5,000 characters are enough to know its language, and cost a quarter of the
        # median page: on the shared crawl sample 5,000 made 3 wrong calls against the labels, 20,000 made 4.
        self.max_chars = max_chars
        self._identifier = None

    def classify(self, text: str) -> tuple[str, float]:
        if self._identifier is None:
            self._identifier = _py3langid_model()
        lang, score = self._identifier.classify(text[: self.max_chars])
        return lang, float(score)

    def filter(self, doc: Document):
        lang, score = self.classify(doc.text)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if score < self.threshold:  # the guess itself means little, e.g. a page that is only a title
            return False, "low_confidence"
        if self.languages and lang not in self.languages:
            return False, f"lang_{lang}"
        return True


class LanguageGate(BaseFilter):
    """Before the costly extractor: drop an HTML page that is confidently in a language the stage drops.

    trafilatura takes ~120 ms a page on the shared crawl sample; the fast extractor's text of the
    page's first 100,000 characters plus py3langid take ~8 ms. A page leaves here only when that
    quick text is long enough to judge (`min_chars`) and py3langid is sure (`threshold`, above the
    language step's own) that it is in another language; every other page, unsure ones included,
    goes on to extraction and the real language step. Drop reasons are `lang_<code>`; passes are
    counted as `unsure` or `wanted`.
    """

    name = "🚪 Language gate"
    _requires_dependencies = ["resiliparse", "py3langid"]

    def __init__(self, languages: list[str], threshold: float = 0.9, html_chars: int = 100_000,
                 min_chars: int = 200, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages = set(languages)
        self.threshold = threshold
        self.html_chars = html_chars  # bounds the cost on huge pages; a language shows in the first part
        self.min_chars = min_chars
        self.identify = Py3LangidFilter()
        self.quick = ResiliparseExtractor()

    def filter(self, doc: Document):
        try:
            text = self.quick.extract(doc.text[: self.html_chars])
        except Exception:  # unparseable here: the extractor decides
            text = ""
        if len(text) < self.min_chars:
            self.stat_update("unsure")
            return True
        lang, score = self.identify.classify(text)
        if lang in self.languages:
            self.stat_update("wanted")
            return True
        if score < self.threshold:
            self.stat_update("unsure")
            return True
        return False, f"lang_{lang}"


@functools.cache
def _py3langid_model():
    """The model, loaded once per process (~0.5 s) and shared by every language filter in it."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


class OfflineWordTokenizer(WordTokenizer):
    """A regex word and sentence splitter for the quality filters.

    datatrove's default English tokenizer needs NLTK's punkt data, which is a download; this needs
    nothing. Like NLTK's Treebank rules, punctuation at a word's edges is split off ("(x)," gives
    "(", "x", "),") while inner punctuation stays ("don't", "e-mail", "3.14", "os.path"), which is
    what the Gopher and FineWeb thresholds were tuned with.
    """

    _word = re.compile(r"\w+(?:[^\w\s]+\w+)*|[^\w\s]+", re.UNICODE)
    _sentence_end = re.compile(r"(?<=[.!?。！？])\s+")

    def word_tokenize(self, text: str) -> list[str]:
        return self._word.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in self._sentence_end.split(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for sentence in self.sent_tokenize(text):
            begin = text.index(sentence, start)
            spans.append((begin, begin + len(sentence)))
            start = begin + len(sentence)
        return spans
