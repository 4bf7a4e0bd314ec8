"""One of Jane Austen's six novels as a plain text file, read from Debian's r-cran-janeaustenr.

The package (MIT packaging of Project Gutenberg's public-domain texts) keeps each novel in R's lazy-load
database: ``data/Rdata.rdx`` indexes ``data/Rdata.rdb``, whose entries are zlib-compressed R serializations
of a character vector, one element a line. ``rdata`` reads those serializations; the lines are joined with
newlines and written whole, or not at all.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/austen.py persuasion persuasion.txt
"""

from __future__ import annotations

import argparse
import hashlib
import io
import struct
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zlib
from pathlib import Path

PACKAGE = "r-cran-janeaustenr=1.0.0-1"
DATA = "./usr/lib/R/site-library/janeaustenr/data/"
NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")


def fetch(folder: Path) -> Path:
    """The package's data folder, unpacked under ``folder`` (``apt-get download``: nothing is installed)."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=folder, check=True, capture_output=True)
    (deb,) = folder.glob("*.deb")
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(folder, members=[m for m in archive if m.name.startswith(DATA)], filter="data")
    return folder / DATA


def novel(data: Path, name: str) -> str:
    """The novel's lines from the lazy-load database in ``data``, joined by newlines."""
    try:
        import rdata
    except ImportError:
        sys.exit("bench/austen.py reads R's serialization with rdata: pip install -e '.[bench]'")

    def parse(source: Path | bytes) -> object:
        with warnings.catch_warnings():  # rdata warns that an .rdx, and an entry, are bare serializations
            warnings.simplefilter("ignore")
            parsed = rdata.parser.parse_file(source) if isinstance(source, Path) else rdata.parser.parse_data(source)
        return rdata.conversion.convert(parsed)

    index = parse(data / "Rdata.rdx")
    offset, length = (int(x) for x in index["variables"][name])
    with open(data / "Rdata.rdb", "rb") as f:
        f.seek(offset)
        entry = f.read(length)
    (size,) = struct.unpack(">i", entry[:4])  # the serialization's length, then its zlib stream
    raw = zlib.decompress(entry[4:])
    if len(raw) != size:
        sys.exit(f"{name}: the entry holds {len(raw)} bytes where its header says {size}")
    return "\n".join(str(line) for line in parse(raw)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("novel", choices=NOVELS)
    parser.add_argument("out", type=Path, help="the text file to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnfarm-austen-") as tmp:
        text = novel(fetch(Path(tmp)), args.novel)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(args.out)
    sha = hashlib.sha256(text.encode()).hexdigest()
    print(f"{args.out}: {args.novel}, {len(text):,} characters, {len(set(text))} symbols, sha256 {sha}")


if __name__ == "__main__":
    main()
