"""A small synthetic web crawl, made offline, so the tiny preset needs no network.

    hfstack synth-crawl --output runs/tiny/crawl/crawl.warc.gz --pages 300

English pages carry real prose: the docstrings of the Python standard library, reflowed into
paragraphs and wrapped in site boilerplate (menus, cookie banners, footers). Around them is what a
crawl really holds, so that every step of the data stage has something to drop: pages in French,
German and Spanish, keyword spam, exact copies, republished copies and near duplicates under other
URLs, images, CSS and JS, redirects and 404s, blocklisted domains, a Latin-1 page and a record with
broken HTTP headers.
"""

from __future__ import annotations

import gzip
import html
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from hfstack.core.stdlib_text import stdlib_articles

FOREIGN = {
    "fr": ["Le marché du village ouvre chaque samedi matin sur la place de l'église.",
           "Les habitants y viennent acheter des légumes frais, du fromage et du pain encore chaud.",
           "Depuis quelques années, la mairie encourage les producteurs locaux à s'installer.",
           "Les enfants apprennent à lire et à compter avant de découvrir les sciences naturelles.",
           "La bibliothèque municipale propose des ateliers d'écriture pendant les vacances scolaires.",
           "Il faut arroser les tomates le soir, lorsque la chaleur de la journée est retombée.",
           "Le train régional relie la vallée à la grande ville en moins d'une heure."],
    "de": ["Der Wochenmarkt findet jeden Samstag auf dem Platz vor dem Rathaus statt.",
           "Viele Familien kaufen dort Gemüse, Käse und frisches Brot aus der Region.",
           "Im Winter wird der Marktplatz in eine kleine Eisbahn für Kinder verwandelt.",
           "Die Stadtbibliothek bietet während der Ferien Schreibwerkstätten für Jugendliche an.",
           "Tomaten sollte man am Abend gießen, wenn die Hitze des Tages nachgelassen hat.",
           "Der Regionalzug verbindet das Tal in weniger als einer Stunde mit der Großstadt.",
           "Nach dem Unterricht treffen sich die Schüler oft im Park am Fluss."],
    "es": ["El mercado del pueblo abre todos los sábados por la mañana en la plaza mayor.",
           "Los vecinos compran allí verduras frescas, queso y pan recién hecho.",
           "Desde hace algunos años, el ayuntamiento apoya a los productores de la comarca.",
           "La biblioteca municipal organiza talleres de escritura durante las vacaciones.",
           "Conviene regar los tomates por la tarde, cuando el calor del día ha bajado.",
           "El tren regional une el valle con la ciudad en menos de una hora.",
           "Después de clase, los estudiantes suelen reunirse en el parque junto al río."],
}

SPAM_WORDS = ["cheap", "best price", "discount", "buy now", "free shipping", "limited offer", "casino bonus"]
NAV = ["Home", "Docs", "Blog", "Forum", "About", "Contact", "Login", "Sign up"]


@dataclass
class Record:
    url: str
    status: str = "200 OK"
    content_type: str = "text/html; charset=utf-8"
    body: bytes = b""
    raw_http: bytes | None = None  # a hand-written (possibly broken) HTTP block


@dataclass
class CrawlSummary:
    path: str
    counts: dict = field(default_factory=dict)


def _page(title: str, paragraphs: list[str], rng: random.Random, lang: str = "en") -> bytes:
    nav = "".join(f'<li><a href="/{n.lower()}">{n}</a></li>' for n in NAV)
    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs)
    related = "".join(f'<li><a href="/p/{rng.randint(1, 999)}">Related article {i}</a></li>' for i in range(5))
    return (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<script>var tracker = {{"id": {rng.randint(1000, 9999)}}};</script></head><body>'
            f'<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies?</div>'
            f'<nav><ul>{nav}</ul></nav><main><article><h1>{html.escape(title)}</h1>\n{body}</article></main>'
            f'<aside><h3>Related</h3><ul>{related}</ul></aside>'
            f'<footer>© {rng.randint(2015, 2025)} Example Docs. All rights reserved. Privacy | Terms</footer>'
            f"</body></html>").encode()


def build_records(pages: int, seed: int) -> tuple[list[Record], dict]:
    rng = random.Random(seed)
    articles = stdlib_articles()
    records, counts = [], {}

    def add(kind: str, record: Record):
        counts[kind] = counts.get(kind, 0) + 1
        records.append(record)

    hosts = ["docs.example.org", "learn.example.com", "wiki.example.net", "blog.example.io"]
    english = []
    for i in range(pages):
        title, paragraphs = articles[i % len(articles)]
        if i >= len(articles):  # later pages are other selections from the same module, as on a real site
            paragraphs = rng.sample(paragraphs, k=max(3, len(paragraphs) // 2))
        url = f"https://{hosts[i % len(hosts)]}/{title.replace('.', '/')}/{i}.html"
        english.append((url, title, paragraphs))
        add("page", Record(url, body=_page(title, paragraphs, rng)))
    for lang, sentences in FOREIGN.items():
        for j in range(max(2, pages // 40)):
            text = [" ".join(rng.sample(sentences, 4)) for _ in range(4)]
            add("foreign", Record(f"https://{lang}.example.eu/article/{j}.html", body=_page(lang, text, rng, lang)))
        # a short note is too little for the language gate to judge: the language step after extraction drops it
        own = random.Random(f"{seed} {lang} note")  # its own stream, so the records after it stay as they were
        add("foreign_note", Record(f"https://{lang}.example.eu/note.html",
                                   body=_page(lang, own.sample(sentences, 2), own, lang)))
    for j in range(max(2, pages // 50)):
        spam = [" ".join(rng.choices(SPAM_WORDS, k=12)) + "!" for _ in range(30)]
        add("spam", Record(f"https://deals.example.shop/offer/{j}.html", body=_page("Best deals", spam, rng)))
    for url, title, paragraphs in rng.sample(english, k=max(2, pages // 30)):
        # the same bytes under a mirror's URL, and the same article in another site's template (other markup)
        add("exact_duplicate", Record(url.replace("https://", "https://mirror."), body=records[
            next(k for k, r in enumerate(records) if r.url == url)].body))
        template = random.Random(f"{seed} {url}")  # its own stream, so the records after it stay as they were
        add("republished", Record(url.replace("https://", "https://syndicated."), body=_page(title, paragraphs,
                                                                                            template)))
    for url, title, paragraphs in rng.sample(english, k=max(2, pages // 30)):
        changed = paragraphs[:-1] + ["This page was last updated by the mirror maintainers."]
        add("near_duplicate", Record(url.replace("https://", "https://copy.") + "?ref=feed",
                                     body=_page(title, changed, rng)))
    for j in range(max(2, pages // 50)):
        add("not_html", Record(f"https://docs.example.org/img/{j}.png", content_type="image/png",
                               body=b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(64))))
        add("not_html", Record(f"https://docs.example.org/static/{j}.css", content_type="text/css",
                               body=b"body { font-family: sans-serif; }"))
        add("not_200", Record(f"https://docs.example.org/old/{j}.html", status="301 Moved Permanently",
                              body=b"<html><body>Moved</body></html>"))
        add("not_200", Record(f"https://docs.example.org/missing/{j}.html", status="404 Not Found",
                              body=b"<html><body>Not found</body></html>"))
    for domain in _blocklisted_domains(rng, max(2, pages // 50)):
        title, paragraphs = rng.choice(articles)
        add("blocked_url", Record(f"https://{domain}/{title}.html", body=_page(title, paragraphs, rng)))
    title, paragraphs = articles[0]
    add("latin1", Record("https://latin1.example.org/page.html", content_type="text/html; charset=iso-8859-1",
                         body=_page(title + " café", paragraphs, rng).decode().encode("latin-1", "replace")))
    add("broken_http", Record("https://broken.example.org/page.html",
                              raw_http=b"HTPP/1.1 two hundred\r\n\x00\xffgarbage\r\n\r\n<html>x</html>"))
    rng.shuffle(records)
    return records, counts


def _blocklisted_domains(rng: random.Random, n: int) -> list[str]:
    """A few domains from datatrove's bundled UT1 blocklist, read from the archive it ships."""
    import tarfile

    from datatrove.utils._import_utils import ASSETS_PATH

    with tarfile.open(Path(ASSETS_PATH) / "url_filterblacklistsv0_3_0.tar.gz", "r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("domains"))
        domains = [d for d in tar.extractfile(member).read().decode().split() if d and not d.startswith("#")]
    return rng.sample(domains[:5000], n)


def _warc_record(record: Record, index: int) -> bytes:
    """One gzip member holding one WARC response record (written by hand so broken HTTP can be made)."""
    http = record.raw_http
    if http is None:
        http = (f"HTTP/1.1 {record.status}\r\nContent-Type: {record.content_type}\r\n"
                f"Content-Length: {len(record.body)}\r\n\r\n").encode() + record.body
    date = f"2025-01-{1 + index % 28:02d}T{index % 24:02d}:00:00Z"
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:00000000-0000-4000-8000-{index:012d}>\r\n"
            f"WARC-Target-URI: {record.url}\r\nWARC-Date: {date}\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
    return gzip.compress(head + http + b"\r\n\r\n", mtime=0)


def write_crawl(output: str | Path, pages: int = 300, seed: int = 0) -> CrawlSummary:
    """Write the synthetic crawl as one .warc.gz and return how many records of each kind it holds."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    records, counts = build_records(pages, seed)
    buffer = io.BytesIO()
    for index, record in enumerate(records):
        buffer.write(_warc_record(record, index))
    tmp = output.with_suffix(".partial")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(output)  # a killed run never leaves a half-written crawl behind
    return CrawlSummary(str(output), counts)


