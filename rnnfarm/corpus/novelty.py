"""The novelty meter: how much of a sample is copied from the train split, through a suffix array of the split.

For a sample it gives the longest span found verbatim in the train split (its length in characters, where it
is in the sample and in the split) and the share of the sample's ``NGRAM``-character n-grams that occur in the
split. Both come from the matching statistics of the sample (for each position, the longest prefix of the
rest that occurs in the split), each found by binary search in the suffix array (pydivsufsort's sa_search).

The index is built once per corpus fingerprint and kept beside the corpus, in ``<corpus>/novelty/``: the train
split's UTF-8 bytes, their suffix array (int32 below 2 GiB, int64 above), and the character count at every
``BLOCK`` bytes, with ``index.json`` written last. Readers memory-map the files, so a query costs a few pages,
whatever the corpus size; a remote corpus's index is downloaded once into the local cache. Building needs the
text plus its suffix array in memory (5 bytes a byte below 2 GiB). A split above ``max_bytes`` is indexed only
up to that many bytes: the meter then counts only copies from that prefix (a lower bound on copying), the index
says so, and ``--novel``, which must never let a train record through, refuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydivsufsort import divsufsort, sa_search

from ..errors import UserError
from ..storage import Store, is_local, sha256_file
from . import shards
from .sources import cache_dir

NGRAM = 8  # characters: about a word and a half of English, long enough that sharing one is rarely chance
BLOCK = 1 << 16  # bytes between two character counts (byte offset -> character offset)
MAX_BYTES = (1 << 31) - 1  # the largest split indexed whole by default (an int32 suffix array)
MAX_BYTES_ENV = "RNNFARM_NOVELTY_MAX_BYTES"  # sets another limit
FOLDER, INDEX = "novelty", "index.json"
TEXT, SUFFIXES, MARKS = "train.utf8.npy", "train.sa.npy", "train.marks.npy"
CHUNK = 1 << 26  # bytes counted at once while marking


@dataclass(frozen=True)
class Meter:
    """How much of one sample is copied from the train split."""

    chars: int  # the sample's length
    longest: int  # the longest span of the sample found in the train split, in characters
    at: int  # where that span starts in the sample
    train_at: int | None  # where one copy of it starts in the train split (a character offset), None if 0
    copied: str  # the span itself
    ngram: int  # n of the n-grams
    ngram_share: float | None  # the share of the sample's n-grams found in the train split (None: shorter than n)
    partial: bool  # the index holds only a prefix of the split (a lower bound on copying)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def line(self) -> str:
        """The meter in one line, as `rnnfarm sample --novelty` prints it."""
        share = "n/a (shorter than n)" if self.ngram_share is None else f"{self.ngram_share:.1%}"
        where = f" at char {self.at}, train char {self.train_at}" if self.longest else ""
        bound = " (index of a prefix of the split: at least)" if self.partial else ""
        return f"novelty: longest copied span {self.longest} chars{where}; {self.ngram}-grams in train {share}{bound}"


def _utf8(text: str) -> np.ndarray:
    return np.frombuffer(bytearray(text.encode("utf-8")), dtype=np.uint8)


class Index:
    """A suffix array of a corpus's train split, memory-mapped."""

    def __init__(self, folder: Path) -> None:
        self.info = json.loads((folder / INDEX).read_text())
        # copy-on-write maps: sa_search wants writable buffers; nothing is ever written to them
        empty = not self.info["bytes"]  # an empty file cannot be mapped
        self.text = np.zeros(0, np.uint8) if empty else np.load(folder / TEXT, mmap_mode="c")
        self.suffixes = np.zeros(0, np.int32) if empty else np.load(folder / SUFFIXES, mmap_mode="c")
        self.marks = np.load(folder / MARKS)
        self.partial = bool(self.info["partial"])

    def _search(self, pattern: str) -> tuple[int, int | None]:
        if not self.info["bytes"]:
            return 0, None
        return sa_search(self.text, self.suffixes, _utf8(pattern))

    def occurs(self, pattern: str) -> bool:
        return self._search(pattern)[0] > 0

    def where(self, pattern: str) -> int | None:
        """The character offset in the split of one occurrence of ``pattern`` (None if it has none)."""
        count, left = self._search(pattern)
        if not count:
            return None
        at = int(self.suffixes[left])
        block = at // BLOCK
        head = np.asarray(self.text[block * BLOCK : at])
        return int(self.marks[block]) + int(np.count_nonzero((head & 0xC0) != 0x80))

    def matching(self, sample: str) -> list[int]:
        """For each position of ``sample``, the length of the longest prefix of the rest found in the split.

        Two pointers: if sample[i:j] occurs, so does sample[i+1:j], so j never moves back."""
        out, j = [], 0
        for i in range(len(sample)):
            j = max(j, i)
            while j < len(sample) and self.occurs(sample[i : j + 1]):
                j += 1
            out.append(j - i)
        return out

    def meter(self, sample: str) -> Meter:
        stats = self.matching(sample)
        longest = max(stats, default=0)
        at = stats.index(longest) if longest else 0
        copied = sample[at : at + longest]
        grams = len(sample) - NGRAM + 1
        share = sum(m >= NGRAM for m in stats[:grams]) / grams if grams > 0 else None
        return Meter(
            chars=len(sample),
            longest=longest,
            at=at,
            train_at=self.where(copied) if longest else None,
            copied=copied,
            ngram=NGRAM,
            ngram_share=share,
            partial=self.partial,
        )

    def is_record(self, record: str, stops: tuple[str, ...]) -> bool:
        """Whether ``record`` is a whole record of the split: found there between two stop strings, or
        between the split's start or end and one, and holding none."""
        if self.partial:
            raise UserError(
                f"--novel needs the whole train split indexed, and this corpus's index holds its first "
                f"{self.info['bytes']} bytes of {self.info['split_bytes']}: delete its novelty/ folder and "
                f"build it again with {MAX_BYTES_ENV} set above {self.info['split_bytes']}"
            )
        if any(s in record for s in stops):
            return False
        before = [*stops, None]  # None: the split's start (after) or end (before)
        for left in before:
            for right in before:
                pattern = (left or "") + record + (right or "")
                if left is None or right is None:
                    if self._at_edge(pattern, start=left is None, end=right is None):
                        return True
                elif self.occurs(pattern):
                    return True
        return False

    def _at_edge(self, pattern: str, *, start: bool, end: bool) -> bool:
        data = pattern.encode("utf-8")
        n = int(self.info["bytes"])
        head = bytes(self.text[: len(data)]) if n else b""
        tail = bytes(self.text[n - len(data) :]) if n >= len(data) else b""
        if start and end:
            return n == len(data) and head == data
        return head == data if start else tail == data


def _write_text(corpus: Store, manifest: dict[str, Any], path: Path, max_bytes: int) -> tuple[int, int]:
    """The train split's UTF-8 bytes (at most ``max_bytes``) into ``path``; returns (written, split's bytes)."""
    written, total, full = 0, 0, False
    with open(path, "wb") as out:
        for data in shards.iter_utf8(corpus, manifest, "train"):
            total += len(data)
            if full:
                continue
            keep = len(data) if written + len(data) <= max_bytes else max_bytes - written
            while keep < len(data) and keep and (data[keep] & 0xC0) == 0x80:
                keep -= 1  # a cut never splits a character
            full = keep < len(data)
            out.write(data[:keep].tobytes())
            written += keep
    return written, total


def _marks(text: np.ndarray) -> np.ndarray:
    """The number of characters before every BLOCK-th byte."""
    counts = []
    for start in range(0, len(text), CHUNK):
        piece = text[start : start + CHUNK]
        starts = ((piece & 0xC0) != 0x80).astype(np.int64)
        counts.append(np.add.reduceat(starts, np.arange(0, len(piece), BLOCK)) if len(piece) else starts)
    per_block = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    return np.concatenate([[0], np.cumsum(per_block)]).astype(np.int64)


def max_bytes() -> int:
    return int(os.environ.get(MAX_BYTES_ENV) or MAX_BYTES)


def build(corpus: Store, *, limit: int | None = None) -> None:
    """Build the index of ``corpus``'s train split into ``<corpus>/novelty/`` unless it is there already."""
    target = corpus / FOLDER
    if (target / INDEX).exists():
        return
    limit = max_bytes() if limit is None else limit
    manifest = shards.load_manifest(corpus)
    with tempfile.TemporaryDirectory(prefix="rnnfarm-novelty-") as tmp:
        raw = Path(tmp) / "raw"
        written, total = _write_text(corpus, manifest, raw, limit)
        text = np.fromfile(raw, dtype=np.uint8)
        raw.unlink()
        np.save(Path(tmp) / TEXT, text)
        np.save(Path(tmp) / MARKS, _marks(text))
        suffixes = divsufsort(text) if len(text) else np.zeros(0, np.int32)
        del text
        np.save(Path(tmp) / SUFFIXES, suffixes)
        del suffixes
        files = {name: sha256_file(Path(tmp) / name) for name in (TEXT, SUFFIXES, MARKS)}
        for name in files:
            (target / name).upload(Path(tmp) / name)
        info = {
            "fingerprint": manifest["fingerprint"],
            "bytes": written,
            "split_bytes": total,
            "partial": written < total,
            "ngram": NGRAM,
            "sha256": files,
        }
        (target / INDEX).write_json(info)


def local_folder(corpus: Store) -> Path:
    """A local folder holding ``corpus``'s index: the corpus's own when it is local, else a verified copy
    cached under ``<cache>/novelty/<fingerprint>/``."""
    remote = corpus / FOLDER
    if is_local(corpus.url):
        return Path(remote.url)
    info = (remote / INDEX).read_json()
    cached = cache_dir() / FOLDER / info["fingerprint"]
    if (cached / INDEX).exists() and json.loads((cached / INDEX).read_text()) == info:
        return cached
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".novelty-") as tmp:
        for name, digest in info["sha256"].items():
            (remote / name).download_file(Path(tmp) / name)
            if sha256_file(Path(tmp) / name) != digest:
                raise UserError(f"{remote.url}/{name} does not match its sha256: delete {remote.url} and rebuild")
        (Path(tmp) / INDEX).write_text(json.dumps(info))
        shutil.rmtree(cached, ignore_errors=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, cached)
        except OSError:  # another process on this machine put the same index there first
            if not (cached / INDEX).exists():
                raise
        else:
            os.makedirs(tmp)  # TemporaryDirectory removes it on exit
    return cached


def open_index(corpus: Store) -> Index:
    """The index of ``corpus``'s train split, built first if the corpus has none yet."""
    build(corpus)
    return Index(local_folder(corpus))


def corpus_of(meta: dict[str, Any], given: str | None = None, options: dict | None = None) -> Store:
    """The corpus a checkpoint was trained on: ``given`` (a corpus folder, as ``--corpus``), else where the
    run's spec says it was built. Its fingerprint must be the checkpoint's."""
    recorded = meta.get("corpus") or {}
    if given is not None:
        folder = Store.at(given, options)
    elif recorded and meta.get("spec", {}).get("storage"):
        folder = Store.at(meta["spec"]["storage"], options) / "corpora" / recorded["name"] / recorded["fingerprint"]
    else:
        raise UserError("this checkpoint does not name its corpus: give --corpus URL (the corpus folder)")
    if not (folder / shards.MANIFEST).exists():
        raise UserError(
            f"the run's corpus is not at {folder.url} (no manifest.json there): "
            "give --corpus URL, the folder of the corpus it was trained on"
        )
    fingerprint = (folder / shards.MANIFEST).read_json()["fingerprint"]
    if recorded.get("fingerprint") not in (None, fingerprint):
        raise UserError(
            f"--corpus {folder.url} is corpus {fingerprint}, but the model was trained on {recorded['fingerprint']}: "
            "give the folder of the corpus it was trained on"
        )
    return folder
