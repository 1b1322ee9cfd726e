"""Shared fixtures: offline environment, a network guard, the shared crawl sample, WARC builders, and the tiny
models the stage tests build on, each built once per session (tests/tiny.py)."""

from __future__ import annotations

import gzip
import os
import socket
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"  # lm_eval and datasets never reach for the Hub in tests
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection to a non-loopback address fails the test: everything must run offline."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")) \
                and self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def crawl_sample() -> Path:
    path = SHARED_DATA / "crawl-sample.warc.gz"
    if not path.is_file():
        pytest.skip("shared crawl sample not present")
    return path


@pytest.fixture(scope="session")
def sample_run(crawl_sample, tmp_path_factory):
    """The English data pipeline on the shared sample, quality filters off (trafilatura, 2 tasks).

    Session-scoped: the data tests check its funnel and the tokenizer tests train on its text.
    """
    import json

    from hfstack.dataprep.config import DataConfig
    from hfstack.stages.data import run_data

    out = tmp_path_factory.mktemp("sample") / "data"
    funnel = run_data(DataConfig(input=[str(crawl_sample)], output_dir=str(out), tasks=2, quality=False,
                                 progress=False))
    labels = [json.loads(line) for line in (crawl_sample.parent / "crawl-sample.labels.jsonl").open()]
    return out, funnel, {label["url"]: label for label in labels}


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """A tokenizer and a depth-1 base model pretrained a few steps on standard-library prose."""
    from tiny import tiny_base

    return tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def tiny_sft_model(tiny_base_model, tmp_path_factory) -> Path:
    """A few SFT steps on the tiny base: a chat template, eval sets, the protocol's tokens."""
    from tiny import tiny_sft

    return tiny_sft(tmp_path_factory.mktemp("tiny-sft"), tiny_base_model)


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_sft_model, tmp_path_factory) -> Path:
    """A reward model trained briefly on the scripted judge's rankings of toy answers."""
    from tiny import tiny_reward

    return tiny_reward(tmp_path_factory.mktemp("tiny-rm"), tiny_sft_model)


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory) -> Path:
    """A tiny assistant finetuned until it answers QUESTION (tests/tiny.py) with a Python tool call, so the
    browser tests of serve and the web guard are deterministic."""
    from tiny import tiny_tool_model

    return tiny_tool_model(tmp_path_factory.mktemp("tool-model"))


def warc_record(url: str, http_block: bytes, record_id: int = 0) -> bytes:
    """One gzip member holding one WARC response record, written by hand so it can be broken on purpose."""
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{record_id:08d}>\r\n"
            f"WARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http_block)}\r\n\r\n").encode()
    return gzip.compress(head + http_block + b"\r\n\r\n")


def http_response(body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body


PROSE = ("The river runs through the old town, past the market and the school. People walk along its banks in "
         "the evening, and children play near the water while their parents talk about the day. In spring the "
         "trees bloom and the whole valley smells of flowers. ")


def html_page(title: str, paragraphs: int = 6, prose: str = PROSE) -> bytes:
    body = "".join(f"<p>{prose} Paragraph {i} of {title}.</p>" for i in range(paragraphs))
    return (f"<html><head><title>{title}</title></head><body><nav>Home | About</nav>"
            f"<article><h1>{title}</h1>{body}</article><footer>Copyright</footer></body></html>").encode()
