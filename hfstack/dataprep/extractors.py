"""The data stage's extractors (HTML → main text): datatrove's Trafilatura step and a fast resiliparse
one, both run in the worker's own process with a per-page SIGALRM timeout instead of datatrove's
sandbox subprocess.

Used by `hfstack data --extractor trafilatura|resiliparse` (and by the language gate in filters.py);
tested by `python -m pytest -q tests/unit/test_dataprep_steps.py`.
"""

from __future__ import annotations

import signal
import threading

from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import BaseExtractor


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
