"""n-gram baselines: fit + evaluation time and peak memory on a real corpus, against plain Python counting.

Each measurement runs in its own process (so its peak RSS and CPU time are its own):

- ``fit``: what ``rnnfarm baseline`` does (``rnnfarm.insight.ngram``): count every n-gram of orders 1..N of
  the train split (streamed from its shards), then score every character of val and test at each order;
- ``counter``: the plain way of doing only the counting: a ``collections.Counter`` of the same n-grams
  (string slices of the train split, with the same start padding), order after order. It also checks that
  both found the same distinct n-grams and the same numbers of n-grams seen once and twice;
- ``nltk`` (with ``--nltk CHARS``, when nltk is installed): nltk's ``KneserNeyInterpolated`` fit on the first
  CHARS characters of train at order 3, and the time it takes to score 2,000 characters of val.

    .venv/bin/python bench/ngram.py                                 # Linux source, 6.2 MB of .c/.h, orders 1-10
    .venv/bin/python bench/ngram.py --corpus complete --orders 20   # the complete Shakespeare plays
    .venv/bin/python bench/ngram.py --nltk 20000                    # and nltk on a 20,000-character cut
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

CORPORA = {
    "linux": ("linux", {"max_bytes": 6_200_000}, "Linux 6.1 source, the first 6.2 MB of .c/.h files"),
    "complete": ("shakespeare", {"variant": "complete"}, "the complete Shakespeare plays (38)"),
    "tiny": ("shakespeare", {"variant": "tiny"}, "tiny Shakespeare"),
}
START = "\uffff"  # the plain count's start symbol (a character no corpus here holds)


def build(corpus: str, storage: str) -> str:
    from rnnfarm import log, spec
    from rnnfarm.corpus.build import build as build_corpus
    from rnnfarm.storage import Store

    log.configure("json", level=30)
    name, options, _ = CORPORA[corpus]
    job = spec.parse({"name": "bench", "corpus": {"name": name, "options": options, "val": 0.1, "test": 0.05}})
    return build_corpus(Store.at(storage), job.corpus).folder.url


def _corpus(url: str):
    from rnnfarm.corpus import shards
    from rnnfarm.corpus.vocab import Vocab
    from rnnfarm.storage import Store

    folder = Store.at(url)
    manifest = shards.load_manifest(folder)
    return folder, manifest, Vocab.from_json(manifest["vocab"])


def fit(url: str, orders: int) -> dict:
    from rnnfarm.corpus import shards
    from rnnfarm.insight.ngram import KneserNey

    folder, manifest, vocab = _corpus(url)
    started = time.perf_counter()
    model = KneserNey(shards.iter_tokens(folder, manifest, "train", vocab), vocab_size=len(vocab), max_order=orders)
    counted = time.perf_counter()
    nats = {}
    for split in ("val", "test"):
        total, tokens = model.score(shards.iter_tokens(folder, manifest, split, vocab))
        nats[split] = {k: v / tokens for k, v in total.items()}
    done = time.perf_counter()
    levels = model.raw[1:]
    return {
        "count_s": counted - started,
        "score_s": done - counted,
        "seconds": done - started,
        "train": model.tokens,
        "scored": sum(manifest["splits"][s]["tokens"] for s in ("val", "test")),
        "distinct": [int((level.counts > 0).sum()) for level in levels],
        "singletons": [[int((level.counts == c).sum()) for c in (1, 2)] for level in levels],
        "nats": nats,
    }


def counter(url: str, orders: int) -> dict:
    from collections import Counter

    from rnnfarm.corpus import shards

    folder, manifest, _ = _corpus(url)
    text = START * (orders - 1) + shards.read_split(folder, manifest, "train")
    started = time.perf_counter()
    distinct, singletons = [], []
    for k in range(1, orders + 1):
        counts = Counter(text[i - k + 1 : i + 1] for i in range(orders - 1, len(text)))
        distinct.append(len(counts))
        once = Counter(c for c in counts.values() if c <= 2)
        singletons.append([once[1], once[2]])
        del counts
    return {"seconds": time.perf_counter() - started, "distinct": distinct, "singletons": singletons}


def nltk_fit(url: str, chars: int) -> dict:
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    from rnnfarm.corpus import shards

    folder, manifest, _ = _corpus(url)
    train = shards.read_split(folder, manifest, "train")[:chars]
    val = shards.read_split(folder, manifest, "val")[:2000]
    started = time.perf_counter()
    lm = KneserNeyInterpolated(3)
    grams, vocab = padded_everygram_pipeline(3, [list(train)])
    lm.fit(grams, vocab)
    fitted = time.perf_counter()
    for i in range(2, len(val)):
        lm.score(val[i], list(val[i - 2 : i]))
    return {"fit_s": fitted - started, "score_s": time.perf_counter() - fitted, "scored": len(val) - 2}


def nltk_ours(url: str, chars: int) -> dict:
    """The same cut and order with rnnfarm's model, for the ratio."""
    from rnnfarm.corpus import shards
    from rnnfarm.insight.ngram import KneserNey

    folder, manifest, vocab = _corpus(url)
    train = vocab.encode(shards.read_split(folder, manifest, "train")[:chars])
    val = vocab.encode(shards.read_split(folder, manifest, "val")[:2000])
    started = time.perf_counter()
    model = KneserNey([train], vocab_size=len(vocab), max_order=3)
    fitted = time.perf_counter()
    model.score([val], [3])
    return {"fit_s": fitted - started, "score_s": time.perf_counter() - fitted, "scored": len(val)}


def child(args: list[str]) -> tuple[dict, float]:
    """Run one measurement in a fresh process; its result and its own peak RSS in MB."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(args)} failed with exit code {os.waitstatus_to_exitcode(status)}")
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    return result, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="linux")
    parser.add_argument("--orders", type=int, default=10, help="fit orders 1..N")
    parser.add_argument("--storage", help="where the corpus is built (default: a temporary folder, removed after)")
    parser.add_argument("--nltk", type=int, default=0, metavar="CHARS", help="also time nltk on this many chars")
    parser.add_argument("--child", choices=["fit", "counter", "nltk", "nltk_ours"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = {"fit": fit, "counter": counter, "nltk": nltk_fit, "nltk_ours": nltk_ours}[args.child]
        print(json.dumps(run(args.url, args.nltk if args.child.startswith("nltk") else args.orders)))
        return

    storage = args.storage or tempfile.mkdtemp(prefix="rnnfarm-bench-")
    try:
        url = build(args.corpus, storage)
        common = ["--url", url, "--orders", str(args.orders), "--nltk", str(args.nltk)]
        ours, ours_rss = child(["--child", "fit", *common])
        plain, plain_rss = child(["--child", "counter", *common])
        nltk = [child(["--child", kind, *common])[0] for kind in ("nltk", "nltk_ours")] if args.nltk else None
    finally:
        if not args.storage:
            shutil.rmtree(storage)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"corpus: {CORPORA[args.corpus][2]}: {ours['train']:,} train chars, {ours['scored']:,} val+test chars")
    print(f"orders 1..{args.orders}: {sum(ours['distinct']):,} distinct n-grams")
    print(
        f"rnnfarm fit+eval:      {ours['seconds']:6.2f} s (count {ours['count_s']:.2f} s, "
        f"score {ours['score_s']:.2f} s), {ours['cpu_s']:.1f} CPU s, peak RSS {ours_rss:.0f} MB"
    )
    print(f"plain Counter, count:  {plain['seconds']:6.2f} s, {plain['cpu_s']:.1f} CPU s, peak RSS {plain_rss:.0f} MB")
    same = ours["distinct"] == plain["distinct"] and ours["singletons"] == plain["singletons"]
    print(f"same distinct n-grams, n1 and n2 at every order: {'yes' if same else 'NO'}")
    print(f"count / Counter count: {ours['count_s'] / plain['seconds']:.3f}x")
    print(f"fit+eval / Counter count: {ours['seconds'] / plain['seconds']:.3f}x")
    print("order  val nats/char  val bits/char  test nats/char  test bits/char")
    for k in range(1, args.orders + 1):
        v, t = ours["nats"]["val"][str(k)], ours["nats"]["test"][str(k)]
        print(f"{k:>5}  {v:13.4f}  {v / math.log(2):13.4f}  {t:14.4f}  {t / math.log(2):14.4f}")
    if nltk:
        theirs, mine = nltk
        per_char = theirs["score_s"] / theirs["scored"]
        print(
            f"nltk KneserNeyInterpolated, order 3, {args.nltk:,} train chars: fit {theirs['fit_s']:.2f} s, "
            f"{per_char * 1e3:.2f} ms per char scored; rnnfarm on the same: fit {mine['fit_s']:.3f} s, "
            f"{mine['score_s'] / mine['scored'] * 1e6:.2f} us per char scored "
            f"({per_char / (mine['score_s'] / mine['scored']):,.0f}x faster)"
        )
    if not same:
        raise SystemExit("the two counts differ")


if __name__ == "__main__":
    main()
