"""The offline corpus: the Python standard library's docstrings as articles, which the synthetic crawl
and the word tasks (counting, spelling) draw from."""

from __future__ import annotations

import importlib
import inspect
import re

# stdlib modules that open windows, print on import or only exist on other platforms
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "lib2to3",
                "ensurepip", "venv", "msvcrt", "winreg", "winsound", "nturl2path", "msilib"}


def stdlib_module_names() -> list[str]:
    import sys

    return sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP_MODULES)


def _reflow(doc: str) -> list[str]:
    """Docstring → prose paragraphs: join wrapped lines, skip code, tables and short fragments."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = [ln.strip() for ln in block.splitlines()]
        if any(ln.startswith((">>>", "...", "$", "-", "*", ":", "|")) or ln.endswith("::") for ln in lines):
            continue
        text = " ".join(lines)
        words = text.split()
        alpha = sum(w.strip(".,;:()'\"").isalpha() for w in words)
        if len(text) >= 80 and words and alpha / len(words) > 0.7 and text[-1] in ".!?":
            paragraphs.append(text)
    return paragraphs


def stdlib_articles() -> list[tuple[str, list[str]]]:
    """(title, paragraphs) per stdlib module, from its own docstrings and those of its public members."""
    import warnings

    articles = []
    for name in stdlib_module_names():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated modules warn on import
                module = importlib.import_module(name)
        except Exception:  # a module missing on this platform simply gives no article
            continue
        paragraphs = _reflow(module.__doc__ or "")
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            member = getattr(module, attr, None)
            if attr.startswith("_") or getattr(member, "__module__", None) != module.__name__:
                continue
            paragraphs += _reflow(getattr(member, "__doc__", None) or "")
            if inspect.isclass(member):  # methods carry much of the prose
                for method_name, method in sorted(vars(member).items()):
                    if not method_name.startswith("_") and callable(method):
                        paragraphs += _reflow(getattr(method, "__doc__", None) or "")
        paragraphs = list(dict.fromkeys(paragraphs))
        if len(paragraphs) >= 3:
            articles.append((name, paragraphs))
    return articles
