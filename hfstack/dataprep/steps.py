"""The data stage's own datatrove steps: offline URL filtering, offline language ID (and a quick
language gate before extraction), a fast extractor, an offline word tokenizer for the quality
filters, and a meter that counts documents and bytes.

Each is a regular datatrove PipelineStep, so it runs under any datatrove executor and reports its
stats the datatrove way (`total`, `forwarded`, `dropped_<reason>`).
"""

from __future__ import annotations

import functools
import gc
import re
import signal
import threading
from urllib.parse import urlsplit

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import BaseExtractor
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.url_filter import URLFilter
from datatrove.utils.word_tokenizers import WordTokenizer

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


class _ExtractionTimeout(Exception):
    pass


_FAILED = object()


def _raise_timeout(signum, frame):
    raise _ExtractionTimeout


class InProcessExtraction:
    """Runs an extractor in the worker's own process, with a SIGALRM timeout per page.

    datatrove's extractors hand every page to a sandbox subprocess through a pipe, which costs about
    a quarter of trafilatura's own time (measured by benchmarks/data_throughput.py). An alarm gives
    the same per-page timeout for Python and lxml code; the sandbox is still used off the main thread
    (where alarms cannot be set) and when `sandbox=True` (it also survives a crash of the extractor).
    Stats match the sandboxed run: `extracted`, `timeout`, `clean_error`, `forwarded`, `dropped`.
    """

    sandbox: bool = False

    def run(self, data, rank: int = 0, world_size: int = 1):
        if self.sandbox or threading.current_thread() is not threading.main_thread():
            yield from super().run(data, rank, world_size)
            return
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        try:
            for doc in data:
                self.stat_update("total")
                with self.track_time():
                    text = self._extract_with_alarm(doc.text)
                if text is _FAILED:  # counted as timeout or clean_error, as the sandbox counts them
                    continue
                if text:
                    doc.text = text
                    self.stat_update("forwarded")
                    self.update_doc_stats(doc)
                    yield doc  # the alarm is off here, so downstream steps are never interrupted
                else:
                    self.stat_update("dropped")
        finally:
            signal.signal(signal.SIGALRM, previous)

    def _extract_with_alarm(self, html: str):
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            text = self.extract(html)
            self.stat_update("extracted")
            return text
        except _ExtractionTimeout:
            self.stat_update("timeout")
        except Exception:  # a page the extractor cannot parse is dropped and counted, like the sandbox does
            self.stat_update("clean_error")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return _FAILED


class TrafilaturaExtractor(InProcessExtraction, Trafilatura):
    """datatrove's Trafilatura step (precision-oriented settings), run in-process."""

    def __init__(self, timeout: float = 10, sandbox: bool = False, **kwargs):
        super().__init__(timeout=timeout, favour_precision=True, **kwargs)
        self.sandbox = sandbox


class ResiliparseExtractor(InProcessExtraction, BaseExtractor):
    """Main-content extraction with resiliparse: much faster than trafilatura, slightly less precise."""

    name = "⚡ Resiliparse"
    _requires_dependencies = ["resiliparse"]

    def __init__(self, timeout: float = 1, main_content: bool = True, sandbox: bool = False):
        super().__init__(timeout)
        self.main_content = main_content
        self.sandbox = sandbox

    def extract(self, text: str) -> str:
        from resiliparse.extract.html2text import extract_plain_text

        return extract_plain_text(text, main_content=self.main_content, alt_texts=False, links=False,
                                  form_fields=False, noscript=False, list_bullets=True).strip()


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


class Metered(PipelineStep):
    """Wraps a step to count documents and UTF-8 bytes going in and out, for the funnel report.

    The wrapper shares the inner step's Stats object, so datatrove's own stats and these counters
    land in one entry of the executor's stats.json.
    """

    def __init__(self, step: PipelineStep):
        super().__init__()
        self.step = step
        self.stats = step.stats
        self.name, self.type = step.name, step.type

    def _count(self, docs, prefix: str):
        for doc in docs:
            self.stats[f"{prefix}_docs"].update(1)
            self.stats[f"{prefix}_bytes"].update(len(doc.text.encode("utf-8", "replace")))
            yield doc

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        incoming = self._count(data, "in") if data is not None else None
        yield from self._count(self.step.run(incoming, rank, world_size), "out")
