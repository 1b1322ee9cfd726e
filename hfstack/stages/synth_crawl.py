"""Write the offline synthetic crawl: a WARC of pages from the Python standard library's docs, with
the spam, foreign-language, boilerplate and duplicate pages the data stage must drop.

    hfstack synth-crawl --output crawl.warc.gz --pages 300 --seed 0
"""

from __future__ import annotations

from dataclasses import dataclass

from hfstack.core.config import bounded, check_fields
from hfstack.dataprep.synthetic import CrawlSummary, write_crawl


@dataclass
class SynthCrawlConfig:
    output: str = "runs/crawl/crawl.warc.gz"  # the WARC file written
    pages: int = bounded(300, ge=10)  # English pages; the other kinds scale with it
    seed: int = 0  # same seed, same crawl

    def __post_init__(self):
        check_fields(self, "synth-crawl")


def synth_crawl(cfg: SynthCrawlConfig) -> CrawlSummary:
    summary = write_crawl(cfg.output, cfg.pages, cfg.seed)
    print(f"wrote {summary.path}: {summary.counts}")
    return summary


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = SynthCrawlConfig
run = synth_crawl
