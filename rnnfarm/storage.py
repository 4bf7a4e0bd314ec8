"""Storage on any fsspec URL: a Store names a folder or object; writes are atomic.

Readers never see half an object: a local write goes to a temporary name in the same folder and is
renamed into place; an object-store write is one PUT (or one completed multipart upload) of a file
that was finished locally first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import fsspec
import pyarrow.fs

from .errors import UserError


def normalize_url(url: str) -> str:
    """Local paths (and file:// URLs) become absolute paths; other URLs are kept as they are."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url or "::" in url:
        return url.rstrip("/")
    return str(Path(url).expanduser().resolve())


def is_local(url: str) -> bool:
    return "://" not in url and "::" not in url


@dataclass(frozen=True)
class Store:
    """A location on storage (folder or object), with the options its filesystem needs."""

    url: str
    options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def at(cls, url: str, options: dict[str, Any] | None = None) -> Store:
        return cls(normalize_url(url), dict(options or {}))

    def __truediv__(self, part: str) -> Store:
        return Store(posixpath.join(self.url, part), self.options)

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)

    @property
    def parent(self) -> Store:
        return Store(posixpath.dirname(self.url), self.options)

    @cached_property
    def _fs_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        try:
            return fsspec.core.url_to_fs(self.url, **self.options)
        except (ImportError, ValueError) as exc:
            raise UserError(f"storage {self.url}: {exc}") from None

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_path[0]

    @property
    def path(self) -> str:
        return self._fs_path[1]

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def open(self, mode: str = "rb") -> IO:
        return self.fs.open(self.path, mode)

    def list(self) -> list[Store]:
        """Direct children, sorted by name; empty when the folder does not exist."""
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        return [self / posixpath.basename(e.rstrip("/")) for e in sorted(entries)]

    def write_bytes(self, data: bytes) -> None:
        with self.open_atomic() as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, obj: Any) -> None:
        self.write_bytes((json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    @contextlib.contextmanager
    def open_atomic(self) -> Iterator[IO[bytes]]:
        """A file to write; it appears at this location, whole, only when the block exits cleanly."""
        if is_local(self.url):
            folder = os.path.dirname(self.url)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{self.name}.tmp-{uuid.uuid4().hex[:12]}")
            try:
                with open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.url)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        else:
            with tempfile.NamedTemporaryFile(prefix="rnnfarm-upload-") as f:
                yield f
                f.flush()
                self.fs.put_file(f.name, self.path)

    def upload(self, local: str | Path) -> None:
        """Copy a local file or folder here; each file lands whole."""
        local = Path(local)
        if local.is_dir():
            for item in sorted(local.rglob("*")):
                if item.is_file():
                    (self / item.relative_to(local).as_posix()).upload(item)
            return
        with self.open_atomic() as out, open(local, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)

    def download(self, local: str | Path) -> None:
        """Copy this file or folder to a local path."""
        local = Path(local)
        if self.fs.isdir(self.path):
            for child in self.list():
                child.download(local / child.name)
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self.path, str(local))

    def pyarrow(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """The same location as a pyarrow filesystem and path (what Ray Train persists through)."""
        if is_local(self.url):
            return pyarrow.fs.LocalFileSystem(), self.url
        handler = pyarrow.fs.FSSpecHandler(self.fs)
        return pyarrow.fs.PyFileSystem(handler), self.path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
