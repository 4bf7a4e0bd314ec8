"""Files: any text you have, as an fsspec URL, glob or folder (local, S3, HTTP, inside archives...).

The generic "give it a large chunk of text" corpus. One file is one stream, split by position (the
last fraction is validation); several files are documents, split by their path's hash
(``split`` chooses otherwise). Compressed files (gzip, bzip2, xz) are decompressed as they are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from rnnfarm.corpus import Corpus, CorpusOptions, Document, Fetched, Source, hookimpl
from rnnfarm.corpus.archives import decompressed, pieces


class Options(CorpusOptions):
    url: str  # a file, glob or folder: /data/*.txt, s3://bucket/texts/, zip://*.txt::https://host/a.zip
    sha256: str | None = None  # pins the content (see `rnnfarm corpus show` for the value to pin)
    include: list[str] = []  # for a glob or folder: keep the files whose path below it matches one
    split: Literal["auto", "position", "document"] = "auto"  # auto: position for one file, else document
    storage_options: dict[str, Any] = {}


class Files(Corpus):
    name = "files"
    version = "1"
    description = "Any text files: an fsspec URL, glob or folder of them"
    Options = Options
    separator = "\n\n"

    def sources(self, options: Options) -> list[Source]:
        return [Source(options.url, options.sha256, tuple(options.include), options.storage_options)]

    def splitting(self, options: Options, fetched: Fetched) -> str:
        if options.split != "auto":
            return options.split
        return "position" if fetched.single else "document"

    def documents(self, fetched: Fetched, options: Options) -> Iterator[Document]:
        for file in fetched.files:
            with fetched.open(file) as f:
                for piece in pieces(decompressed(f)):
                    yield Document(file.name, piece)


@hookimpl
def register_corpora(register) -> None:
    register(Files())
