"""LaTeX: the ``.tex`` files (gzip'd ones too) of a folder, a glob or a tarball, one document per file.

The default source is the TeX Live science documentation as Debian's ``texlive-science-doc`` installs
it (the files its package list names). ``url`` takes any folder, glob or tarball, local or remote:
the Stacks project's source tarball, say, as "The Unreasonable Effectiveness of Recurrent Neural
Networks" used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rnnfarm.corpus import Corpus, CorpusOptions, Document, Fetched, Source, hookimpl
from rnnfarm.corpus.archives import decompressed, is_tarball, matches, pieces, tar_members

DEBIAN_PACKAGE = "texlive-science-doc"
DEBIAN_LIST = Path(f"/var/lib/dpkg/info/{DEBIAN_PACKAGE}.list")
DEBIAN_ROOT = "/usr/share/doc/texlive-doc"
HINT = f"on Debian or Ubuntu: apt-get install {DEBIAN_PACKAGE}; or give -o url=FOLDER|GLOB|TARBALL"


class Options(CorpusOptions):
    url: str | None = None  # a folder, glob or tarball of .tex files; default: Debian's texlive-science-doc
    sha256: str | None = None
    include: list[str] = ["*.tex", "*.tex.gz"]


def debian_source(include: list[str]) -> Source:
    """The files of the Debian package that match, read where dpkg installed them."""
    if not DEBIAN_LIST.exists():
        return Source(str(DEBIAN_LIST), hint=HINT)
    prefix = DEBIAN_ROOT + "/"
    names = tuple(
        line[len(prefix) :]
        for line in DEBIAN_LIST.read_text().splitlines()
        if line.startswith(prefix) and matches(line, include)
    )
    return Source(DEBIAN_ROOT, include=names, hint=HINT)


class Latex(Corpus):
    name = "latex"
    version = "1"
    description = "LaTeX sources (.tex and .tex.gz) from a folder, glob or tarball; default: TeX Live science docs"
    Options = Options
    separator = "\n"

    def sources(self, options: Options) -> list[Source]:
        if options.url is None:
            return [debian_source(options.include)]
        if is_tarball(options.url):
            return [Source(options.url, options.sha256)]
        return [Source(options.url, options.sha256, include=tuple(options.include))]

    def documents(self, fetched: Fetched, options: Options) -> Iterator[Document]:
        if fetched.single and is_tarball(fetched.file.name):
            with fetched.open() as f:
                for name, member in tar_members(f, options.include):
                    for piece in pieces(decompressed(member)):
                        yield Document(name, piece)
            return
        for file in fetched.files:
            with fetched.open(file) as f:
                for piece in pieces(decompressed(f)):
                    yield Document(file.name, piece)


@hookimpl
def register_corpora(register) -> None:
    register(Latex())
