"""Building a corpus: fetch a source, normalize, split, count the vocabulary, shard, write the manifest.

The folder is named by the fingerprint of everything that determines its content (plugin and its
version, options, source checksum, policy, split fractions), so a build with the same inputs is
skipped and a different one never overwrites.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .. import log
from ..errors import UserError
from ..spec import CorpusSpec
from ..storage import Store
from . import registry, shards
from .base import Corpus, Document
from .normalize import choose_vocab, count, normalize
from .sources import fetch


@dataclass(frozen=True)
class Built:
    folder: Store
    manifest: dict[str, Any]
    skipped: bool

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def _options(corpus: Corpus, given: dict[str, Any]):
    try:
        return corpus.Options.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(
            f"corpus.options.{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise UserError(problems) from None


def fingerprint(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _split_of(doc_id: str, val: float, test: float) -> str:
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if h < test else "val" if h < test + val else "train"


def _assign(docs: Iterable[Document], corpus: Corpus, val: float, test: float) -> Iterator[tuple[str, Document]]:
    if corpus.split_by == "document":
        for doc in docs:
            yield _split_of(doc.id, val, test), doc
        return
    # A single stream: the last fractions, in order train | val | test (nanoGPT's val is the last 10%).
    text = "".join(d.text for d in docs)
    n = len(text)
    cut_val, cut_test = int(n * (1 - val - test)), int(n * (1 - test))
    for split, (a, b) in {"train": (0, cut_val), "val": (cut_val, cut_test), "test": (cut_test, n)}.items():
        if b > a:
            yield split, Document(f"{corpus.name}:{split}", text[a:b])


def build(storage: Store, spec: CorpusSpec) -> Built:
    """Build (or find already built) the corpus a spec names, under ``<storage>/corpora/<name>/``."""
    logger = log.get("rnnfarm.corpus")
    corpus = registry.get(spec.name)
    options = _options(corpus, spec.options)
    fetched = fetch(corpus.sources(options), corpus.name)
    inputs = {
        "format": shards.FORMAT,
        "corpus": corpus.name,
        "version": corpus.version,
        "options": options.model_dump(mode="json"),
        "source_sha256": fetched.sha256,
        "normalization": spec.normalize.model_dump(mode="json"),
        "splits": {"by": corpus.split_by, "val": spec.val, "test": spec.test},
    }
    fp = fingerprint(inputs)
    folder = storage / "corpora" / corpus.name / fp
    if (folder / shards.MANIFEST).exists():
        manifest = shards.load_manifest(folder)
        logger.info("corpus already built", corpus=corpus.name, fingerprint=fp, url=folder.url)
        return Built(folder, manifest, skipped=True)

    started = time.perf_counter()
    counts: Counter = Counter()
    writers = {split: shards.SplitWriter(folder, split) for split in ("train", "val", "test")}
    docs = (Document(d.id, normalize(d.text, spec.normalize)) for d in corpus.documents(fetched, options))
    n_docs = 0
    for split, doc in _assign(docs, corpus, spec.val, spec.test):
        count(doc.text, counts)
        writers[split].add(doc.id, doc.text)
        n_docs += 1
    vocab, replaced = choose_vocab(counts, spec.normalize)
    if not counts:
        raise UserError(f"corpus {corpus.name!r} produced no text from {fetched.source.url}")
    splits = {}
    for split, writer in writers.items():
        written = writer.close()
        if written:
            splits[split] = {
                "chars": sum(s["chars"] for s in written),
                "bytes": sum(s["bytes"] for s in written),
                "shards": written,
            }
    if "train" not in splits or "val" not in splits:
        raise UserError(f"corpus {corpus.name!r} is too small to give both a train and a val split")
    manifest = {
        **inputs,
        "fingerprint": fp,
        "description": corpus.description,
        "distribution": registry.distribution(corpus),
        "source": {"url": fetched.source.url, "sha256": fetched.sha256},
        "documents": n_docs,
        "vocab": {
            **vocab.to_json(),
            "counts": {s: counts.get(s, 0) for s in vocab.symbols},
            "replaced_chars": replaced,
        },
        "splits": splits,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    (folder / shards.MANIFEST).write_json(manifest)
    logger.info("corpus built", corpus=corpus.name, fingerprint=fp, url=folder.url, chars=sum(counts.values()))
    return Built(folder, manifest, skipped=False)
