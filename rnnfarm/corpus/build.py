"""Building a corpus: fetch a source, normalize, split, count the vocabulary, shard, write the manifest.

The folder is named by the fingerprint of everything that determines its content (plugin and its
version, options, the source's content identity, policy, split fractions, and a parent model's vocabulary
with the policy for symbols it lacks, where the corpus is encoded with one), so a build with the same
inputs is skipped and a different one never overwrites. The manifest is written last: an interrupted
build leaves no manifest, so nothing reads its shards.

Builds stream with bounded memory. A multi-document corpus is read once: each document goes whole to
the split its id's hash picks, unless that would carry the split's share of the characters past its
target (``_Shares``), so that a corpus of a few documents of very different lengths still gets the
shares it asks for. A single stream (``split_by = "position"``) is read twice: once to count
its characters, once to cut it at the split points. The plugin's reading (decompression, parsing)
runs in a thread ahead of normalization and writing, so the two overlap.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .. import log, redact
from ..errors import UserError
from ..spec import CorpusSpec
from ..storage import Store, storage_error
from . import registry, shards
from .base import Corpus, Document
from .normalize import Normalizer, Policy, Tally, choose_vocab, inherit_vocab
from .sources import fetch
from .vocab import Vocab

SPLITS = ("train", "val", "test")
PREFETCH = 4  # bundles of documents read ahead of normalization
BUNDLE = 1 << 20  # bytes of text per bundle
LOOKAHEAD = 4 << 20  # characters of a document held to learn its length before its split is chosen


@dataclass(frozen=True)
class Built:
    folder: Store
    manifest: dict[str, Any]
    skipped: bool

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def _options(corpus: Corpus, given: dict[str, Any]) -> BaseModel:
    try:
        return corpus.Options.model_validate(given)
    except ValidationError as exc:
        words = {"missing": "is required", "extra_forbidden": "is not an option of this corpus"}
        problems = "; ".join(
            f"corpus.options.{'.'.join(map(str, e['loc']))}: "
            + words.get(e["type"], e["msg"].removeprefix("Value error, "))
            for e in exc.errors()
        )
        raise UserError(problems) from None


def _recorded(options: BaseModel) -> dict[str, Any]:
    """The options as the manifest records them and the fingerprint counts them: credentials (a source's
    ``storage_options`` key and secret...) masked, since they change who reads the text, not the text."""
    dumped = options.model_dump(mode="json")
    redact.remember_options(dumped)
    return redact.redact(dumped)


def plugin(spec: CorpusSpec) -> tuple[Corpus, BaseModel]:
    """The corpus plugin a spec names, and its options validated (an unknown name or option: one line)."""
    corpus = registry.get(spec.name)
    return corpus, _options(corpus, spec.options)


def fingerprint(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _split_of(doc_id: str, val: float, test: float) -> str:
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if h < test else "val" if h < test + val else "train"


def _prefetched(items: Iterable[Document], depth: int = PREFETCH) -> Iterator[Document]:
    """The items, read by a thread ahead of the consumer (the reading releases the GIL while it
    decompresses) and handed over in bundles of about ``BUNDLE`` bytes, so that small documents do
    not cost a thread switch each. Its errors are raised here; it stops when the consumer does."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(bundle) -> bool:
        while not stop.is_set():
            try:
                box.put(bundle, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        bundle, size = [], 0
        try:
            for item in items:
                bundle.append(item)
                size += len(item.text)
                if size >= BUNDLE or len(bundle) >= 1024:
                    if not put(bundle):
                        return
                    bundle, size = [], 0
            put(bundle)
            put(end)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    reader = threading.Thread(target=read, name="rnnfarm-corpus-reader", daemon=True)
    reader.start()
    try:
        while (bundle := box.get()) is not end:
            if isinstance(bundle, BaseException):
                raise bundle
            yield from bundle
    finally:
        stop.set()
        reader.join(timeout=5)


def _normalized(docs: Iterable[Document], normalizer: Normalizer) -> Iterator[tuple[str, str, bool]]:
    """(document id, normalized text, whether it starts the document) for each non-empty piece."""
    current: str | None = None
    started = False
    for doc in _prefetched(docs):
        if doc.id != current:
            if current is not None and (tail := normalizer.finish()):
                yield current, tail, not started
            current, started = doc.id, False
            normalizer.start(doc.id)
        if text := normalizer.feed(doc.text):
            yield current, text, not started
            started = True
    if current is not None and (tail := normalizer.finish()):
        yield current, tail, not started


class _Build:
    """One build's writers and counts."""

    def __init__(self, folder: Store, policy: Policy, separator: str) -> None:
        self.tally = Tally()
        self.separator = separator
        self.writers = {s: shards.SplitWriter(folder, s, self.tally, policy.level) for s in SPLITS}
        self.documents = {s: 0 for s in SPLITS}  # documents with text in each split
        self.total_documents = 0
        self.chars = 0
        self.logger = log.get("rnnfarm.corpus")
        self._logged = time.perf_counter()

    def write(self, split: str, doc_id: str, text: str, starts_document: bool) -> None:
        self.documents[split] += starts_document
        self.writers[split].add(doc_id, text)
        self.chars += len(text)
        if time.perf_counter() - self._logged > 10:
            self._logged = time.perf_counter()
            self.logger.info("building", chars=self.chars, documents=self.total_documents)

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


class _Shares:
    """Chooses each document's split as documents stream, deterministically from the ids' hashes and the
    documents' lengths: the split the hash picks, unless that split already has documents and would then
    hold more than its target share of the characters by over half the document; then the split furthest
    below its target. For many small documents this is the hash's pick; large ones go where they keep the
    shares on target; and a split the hash picks for a document is never left empty."""

    def __init__(self, val: float, test: float) -> None:
        self.val, self.test = val, test
        self.targets = {"train": 1 - val - test, "val": val, "test": test}
        self.chars = dict.fromkeys(SPLITS, 0)

    def choose(self, doc_id: str, length: int) -> str:
        picked = _split_of(doc_id, self.val, self.test)
        total = sum(self.chars.values()) + length
        lacking = {s: share * total - self.chars[s] for s, share in self.targets.items()}
        if lacking[picked] < length / 2 and self.chars[picked]:
            picked = max(lacking, key=lacking.__getitem__)
        return picked


def _by_document(pieces: Iterable[tuple[str, str, bool]], out: _Build, val: float, test: float) -> None:
    """One pass: each document goes whole to the split ``_Shares`` chooses from its length, so its pieces
    are held until it ends or LOOKAHEAD characters of it have come (a longer one is judged by those)."""
    shares = _Shares(val, test)
    held: list[tuple[str, str, bool]] = []
    split: str | None = None

    def release() -> None:
        nonlocal split
        if split is None:
            split = shares.choose(held[0][0], sum(len(text) for _, text, _ in held))
            out.total_documents += 1
        for doc_id, text, first in held:
            if first and out.documents[split] and out.separator:
                text = out.separator + text
            out.write(split, doc_id, text, first)
            shares.chars[split] += len(text)
        held.clear()

    for doc_id, text, first in pieces:
        if first:
            if held:
                release()
            split = None
        held.append((doc_id, text, first))
        if split is not None or sum(len(t) for _, t, _ in held) >= LOOKAHEAD:
            release()
    if held:
        release()


def _by_position(stream, out: _Build, val: float, test: float) -> None:
    """Two passes over a single stream: count its characters, then cut it (train | val | test)."""
    total, documents = 0, 0
    for _, text, first in stream():
        if first and documents:
            total += len(out.separator)
        documents += first
        total += len(text)
    cuts = [(int(total * (1 - val - test)), "train"), (int(total * (1 - test)), "val"), (total, "test")]
    position, started = 0, set()
    for doc_id, text, first in stream():
        if first:
            text = (out.separator if out.total_documents else "") + text
            out.total_documents += 1
        while text:
            end, split = next(((c, s) for c, s in cuts if position < c), (None, None))
            if end is None:
                raise UserError(f"the source changed while it was read (more than {total} characters): build again")
            piece, text = text[: end - position], text[end - position :]
            out.write(split, doc_id, piece, first or split not in started)
            started.add(split)
            position += len(piece)
            first = False
    if position != total or out.total_documents != documents:
        raise UserError(f"the source changed while it was read ({total} characters, then {position}): build again")


def check_parent_vocab(spec: CorpusSpec, parent: Vocab) -> None:
    """Refuse, in one line, a parent vocabulary this corpus cannot be encoded with under its policies."""
    level = spec.normalize.level
    if parent.level != level:
        raise UserError(
            f"corpus.normalize.level is {level}, but the parent's vocabulary is {parent.level}-level: "
            f"set corpus.normalize.level: {parent.level} (the corpus is encoded with the parent's vocabulary)"
        )
    if spec.unknown == "drop" and level == "byte":
        raise UserError(
            "corpus.unknown: drop leaves characters out, and a byte-level vocabulary lacks bytes, not characters: "
            "set corpus.unknown to extend or replace"
        )


def _inherited(parent: Vocab, spec: CorpusSpec, added: list[str], normalizer: Normalizer) -> dict[str, Any]:
    """What the manifest says of a vocabulary taken from a parent: its size, the policy, what was added or dropped."""
    return {"parent_size": len(parent), "unknown": spec.unknown, "added": "".join(added), "dropped": normalizer.dropped}


def build(storage: Store, spec: CorpusSpec, parent: Vocab | None = None) -> Built:
    """Build (or find already built) the corpus a spec names, under ``<storage>/corpora/<name>/``; with a
    ``parent`` vocabulary (a model's that training starts from), encoded with it under ``spec.unknown``."""
    logger = log.get("rnnfarm.corpus")
    corpus, options = plugin(spec)
    if parent is not None:
        check_parent_vocab(spec, parent)
    storage.check(write=True)
    fetched = fetch(corpus.sources(options), corpus.name)
    policy = spec.normalize
    separator = corpus.separator if policy.separator is None else policy.separator
    split_by = corpus.splitting(options, fetched)
    inputs = {
        "format": shards.FORMAT,
        "corpus": corpus.name,
        "version": corpus.version,
        "options": _recorded(options),
        "source_sha256": fetched.sha256,
        "normalization": {**policy.model_dump(mode="json"), "separator": separator},
        "splitting": {"by": split_by, "val": spec.val, "test": spec.test},
    }
    if parent is not None:
        inputs["vocab_from"] = {"vocab": parent.to_json(), "unknown": spec.unknown}
    fp = fingerprint(inputs)
    folder = storage / "corpora" / corpus.name / fp
    if (folder / shards.MANIFEST).exists():
        manifest = shards.load_manifest(folder)
        shards.verify_local(folder, manifest)
        logger.info("corpus already built", corpus=corpus.name, fingerprint=fp, url=folder.url)
        return Built(folder, manifest, skipped=True)

    started = time.perf_counter()
    logger.info("building corpus", corpus=corpus.name, fingerprint=fp, url=folder.url, split_by=split_by)
    out = _Build(folder, policy, separator)
    normalizers: list[Normalizer] = []  # one per pass over the text; the last one's counts are the manifest's

    def stream() -> Iterator[tuple[str, str, bool]]:
        normalizers.append(Normalizer(policy, parent if spec.unknown == "drop" else None))
        return _normalized(corpus.documents(fetched, options), normalizers[-1])

    try:
        if split_by == "document":
            _by_document(stream(), out, spec.val, spec.test)
        else:
            _by_position(stream, out, spec.val, spec.test)
        written = {split: writer.close() for split, writer in out.writers.items()}
        counts = out.tally.counts(policy.level)
        if not counts:
            raise UserError(f"corpus {corpus.name!r} produced no text from {fetched.source.url}")
        if parent is None:
            vocab, replaced = choose_vocab(counts, policy)
        else:
            vocab, replaced, added = inherit_vocab(parent, counts, policy, spec.unknown)
        splits = {
            split: {
                "chars": sum(s["chars"] for s in shard_list),
                "bytes": sum(s["bytes"] for s in shard_list),
                "tokens": sum(s["tokens"] for s in shard_list),
                "documents": out.documents[split],
                "shards": shard_list,
            }
            for split, shard_list in written.items()
            if shard_list
        }
        chars = sum(s["chars"] for s in splits.values())
        for split in splits.values():
            split["share"] = round(split["chars"] / chars, 6)  # of the corpus's characters
        if "train" not in splits or "val" not in splits:
            raise UserError(
                f"corpus {corpus.name!r} is too small to give both a train and a val split "
                f"(it has: {', '.join(splits) or 'nothing'}); use more text or a larger corpus.val"
            )
    except BaseException as exc:
        out.abort()
        written = storage_error(exc, folder) if isinstance(exc, OSError) else None  # a full disk, say
        if written is not None:
            raise written from None
        raise
    seconds = time.perf_counter() - started
    text_bytes = sum(s["bytes"] for s in splits.values())
    manifest = {
        **inputs,
        "fingerprint": fp,
        "description": corpus.description,
        "distribution": registry.distribution(corpus),
        "source": {
            "url": fetched.source.url,
            "sha256": fetched.sha256,
            "files": len(fetched.files),
        },
        "documents": out.total_documents,
        "invalid_utf8": normalizers[-1].report(),
        "vocab": {
            **vocab.to_json(),
            "counts": {s: counts.get(s, 0) for s in vocab.symbols},
            "replaced": replaced,
            **({} if parent is None else {"inherited": _inherited(parent, spec, added, normalizers[-1])}),
        },
        "splits": splits,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(seconds, 3),
    }
    (folder / shards.MANIFEST).write_json(manifest)
    logger.info(
        "corpus built",
        corpus=corpus.name,
        fingerprint=fp,
        url=folder.url,
        chars=sum(s["chars"] for s in splits.values()),
        mb_per_s=round(text_bytes / 1e6 / max(seconds, 1e-9), 1),
    )
    return Built(folder, manifest, skipped=False)
