"""Reading helpers for plugins: transparent decompression, streamed tarballs, pieces of bounded size."""

from __future__ import annotations

import bz2
import fnmatch
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO

PIECE = 1 << 20  # bytes per piece when a file is streamed
CHUNK = 1 << 20  # compressed bytes fed to a decompressor at once, and the most it gives back at once
MAGIC: dict[bytes, Callable] = {
    b"\x1f\x8b": lambda: zlib.decompressobj(wbits=31),
    b"BZh": bz2.BZ2Decompressor,
    b"\xfd7zXZ\x00": lzma.LZMADecompressor,
}


class _Decompressing(io.RawIOBase):
    """A decompressed stream fed in large chunks (the standard library's file classes feed 8 KB at a
    time, which halves xz throughput), with bounded output per step. Concatenated streams
    (multi-member gzip, bzip2, xz) continue; padding after the last one is ignored."""

    def __init__(self, f: IO[bytes], head: bytes, make: Callable) -> None:
        self.f, self.pending, self.make = f, head, make
        self.engine, self.out, self.pos, self.eof = make(), b"", 0, False

    def readable(self) -> bool:
        return True

    def _needs_input(self) -> bool:
        return getattr(self.engine, "needs_input", True)  # zlib leaves what it has not used in pending

    def _step(self) -> bytes:
        if self.engine.eof:
            self.pending = self.engine.unused_data + self.pending or self.f.read(CHUNK)
            if not self.pending:
                self.eof = True
                return b""
            self.engine = self.make()
            try:
                return self._feed()
            except (OSError, EOFError, lzma.LZMAError, zlib.error):
                self.eof = True  # not another stream: padding or trailing bytes
                return b""
        if not self.pending and self._needs_input():
            self.pending = self.f.read(CHUNK)
            if not self.pending:  # a truncated stream: what the engine still holds, then the end
                self.eof = True
                return self.engine.flush() if hasattr(self.engine, "flush") else b""
        return self._feed()

    def _feed(self) -> bytes:
        data, self.pending = self.pending, b""
        out = self.engine.decompress(data, CHUNK)
        if not self.engine.eof:  # at the end of a stream what is left is in unused_data
            self.pending = getattr(self.engine, "unconsumed_tail", b"")
        return out

    def readinto(self, buffer) -> int:
        while self.pos == len(self.out) and not self.eof:
            self.out, self.pos = self._step(), 0
        n = min(len(buffer), len(self.out) - self.pos)
        buffer[:n] = memoryview(self.out)[self.pos : self.pos + n]
        self.pos += n
        return n


class _Plain(io.RawIOBase):
    """The stream itself, with the bytes read to sniff its format given back first."""

    def __init__(self, f: IO[bytes], head: bytes) -> None:
        self.f, self.head = f, head

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.head or self.f.read(len(buffer))
        n = min(len(buffer), len(data))
        buffer[:n], self.head = data[:n], data[n:]
        return n


def decompressed(f: IO[bytes]) -> IO[bytes]:
    """The stream itself, or its decompressed content when it starts with a gzip, bzip2 or xz header."""
    head = f.read(6)
    for magic, make in MAGIC.items():
        if head.startswith(magic):
            return io.BufferedReader(_Decompressing(f, head, make), CHUNK)
    return io.BufferedReader(_Plain(f, head), CHUNK)


def pieces(f: IO[bytes], size: int = PIECE) -> Iterator[bytes]:
    """The stream's bytes in pieces of ``size``."""
    while block := f.read(size):
        yield block


def matches(name: str, include: Iterable[str], exclude: Iterable[str] = ()) -> bool:
    """fnmatch on a path (``*`` matches across ``/``): one include pattern matches and no exclude does."""
    return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(fnmatch.fnmatchcase(name, p) for p in exclude)


def is_tarball(name: str) -> bool:
    return name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2"))


def tar_members(
    f: IO[bytes], include: Iterable[str], exclude: Iterable[str] = (), strip_top: bool = False
) -> Iterator[tuple[str, IO[bytes]]]:
    """The regular files of a (compressed) tarball whose names match, in archive order, streamed.

    With ``strip_top`` a name is taken below the archive's top folder (``linux-6.1/kernel/fork.c`` is
    matched as ``kernel/fork.c``). Each file object is valid until the next member is asked for.
    """
    include, exclude = tuple(include), tuple(exclude)
    with tarfile.open(fileobj=decompressed(f), mode="r|", bufsize=1 << 16) as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # a TarFile keeps every header it has read: memory would grow with the archive
            if not member.isfile():
                continue
            name = member.name.split("/", 1)[1] if strip_top and "/" in member.name else member.name
            if matches(name, include, exclude):
                yield name, tar.extractfile(member)
