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
BLOCK, ZEROS = 512, bytes(512)
REGULAR = (b"0", b"\0", b"7")  # tar type flags of regular files
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


class _Member:
    """The data of one tar entry: ``size`` bytes of the stream, then the padding to 512 is skipped."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self.stream, self.left, self.padding = stream, size, -size % BLOCK

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(self.left if n is None or n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def skip(self) -> None:
        while self.left > 0 and self.read(CHUNK):
            pass
        self.stream.read(self.padding)


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax(data: bytes) -> dict[str, str]:
    """Records ``"<length> <key>=<value>\\n"`` of a pax extended header."""
    records, pos = {}, 0
    while pos < len(data):
        length = int(data[pos : data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records


def tar_entries(stream: IO[bytes]) -> Iterator[tuple[str, bytes, _Member]]:
    """(name, type flag, data) of each entry of an uncompressed tar stream (ustar, GNU and pax names).

    A lean reader of the stream: the standard library's TarFile costs several times as much per
    member, which shows on archives of tens of thousands of small files such as the kernel's.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    while (header := stream.read(BLOCK)) and header != ZEROS:
        if len(header) < BLOCK or sum(header[:148]) + sum(header[156:]) + 256 != _number(header[148:156]):
            raise tarfile.ReadError("not a tar archive, or a truncated one (a header does not check out)")
        kind, size = header[156:157], _number(header[124:136])
        data = _Member(stream, int(pax.get("size", size)) if kind not in (b"x", b"g") else size)
        if kind in (b"L", b"x", b"g"):
            body = data.read(size)
            data.skip()
            if kind == b"L":
                long_name = body.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind == b"x":
                pax = _pax(body)
            continue
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        name = (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")
        yield pax.get("path") or long_name or name, kind, data
        data.skip()
        long_name, pax = None, {}


def tar_members(
    f: IO[bytes], include: Iterable[str], exclude: Iterable[str] = (), strip_top: bool = False
) -> Iterator[tuple[str, IO[bytes]]]:
    """The regular files of a (compressed) tarball whose names match, in archive order, streamed.

    With ``strip_top`` a name is taken below the archive's top folder (``linux-6.1/kernel/fork.c`` is
    matched as ``kernel/fork.c``). Each file object is valid until the next member is asked for.
    """
    include, exclude = tuple(include), tuple(exclude)
    for name, kind, data in tar_entries(decompressed(f)):
        if kind not in REGULAR:
            continue
        name = name.split("/", 1)[1] if strip_top and "/" in name else name
        if matches(name, include, exclude):
            yield name, data
