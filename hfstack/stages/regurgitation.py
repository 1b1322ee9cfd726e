"""How much of its training documents a model recites word for word, against held-out documents;
and two probes of its working memory, which later copying (operands, tool outputs) rests on: a
held-out passage shown once before its own opening, and random tokens repeated (induction: the
second copy is predictable only by looking back at the first). What the base recites is traced back to
the crawl (hfstack.tools.provenance, as `hfstack trace` does): every greedy continuation of a training or
held-out document is searched in the data's parquet, and the longest spans a crawl document holds verbatim
are the report's `sources` (url, id, matched characters, span), which the report card lists.

    hfstack regurgitation --model runs/tiny/base --data runs/tiny/data
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder
from hfstack.core.model import load_model, prompt_ids
from hfstack.core.pretrained import beside_model, resolve_model
from hfstack.core.renames import renamed
from hfstack.core.splits import stable_split
from hfstack.core.tokens import read_texts
from hfstack.tools.provenance import Provenance


@renamed(model="model_name_or_path")
@dataclass
class RegurgitationConfig:
    model_name_or_path: str = model_folder("runs/tiny/base", must_exist=True)  # the base model: folder or Hub id
    model_revision: str | None = None  # a Hub id's branch, tag or commit (None: main)
    data: list[str] = field(default_factory=lambda: ["runs/tiny/data"])  # its training data: data-stage dirs or files
    text_column: str = "text"  # the text column of parquet/jsonl files
    prefix_tokens: int = bounded(32, ge=1)  # K: the prompt is a document's first K tokens
    continuation_tokens: int = bounded(32, ge=1)  # M: greedy tokens compared with the document's next M
    num_docs: int = bounded(40, ge=1)  # per side (training and held-out)
    val_fraction: float = bounded(0.02, gt=0, lt=1)  # the pretraining run's held-out choice
    induction_sequences: int = bounded(32, ge=0, why="0 skips the probe")  # random sequences shown twice
    induction_tokens: int = bounded(24, ge=2)  # tokens in each (drawn from the training documents' tokens)
    sources: int = bounded(10, ge=0, why="0: trace nothing")  # the longest recitations traced back to the crawl
    source_min_chars: int = bounded(24, ge=1)  # a continuation recites a document that holds this many chars of it
    output: str | None = None  # default: <model>/regurgitation.json

    def __post_init__(self):
        check_fields(self, "regurgitation")
        if not self.data:
            raise ConfigError("regurgitation: 'data' is empty; name the data-stage dir(s) or text files")


def regurgitation(cfg: RegurgitationConfig) -> dict:
    """Mean verbatim-matched tokens (and exact full matches) on training vs held-out documents, and on
    held-out documents shown in full just before their prefix (copying from the context)."""

    model, tokenizer = load_model(resolve_model(cfg.model_name_or_path, cfg.model_revision, "regurgitation"))
    need = cfg.prefix_tokens + cfg.continuation_tokens
    if 2 * need + 1 > model.config.max_position_embeddings:  # the in-context probe shows the passage twice
        raise ConfigError(f"regurgitation: 2 x (prefix_tokens + continuation_tokens) + 1 = {2 * need + 1} is more "
                          f"than the model's {model.config.max_position_embeddings} positions")
    sides: dict[str, list[list[int]]] = {"train": [], "heldout": []}
    for text in read_texts(cfg.data, cfg.text_column):
        side = "heldout" if stable_split(text, cfg.val_fraction) else "train"
        if len(sides[side]) < cfg.num_docs:
            ids = prompt_ids(tokenizer, text)
            if len(ids) >= need:
                sides[side].append(ids[:need])
    if not sides["train"]:
        raise ConfigError(f"regurgitation: no training document in {cfg.data} has {need} tokens")
    report = {"prefix_tokens": cfg.prefix_tokens, "continuation_tokens": cfg.continuation_tokens}
    probes = {side: [(ids[:cfg.prefix_tokens], ids[cfg.prefix_tokens:]) for ids in docs]
              for side, docs in sides.items()}
    probes["heldout_in_context"] = [in_context_probe(ids, cfg.prefix_tokens, tokenizer.eos_token_id)
                                    for ids in sides["heldout"]]
    continuations = []  # (side, prompt, matched tokens, greedy text) of the documents' own continuations
    for side, pairs in probes.items():
        runs = [matched_run(model, tokenizer, prompt, truth) for prompt, truth in pairs]
        matched = [count for count, _ in runs]
        report[side] = {"docs": len(pairs), "mean_matched_tokens": round(sum(matched) / max(1, len(pairs)), 2),
                        "exact_continuations": sum(run == cfg.continuation_tokens for run in matched)}
        if side != "heldout_in_context":  # that one copies from its context, not from the crawl
            continuations += [(side, tokenizer.decode(prompt, skip_special_tokens=True), count,
                               tokenizer.decode(new, skip_special_tokens=True))
                              for (prompt, _), (count, new) in zip(pairs, runs)]
    if cfg.sources:
        report["sources"] = traced_sources(cfg, continuations)
    if cfg.induction_sequences and 2 * cfg.induction_tokens <= model.config.max_position_embeddings:
        seen = sorted({token for ids in sides["train"] for token in ids} - set(tokenizer.all_special_ids))
        report["induction"] = induction_probe(model, seen, cfg.induction_sequences, cfg.induction_tokens)
    output = Path(cfg.output or beside_model(cfg.model_name_or_path, "regurgitation.json"))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[regurgitation] first {cfg.prefix_tokens} tokens → next {cfg.continuation_tokens} greedy tokens "
          f"matched verbatim: training docs {report['train']['mean_matched_tokens']} "
          f"({report['train']['exact_continuations']}/{report['train']['docs']} exact), held-out docs "
          f"{report['heldout']['mean_matched_tokens']} ({report['heldout']['exact_continuations']}/"
          f"{report['heldout']['docs']} exact), held-out docs already in the context "
          f"{report['heldout_in_context']['mean_matched_tokens']}"
          + (f"; random tokens repeated: {report['induction']['repeat_accuracy']:.0%} of the second copy predicted "
             f"(first copy {report['induction']['first_copy_accuracy']:.0%})" if "induction" in report else "")
          + f" → {output}")
    for source in report.get("sources", [])[:3]:
        print(f"[regurgitation]   recited {source['matched_chars']} characters of {source['url'] or source['id']} "
              f"({source['id']}): {' '.join(source['span'].split())[:100]!r}")
    return report


def traced_sources(cfg: RegurgitationConfig, continuations: list[tuple[str, str, int, str]]) -> list[dict]:
    """The continuations a crawl document holds at least `source_min_chars` characters of, longest first (the
    most matched tokens first among equals), each with that document's url, id and the span, once per span
    (`continuations`: how many recite it); [] when the data has no parquet (text files carry no url or id)."""
    try:
        index = Provenance.open(cfg.data, cfg.text_column, log=lambda line: None)
    except ConfigError as e:
        print(f"[regurgitation] recitations not traced to the crawl: {e}")
        return []
    found = []
    for side, prompt, matched_tokens, text in continuations:
        best = index.trace(text, top_k=1, min_chars=cfg.source_min_chars) if text.strip() else []
        if best and best[0].matched_chars >= cfg.source_min_chars:
            match = best[0]
            found.append({"url": match.url, "id": match.id, "matched_chars": match.matched_chars, "span": match.span,
                          "start": match.start, "end": match.end, "side": side, "matched_tokens": matched_tokens,
                          "prompt": prompt, "continuation": text})
    found.sort(key=lambda s: (s["matched_chars"], s["matched_tokens"]), reverse=True)
    print(f"[regurgitation] {len(found)} of {len(continuations)} greedy continuations recite at least "
          f"{cfg.source_min_chars} characters of a crawl document")
    unique: dict[tuple[str, str], dict] = {}  # one row per recited span of a document, however often recited
    for source in found:
        unique.setdefault((source["id"], source["span"]), source | {"continuations": 0})["continuations"] += 1
    return list(unique.values())[:cfg.sources]


def in_context_probe(ids: list[int], prefix_tokens: int, separator: int) -> tuple[list[int], list[int]]:
    """(prompt, truth): the whole passage, a document boundary, then its first K tokens again."""
    return ids + [separator] + ids[:prefix_tokens], ids[prefix_tokens:]


def induction_probe(model, vocabulary: list[int], sequences: int, length: int, seed: int = 0) -> dict:
    """Random sequences of `length` tokens, each shown twice in a row: the share of tokens the model
    predicts (greedy) in the second copy, where looking back at the first tells them, against the first
    copy, where nothing does (about chance). The first token of the second copy is left out of both
    counts: nothing before it says the sequence restarts."""
    import torch

    rng = random.Random(seed)
    rows = [[rng.choice(vocabulary) for _ in range(length)] for _ in range(sequences)]
    batch = torch.tensor([row + row for row in rows], device=model.device)
    with torch.inference_mode():
        predicted = model(input_ids=batch).logits.argmax(-1)[:, :-1]
    hits = predicted == batch[:, 1:]  # position t predicts token t + 1
    return {"sequences": sequences, "tokens": length,
            "first_copy_accuracy": round(hits[:, :length - 1].float().mean().item(), 4),
            "repeat_accuracy": round(hits[:, length:].float().mean().item(), 4)}


def matched_run(model, tokenizer, prompt: list[int], truth: list[int]) -> tuple[int, list[int]]:
    """Greedy tokens after `prompt` reproduced verbatim before the first difference from `truth`, and the
    greedy tokens themselves."""
    import torch

    ids = torch.tensor([prompt], device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=len(truth),
                             min_new_tokens=len(truth), pad_token_id=tokenizer.pad_token_id)
    new = out[0, len(prompt):].tolist()
    return next((i for i, (a, b) in enumerate(zip(new, truth)) if a != b), len(truth)), new


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = RegurgitationConfig
run = regurgitation
