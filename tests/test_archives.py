"""Streamed reading of compressed files and tarballs, checked against the standard library on real archives."""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import tarfile
from pathlib import Path

import pytest

from rnnfarm.corpus.archives import decompressed, pieces, tar_entries, tar_members
from rnnfarm.corpus.sources import fetch
from rnnfarm_plugins import latex, linux, wikipedia

IMAGES = Path(latex.DEBIAN_ROOT, "latex/chemobabel/images-for-doc.tar.gz")  # a real tarball in the TeX docs


def entries_ours(path: Path, limit: int) -> list[tuple[str, bytes]]:
    with open(path, "rb") as f:
        return [
            (name.rstrip("/"), data.read() if kind in (b"0", b"\0") else b"")
            for name, kind, data in itertools.islice(tar_entries(decompressed(f)), limit)
        ]


def entries_stdlib(path: Path, limit: int) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r|*") as tar:
        return [
            (member.name, tar.extractfile(member).read() if member.isfile() else b"")
            for member in itertools.islice(tar, limit)
        ]


@pytest.mark.parametrize("archive, limit", [("kernel", 3000), ("images", 10_000)])
def test_tar_entries_are_what_the_standard_library_reads(archive, limit):
    path = Path(linux.debian_sources()[0].url) if archive == "kernel" else IMAGES
    ours = entries_ours(path, limit)
    assert len(ours) > 10 and ours == entries_stdlib(path, limit)


def test_tar_members_match_patterns_below_the_top_folder():
    kernel = linux.debian_sources()[0].url
    include, exclude = ["Documentation/ABI/obsolete/*"], ["*roccat*"]
    with open(kernel, "rb") as f:
        ours = [(name, data.read()) for name, data in itertools.islice(tar_members(f, include, exclude, True), 8)]
    expected = []
    with tarfile.open(kernel, "r|xz") as tar:
        for member in tar:
            name = member.name.partition("/")[2]
            if member.isfile() and name.startswith("Documentation/ABI/obsolete/") and "roccat" not in name:
                expected.append((name, tar.extractfile(member).read()))
                if len(expected) == 8:
                    break
    assert ours == expected


def test_a_file_that_is_not_a_tarball_is_refused():
    with pytest.raises(tarfile.ReadError, match="not a tar archive"):
        list(tar_members(io.BytesIO(gzip.compress(IMAGES.read_bytes()[:1000])), ["*"]))


def test_gzip_bzip2_xz_and_plain_streams_are_read_whole_even_when_concatenated():
    with fetch(wikipedia.SAMPLE_SOURCES, "wikipedia").open() as f:
        xml = bz2.decompress(f.read())[: 3 << 19]  # 1.5 MB: more than one CHUNK fed at once
    half = len(xml) // 2
    for compress in (gzip.compress, bz2.compress, lzma.compress):
        joined = compress(xml[:half]) + compress(xml[half:])
        assert b"".join(pieces(decompressed(io.BytesIO(joined)), 77_777)) == xml
    assert decompressed(io.BytesIO(xml)).read() == xml
