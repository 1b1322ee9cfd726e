"""The search tool: BM25 (bm25s) over passages of the pretraining corpus, fully local.

    index = SearchIndex.build(texts); index.search_text("what does heapq do")
    index.save(DIR); SearchIndex.load(DIR)
"""

from __future__ import annotations

import json
from pathlib import Path


def passages(texts, max_chars: int = 500) -> list[str]:
    """Documents cut at line breaks into passages of at most about `max_chars` characters."""
    out = []
    for text in texts:
        current = ""
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if current and len(current) + len(line) > max_chars:
                out.append(current)
                current = ""
            current = f"{current} {line}".strip()
        if current:
            out.append(current)
    return out


class SearchIndex:
    def __init__(self, retriever, corpus: list[str]):
        self.retriever, self.corpus = retriever, corpus

    @classmethod
    def build(cls, texts, max_chars: int = 500) -> SearchIndex:
        import bm25s

        corpus = passages(texts, max_chars)
        if not corpus:
            raise ValueError("search index: no text to index")
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        return cls(retriever, corpus)

    def search(self, query: str, k: int = 2) -> list[tuple[str, float]]:
        import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        k = min(k, len(self.corpus))
        ids, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return [(self.corpus[i], float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def search_text(self, query: str, k: int = 1, max_chars: int = 400) -> str:
        """What the assistant reads back: numbered passages, or a note that nothing matched. Short by
        default, so a conversation with a search still fits a small model's context."""
        results = self.search(query, k)
        if not results:
            return "No results."
        return "\n".join(f"[{n}] {text[:max_chars]}" for n, (text, _) in enumerate(results, 1))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(folder / "bm25"))
        (folder / "passages.json").write_text(json.dumps(self.corpus))

    @classmethod
    def load(cls, folder: str | Path) -> SearchIndex:
        import bm25s

        folder = Path(folder)
        return cls(bm25s.BM25.load(str(folder / "bm25")), json.loads((folder / "passages.json").read_text()))


def index_of_model(model_dir: str | Path) -> SearchIndex | None:
    """The search index an SFT run saved next to its model, if any."""
    folder = Path(model_dir) / "search_index"
    return SearchIndex.load(folder) if (folder / "passages.json").is_file() else None
