"""The novelty meter's index: build time and peak memory, and the time of one sample's meter, against the plain way.

Each measurement runs in its own process (so its peak RSS and CPU time are its own):

- ``index``: what a run does once per corpus (``rnnfarm.corpus.novelty.build``): the train split's UTF-8 bytes
  and their suffix array (pydivsufsort), written beside the corpus; then ``--samples`` metered samples (spans of
  the val split, ``--chars`` long) from the memory-mapped index, and the time of one;
- ``plain``: the plain way: the train split as one Python string and a set of its n-grams (the n-gram share),
  and, for the longest copied span, ``in`` on that string for every growing span of the sample. It checks that
  both give the same meter. Skipped above ``--plain-max`` bytes of train (its set alone would not fit).

    .venv/bin/python bench/novelty.py --corpus tiny                  # tiny Shakespeare (1 MB)
    .venv/bin/python bench/novelty.py --corpus linux-cut             # 6.2 MB of Linux .c/.h
    .venv/bin/python bench/novelty.py --corpus linux --plain-max 0   # the whole Linux source (1.18 GB)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

CORPORA = {
    "tiny": ("shakespeare", {"variant": "tiny"}, "tiny Shakespeare"),
    "linux-cut": ("linux", {"max_bytes": 6_200_000}, "Linux 6.1 source, the first 6.2 MB of .c/.h files"),
    "linux-core": ("linux", {}, "Linux 6.1 source, .c/.h of the core folders (about 110 MB)"),
    "linux": ("linux", {"include": ["*.c", "*.h"]}, "the whole Linux 6.1 source tree (1.2 GB)"),
}


def build_corpus(corpus: str, storage: str) -> str:
    from rnnfarm import log, spec
    from rnnfarm.corpus.build import build
    from rnnfarm.storage import Store

    log.configure("json", level=30)
    name, options, _ = CORPORA[corpus]
    job = spec.parse({"name": "bench", "corpus": {"name": name, "options": options}})
    return build(Store.at(storage), job.corpus).folder.url


def samples(url: str, count: int, chars: int) -> list[str]:
    """``count`` spans of the val split, spread over it: text the model did not train on, with copies in it."""
    from rnnfarm.corpus import shards
    from rnnfarm.corpus.vocab import Vocab
    from rnnfarm.storage import Store

    folder = Store.at(url)
    manifest = shards.load_manifest(folder)
    vocab = Vocab.from_json(manifest["vocab"])
    total = manifest["splits"]["val"]["tokens"]
    step = max(1, (total - chars) // count)
    return [
        vocab.decode(shards.read_tokens(folder, manifest, "val", i, i + chars, vocab))
        for i in range(0, step * count, step)
    ]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def index(url: str, count: int, chars: int) -> dict:
    from rnnfarm.corpus import novelty
    from rnnfarm.storage import Store

    folder = Store.at(url)
    texts = samples(url, count, chars)
    start, cpu = time.perf_counter(), time.process_time()
    novelty.build(folder)
    built = {
        "build_s": time.perf_counter() - start,
        "build_cpu_s": time.process_time() - cpu,
        "build_peak_mb": peak_mb(),
    }
    start = time.perf_counter()
    opened = novelty.open_index(folder)
    opened_s = time.perf_counter() - start
    start = time.perf_counter()
    meters = [opened.meter(t).to_json() for t in texts]
    per_sample = (time.perf_counter() - start) / len(texts)
    info = opened.info
    return {
        **built,
        "open_s": opened_s,
        "meter_s": per_sample,
        "peak_mb": peak_mb(),
        "train_bytes": info["bytes"],
        "partial": info["partial"],
        "meters": [(m["longest"], m["ngram_share"]) for m in meters],
    }


def plain(url: str, count: int, chars: int) -> dict:
    from rnnfarm.corpus import novelty, shards
    from rnnfarm.storage import Store

    folder = Store.at(url)
    manifest = shards.load_manifest(folder)
    texts = samples(url, count, chars)
    n = novelty.NGRAM
    start, cpu = time.perf_counter(), time.process_time()
    train = shards.read_split(folder, manifest, "train")
    grams = {train[i : i + n] for i in range(len(train) - n + 1)}
    built = {
        "build_s": time.perf_counter() - start,
        "build_cpu_s": time.process_time() - cpu,
        "build_peak_mb": peak_mb(),
    }
    start = time.perf_counter()
    meters = []
    for text in texts:
        longest, j = 0, 0
        for i in range(len(text)):  # two pointers, as the index does, each step a scan of the whole split
            j = max(j, i)
            while j < len(text) and text[i : j + 1] in train:
                j += 1
            longest = max(longest, j - i)
        mine = [text[i : i + n] for i in range(len(text) - n + 1)]
        meters.append((longest, sum(g in grams for g in mine) / len(mine) if mine else None))
    per_sample = (time.perf_counter() - start) / len(texts)
    return {**built, "meter_s": per_sample, "peak_mb": peak_mb(), "meters": meters}


def measure(kind: str, url: str, count: int, chars: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, "--url", url, "--samples", str(count), "--chars", str(chars)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="tiny")
    parser.add_argument("--storage", help="where to build the corpus (default: a temporary folder)")
    parser.add_argument("--samples", type=int, default=20, help="samples metered")
    parser.add_argument("--chars", type=int, default=500, help="characters per sample")
    parser.add_argument("--plain-max", type=int, default=50_000_000, help="train bytes above which plain is skipped")
    parser.add_argument("--one", choices=["index", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps((index if args.one == "index" else plain)(args.url, args.samples, args.chars)))
        return
    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-novelty-") as tmp:
        url = build_corpus(args.corpus, args.storage or tmp)
        got = measure("index", url, args.samples, args.chars)
        print(
            f"{CORPORA[args.corpus][2]}: train split {got['train_bytes']:,} bytes"
            f"{' (indexed as a prefix)' if got['partial'] else ''}; {args.samples} samples of {args.chars} chars"
        )
        print("way       build s   build CPU s   build peak MB   meter ms/sample   peak MB")
        rows = [("index", got)]
        if got["train_bytes"] <= args.plain_max:
            rows.append(("plain", base := measure("plain", url, args.samples, args.chars)))
            assert base["meters"] == got["meters"], "the plain way and the index disagree"
        for name, r in rows:
            print(
                f"{name:<9} {r['build_s']:>7.2f}   {r['build_cpu_s']:>11.2f}   {r['build_peak_mb']:>13.0f}"
                f"   {1000 * r['meter_s']:>15.2f}   {r['peak_mb']:>7.0f}"
            )


if __name__ == "__main__":
    main()
