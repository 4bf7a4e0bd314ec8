"""Wikipedia: a MediaWiki XML dump (bz2, gzip, xz or plain), streamed page by page.

``raw`` is the XML as it is, one stream split by position, as enwik8 (the Hutter prize's first 10^8
bytes of an English dump) is used. ``text`` is each article's wikitext without the XML envelope,
one document per page (redirects dropped), split by page title. The default source is the dump
sample that gensim ships in its wheel; ``url`` takes any dump.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Literal

from rnnfarm.corpus import Corpus, CorpusOptions, Document, Fetched, Source, hookimpl
from rnnfarm.corpus.archives import decompressed, pieces

SAMPLE = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SAMPLE_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
SAMPLE_SOURCES = [Source(f"pypi://gensim==4.4.0/{SAMPLE}", SAMPLE_SHA256)]


class Options(CorpusOptions):
    variant: Literal["raw", "text"] = "raw"
    url: str | None = None  # any MediaWiki XML dump, e.g. enwik8 or a *-pages-articles*.xml.bz2
    sha256: str | None = None
    namespaces: list[int] = [0]  # text: the namespaces kept (0: articles)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def pages(f) -> Iterator[tuple[str, int, bool, str]]:
    """(title, namespace, is a redirect, wikitext) of each page, keeping one page in memory at a time."""
    root = None
    for event, element in ET.iterparse(f, events=("start", "end")):
        if root is None:
            root = element
        if event != "end" or _local(element.tag) != "page":
            continue
        fields = {_local(child.tag): child for child in element.iter()}
        text = fields["text"].text if "text" in fields else None
        yield (
            fields["title"].text or "",
            int(fields["ns"].text or 0) if "ns" in fields else 0,
            "redirect" in fields,
            text or "",
        )
        root.clear()  # the pages read so far


class Wikipedia(Corpus):
    name = "wikipedia"
    version = "1"
    description = "Wikipedia from a MediaWiki XML dump: the raw XML (as enwik8) or each article's wikitext"
    Options = Options
    separator = "\n\n"

    def sources(self, options: Options) -> list[Source]:
        return [Source(options.url, options.sha256)] if options.url else SAMPLE_SOURCES

    def splitting(self, options: Options, fetched: Fetched) -> str:
        return "position" if options.variant == "raw" else "document"

    def documents(self, fetched: Fetched, options: Options) -> Iterator[Document]:
        with fetched.open() as f:
            stream = decompressed(f)
            if options.variant == "raw":
                for piece in pieces(stream):
                    yield Document("dump", piece)
                return
            for title, namespace, redirect, text in pages(stream):
                if not redirect and namespace in options.namespaces and text.strip():
                    yield Document(title, text)


@hookimpl
def register_corpora(register) -> None:
    register(Wikipedia())
