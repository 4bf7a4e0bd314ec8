"""Arrow IPC shards (zstd, bounded size) and the manifest that is written last and trusted alone.

A split's text is the concatenation of its rows, in shard order then row order. Readers verify each
shard's sha256 against the manifest and name the shard that does not match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ..errors import UserError
from ..storage import Store

MANIFEST = "manifest.json"
FORMAT = 1
SCHEMA = pa.schema([("doc", pa.string()), ("text", pa.large_string())])
ROW_CHARS = 1 << 20  # a longer document is stored as several consecutive rows
BATCH_CHARS = 4 << 20  # text per Arrow record batch
SHARD_CHARS = 64 << 20  # text per shard file


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


class SplitWriter:
    """Writes one split's documents as numbered shards in a corpus folder."""

    def __init__(self, folder: Store, split: str, shard_chars: int = SHARD_CHARS) -> None:
        self.folder, self.split, self.shard_chars = folder, split, shard_chars
        self.shards: list[dict[str, Any]] = []
        self._rows: list[tuple[str, str]] = []
        self._row_chars = 0
        self._stack: contextlib.ExitStack | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: _Hashing | None = None
        self._shard = {"chars": 0, "bytes": 0, "rows": 0}

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
        return self.shards

    def _flush_batch(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._open_shard()
        docs, texts = zip(*self._rows, strict=True)
        self._writer.write_batch(pa.record_batch([pa.array(docs), pa.array(texts, pa.large_string())], SCHEMA))
        self._shard["chars"] += self._row_chars
        self._shard["bytes"] += sum(len(t.encode("utf-8")) for t in texts)
        self._shard["rows"] += len(texts)
        self._rows, self._row_chars = [], 0
        if self._shard["chars"] >= self.shard_chars:
            self._close_shard()

    def _open_shard(self) -> None:
        self._stack = contextlib.ExitStack()
        name = f"{self.split}-{len(self.shards):05d}.arrow"
        raw = self._stack.enter_context((self.folder / name).open_atomic())
        self._sink = _Hashing(raw)
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        self._writer = pa.ipc.new_file(pa.PythonFile(self._sink, mode="w"), SCHEMA, options=options)
        self._shard = {"path": name, "chars": 0, "bytes": 0, "rows": 0}

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._stack.close()
        self.shards.append({**self._shard, "size": self._sink.size, "sha256": self._sink.sha.hexdigest()})
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
    return manifest


def read_shard(folder: Store, shard: dict[str, Any]) -> Iterator[str]:
    """The text rows of one shard, after checking its sha256."""
    data = (folder / shard["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise UserError(
            f"shard {folder.url}/{shard['path']} is corrupt (sha256 differs from the manifest): "
            "delete the corpus folder and build it again"
        )
    table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    yield from table.column("text").to_pylist()


def read_split(folder: Store, manifest: dict[str, Any], split: str) -> str:
    """A whole split as one string."""
    if split not in manifest["splits"]:
        raise UserError(f"corpus {folder.url} has no {split!r} split (it has: {', '.join(manifest['splits'])})")
    return "".join(t for shard in manifest["splits"][split]["shards"] for t in read_shard(folder, shard))
