"""Linux: the C sources and headers of a kernel source tarball, streamed, one document per file.

Files are chosen by ``include`` and ``exclude`` patterns on their path below the tarball's top
folder (fnmatch: ``*`` matches across ``/``, so ``kernel/*.c`` is every .c file under kernel/).
The default takes ``*.c`` and ``*.h`` under a set of core folders (about 110 MB); ``include:
["*.c", "*.h"]`` is the whole tree (1.2 GB). ``max_bytes`` stops after that much source, in whole
files: Karpathy et al. (2015) trained on 6.2 M characters of kernel source.

Sources, in order: Debian's ``linux-source`` tarballs under /usr/src (the newest first), then the
kernel.org tarball of the 6.1 long-term release; ``url`` takes any tarball.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator
from typing import Annotated

from pydantic import Field

from rnnfarm.corpus import Corpus, CorpusOptions, Document, Fetched, Source, hookimpl
from rnnfarm.corpus.archives import pieces, tar_members

DEBIAN_GLOB = "/usr/src/linux-source-*.tar.xz"
DEBIAN_HINT = "on Debian or Ubuntu: apt-get install linux-source"
KERNEL_ORG = "https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.1.tar.xz"
CORE = ("block", "crypto", "fs", "include", "init", "ipc", "kernel", "lib", "mm", "security")


class Options(CorpusOptions):
    url: str | None = None  # a kernel source tarball (any compression); default: Debian's, then kernel.org
    sha256: str | None = None
    include: list[str] = [f"{folder}/*.[ch]" for folder in CORE]
    exclude: list[str] = []
    max_bytes: Annotated[int, Field(gt=0)] | None = None


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def debian_sources() -> list[Source]:
    found = sorted(glob.glob(DEBIAN_GLOB), key=_version, reverse=True)
    return [Source(path) for path in found] or [Source(DEBIAN_GLOB, hint=DEBIAN_HINT)]


class Linux(Corpus):
    name = "linux"
    version = "1"
    description = "Linux kernel C sources and headers from a source tarball (include/exclude globs)"
    Options = Options
    separator = "\n"

    def sources(self, options: Options) -> list[Source]:
        if options.url:
            return [Source(options.url, options.sha256)]
        return [*debian_sources(), Source(KERNEL_ORG)]

    def documents(self, fetched: Fetched, options: Options) -> Iterator[Document]:
        read = 0
        with fetched.open() as f:
            for name, member in tar_members(f, options.include, options.exclude, strip_top=True):
                for piece in pieces(member):
                    read += len(piece)
                    yield Document(name, piece)
                if options.max_bytes is not None and read >= options.max_bytes:
                    return


@hookimpl
def register_corpora(register) -> None:
    register(Linux())
