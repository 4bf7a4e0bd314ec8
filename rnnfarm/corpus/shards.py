"""Arrow IPC shards (zstd, bounded size) and the manifest that is written last and trusted alone.

A split's text is the concatenation of its rows, in shard order then row order. Its tokens are the
text's characters (character level) or UTF-8 bytes (byte level); the manifest gives the token count
of every split, shard and record batch, so a reader can find tokens ``[start, stop)`` and decode
only the record batches that hold them. Readers verify each shard's sha256 against the manifest and
name the shard that does not match; shards of a remote corpus are cached locally by sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import UserError
from ..storage import Store, is_local, sha256_file
from .normalize import Tally
from .sources import cache_dir
from .vocab import Vocab

MANIFEST = "manifest.json"
FORMAT = 3  # 3: document splits held to their character shares, each split's share recorded
SCHEMA = pa.schema([("doc", pa.string()), ("text", pa.large_string())])
ROW_CHARS = 1 << 20  # a longer document is stored as several consecutive rows
BATCH_CHARS = 4 << 20  # text per Arrow record batch
SHARD_CHARS = 64 << 20  # text per shard file
COMPRESSION = pa.Codec("zstd", compression_level=1)
IN_FLIGHT = 2  # record batches a split writer may have queued for its writing thread


class _Hashing:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size, self.closed = f, hashlib.sha256(), 0, False

    def write(self, data) -> int:
        data = bytes(data)
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.closed = True


def _utf8(column: pa.Array) -> np.ndarray:
    """The UTF-8 bytes of a whole large_string column, without copying."""
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64, count=len(column) + 1, offset=8 * column.offset)
    data = column.buffers()[2]
    if data is None:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]]


class SplitWriter:
    """Writes one split's text as numbered shards in a corpus folder, counting its symbols.

    Record batches are built here; compressing, hashing and writing them happens in a thread of
    this writer's own (Arrow releases the GIL while it compresses), a few batches behind.
    """

    def __init__(self, folder: Store, split: str, tally: Tally, level: str) -> None:
        self.folder, self.split, self.tally, self.level = folder, split, tally, level
        self.shards: list[dict[str, Any]] = []
        self._rows: list[tuple[str, str]] = []
        self._row_chars = 0
        self._shard: dict[str, Any] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rnnfarm-{split}-writer")
        self._pending: list[Future] = []
        # Touched by the writing thread only:
        self._stack: contextlib.ExitStack | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: _Hashing | None = None

    def add(self, doc_id: str, text: str) -> None:
        for start in range(0, len(text), ROW_CHARS):
            piece = text[start : start + ROW_CHARS]
            self._rows.append((doc_id, piece))
            self._row_chars += len(piece)
            if self._row_chars >= BATCH_CHARS:
                self._flush_batch()

    def close(self) -> list[dict[str, Any]]:
        self._flush_batch()
        self._close_shard()
        for future in self._pending:
            future.result()
        self._pool.shutdown()
        return self.shards

    def abort(self) -> None:
        """Remove what this writer wrote (a failed build leaves no shards of its own behind)."""
        for future in self._pending:
            with contextlib.suppress(Exception):
                future.result()
        self._pool.shutdown()
        if self._stack is not None:
            with contextlib.suppress(Exception):
                self._stack.__exit__(RuntimeError, RuntimeError("build aborted"), None)
        for shard in self.shards:
            with contextlib.suppress(FileNotFoundError):
                target = self.folder / shard["path"]
                target.fs.rm(target.path)

    def _submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > IN_FLIGHT:
            self._pending.pop(0).result()

    def _flush_batch(self) -> None:
        if not self._rows:
            return
        opening = self._shard is None
        if opening:
            name = f"{self.split}-{len(self.shards):05d}.arrow"
            self._shard = {"path": name, "chars": 0, "bytes": 0, "tokens": 0, "rows": 0, "batches": []}
        docs, texts = zip(*self._rows, strict=True)
        column = pa.array(texts, pa.large_string())
        utf8 = _utf8(column)
        self.tally.add(utf8)
        tokens = self._row_chars if self.level == "char" else len(utf8)
        batch = pa.record_batch([pa.array(docs, pa.string()), column], SCHEMA)
        self._submit(self._write, batch, self._shard["path"] if opening else None)
        self._shard["chars"] += self._row_chars
        self._shard["bytes"] += len(utf8)
        self._shard["tokens"] += tokens
        self._shard["rows"] += len(texts)
        self._shard["batches"].append(tokens)
        self._rows, self._row_chars = [], 0
        if self._shard["chars"] >= SHARD_CHARS:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._shard is None:
            return
        self.shards.append(self._shard)
        self._submit(self._finish, self._shard)
        self._shard = None

    def _write(self, batch: pa.RecordBatch, open_as: str | None) -> None:
        if open_as is not None:
            self._stack = contextlib.ExitStack()
            raw = self._stack.enter_context((self.folder / open_as).open_atomic())
            self._sink = _Hashing(raw)
            options = pa.ipc.IpcWriteOptions(compression=COMPRESSION)
            self._writer = pa.ipc.new_file(pa.PythonFile(self._sink, mode="w"), SCHEMA, options=options)
        self._writer.write_batch(batch)

    def _finish(self, shard: dict[str, Any]) -> None:
        self._writer.close()
        self._stack.close()
        shard.update(size=self._sink.size, sha256=self._sink.sha.hexdigest())
        self._writer = self._sink = self._stack = None


def load_manifest(folder: Store) -> dict[str, Any]:
    """The manifest of a built corpus folder; a folder without one is not a corpus."""
    target = folder / MANIFEST
    try:
        manifest = json.loads(target.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{folder.url}: no {MANIFEST} here, so no built corpus (build it with rnnfarm)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{target.url}: not a valid manifest ({exc.msg})") from None
    if manifest.get("format", 0) > FORMAT:
        raise UserError(
            f"{target.url}: manifest format {manifest.get('format')} is newer than this rnnfarm reads ({FORMAT}); "
            "upgrade rnnfarm"
        )
    if manifest.get("format", 0) < FORMAT:
        raise UserError(
            f"{target.url}: manifest format {manifest.get('format')} was written by an older rnnfarm; "
            "build the corpus again (it gets a new folder)"
        )
    return manifest


def _corrupt(folder: Store, shard: dict[str, Any]) -> UserError:
    return UserError(
        f"shard {folder.url}/{shard['path']} is corrupt (sha256 differs from the manifest): "
        "delete the corpus folder and build it again"
    )


def local_shard(folder: Store, shard: dict[str, Any]) -> Path:
    """A verified local file holding a shard: the shard itself when the corpus is local, else a copy
    cached under ``<cache>/shards/<sha256>.arrow`` (downloaded once, checked on every use)."""
    if is_local(folder.url):
        path = Path(folder.url) / shard["path"]
        if not path.exists():
            raise UserError(
                f"shard {folder.url}/{shard['path']} is missing: delete the corpus folder and build it again"
            )
        if sha256_file(path) != shard["sha256"]:
            raise _corrupt(folder, shard)
        return path
    cached = cache_dir() / "shards" / f"{shard['sha256']}.arrow"
    if cached.exists() and sha256_file(cached) == shard["sha256"]:
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, prefix=".download-", delete=False) as tmp:
        try:
            (folder / shard["path"]).download(tmp.name)
            if sha256_file(Path(tmp.name)) != shard["sha256"]:
                raise _corrupt(folder, shard)
            os.replace(tmp.name, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp.name)
    return cached


def verify_local(folder: Store, manifest: dict[str, Any]) -> None:
    """Check every shard of a corpus on a local disk against the manifest's sha256 (a remote corpus's shards
    are checked as they are downloaded); a missing or corrupt shard is named in a one-line error."""
    if is_local(folder.url):
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                local_shard(folder, shard)


@contextlib.contextmanager
def _open(folder: Store, shard: dict[str, Any]) -> Iterator[pa.ipc.RecordBatchFileReader]:
    with pa.memory_map(str(local_shard(folder, shard))) as source:
        yield pa.ipc.open_file(source)


def _split(folder: Store, manifest: dict[str, Any], split: str) -> dict[str, Any]:
    if split not in manifest["splits"]:
        raise UserError(f"corpus {folder.url} has no {split!r} split (it has: {', '.join(manifest['splits'])})")
    return manifest["splits"][split]


def read_tokens(folder: Store, manifest: dict[str, Any], split: str, start: int, stop: int, vocab: Vocab) -> np.ndarray:
    """Token ids of tokens ``[start, stop)`` of a split, decoding only the record batches that hold them."""
    info = _split(folder, manifest, split)
    if vocab.level != manifest["vocab"].get("level", "char"):
        raise ValueError(f"a {vocab.level}-level vocabulary cannot read a {manifest['vocab']['level']}-level corpus")
    if not 0 <= start <= stop <= info["tokens"]:
        raise ValueError(f"tokens [{start}, {stop}) are outside the {split} split's {info['tokens']}")
    out = np.empty(stop - start, dtype=vocab.dtype)
    filled, offset = 0, 0
    for shard in info["shards"]:
        if offset >= stop:
            break
        if offset + shard["tokens"] > start:
            with _open(folder, shard) as reader:
                for i, count in enumerate(shard["batches"]):
                    a, b = max(start - offset, 0), min(stop - offset, count)
                    if a < b:
                        utf8 = _utf8(reader.get_batch(i).column("text"))
                        if vocab.level == "byte":
                            ids = vocab.ids(utf8[a:b])
                        else:
                            ids = vocab.encode(utf8.tobytes().decode("utf-8")[a:b])
                        out[filled : filled + len(ids)] = ids
                        filled += len(ids)
                    offset += count
        else:
            offset += shard["tokens"]
    return out


def iter_tokens(folder: Store, manifest: dict[str, Any], split: str, vocab: Vocab) -> Iterator[np.ndarray]:
    """Token ids of a whole split, one record batch at a time (each shard verified once): a stream
    whose memory is one batch's, whatever the split's size."""
    info = _split(folder, manifest, split)
    if vocab.level != manifest["vocab"].get("level", "char"):
        raise ValueError(f"a {vocab.level}-level vocabulary cannot read a {manifest['vocab']['level']}-level corpus")
    for shard in info["shards"]:
        with _open(folder, shard) as reader:
            for i in range(reader.num_record_batches):
                utf8 = _utf8(reader.get_batch(i).column("text"))
                yield vocab.ids(utf8) if vocab.level == "byte" else vocab.encode(utf8.tobytes().decode("utf-8"))


def iter_utf8(folder: Store, manifest: dict[str, Any], split: str) -> Iterator[np.ndarray]:
    """The UTF-8 bytes of a whole split, one record batch at a time (each shard verified once)."""
    for shard in _split(folder, manifest, split)["shards"]:
        with _open(folder, shard) as reader:
            for i in range(reader.num_record_batches):
                yield _utf8(reader.get_batch(i).column("text"))


def read_split(folder: Store, manifest: dict[str, Any], split: str) -> str:
    """A whole split as one string (for small corpora, inspection and tests)."""
    texts = []
    for shard in _split(folder, manifest, split)["shards"]:
        with _open(folder, shard) as reader:
            texts.extend(reader.read_all().column("text").to_pylist())
    return "".join(texts)
