"""Corpus build throughput and peak memory against the bare cost of reading the same source.

Each measurement runs in its own process (so its peak RSS and CPU time are its own): ``bare``
decompresses the Linux source tarball and reads every member the include globs pick, nothing else,
with the same reader the build uses (``rnnfarm.corpus.archives``), so the ratio is the build's own
cost; ``stdlib`` does the same with the standard library's tarfile, for reference; ``build`` runs
the linux corpus build with the same globs into a fresh folder. Run:

    .venv/bin/python bench/corpus_build.py                       # the whole .c/.h tree (1.2 GB of text)
    .venv/bin/python bench/corpus_build.py --include 'kernel/*.[ch]' --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def bare(tarball: str, include: list[str]) -> dict:
    from rnnfarm.corpus.archives import tar_members

    started, total = time.perf_counter(), 0
    with open(tarball, "rb") as f:
        for _, member in tar_members(f, include, strip_top=True):
            total += len(member.read())
    return {"seconds": time.perf_counter() - started, "bytes": total}


def bare_stdlib(tarball: str, include: list[str]) -> dict:
    """The same reading with the standard library's tarfile, as a plain script would do it."""
    import tarfile

    from rnnfarm.corpus.archives import matches

    started, total = time.perf_counter(), 0
    with tarfile.open(tarball, "r|*") as tar:
        for member in tar:
            if member.isfile() and matches(member.name.partition("/")[2], include):
                total += len(tar.extractfile(member).read())
            tar.members.clear()
    return {"seconds": time.perf_counter() - started, "bytes": total}


def build(tarball: str, include: list[str], folder: str) -> dict:
    from rnnfarm import log, spec
    from rnnfarm.corpus.build import build as build_corpus
    from rnnfarm.storage import Store

    log.configure("json", level=30)
    corpus = spec.parse({"name": "bench", "corpus": {"name": "linux", "options": {"url": tarball, "include": include}}})
    started = time.perf_counter()
    built = build_corpus(Store.at(folder), corpus.corpus)
    seconds = time.perf_counter() - started
    splits = built.manifest["splits"].values()
    return {"seconds": seconds, "bytes": sum(s["bytes"] for s in splits), "chars": sum(s["chars"] for s in splits)}


def child(args: list[str]) -> tuple[dict, float]:
    """Run one measurement in a fresh process; its result and its own peak RSS in MB."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return result, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", default=None, help="default: the newest /usr/src/linux-source-*.tar.xz")
    parser.add_argument("--include", nargs="+", default=["*.c", "*.h"])
    parser.add_argument("--repeat", type=int, default=2, help="alternate bare and build runs; the best of each")
    parser.add_argument("--child", choices=["bare", "stdlib", "build"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tarball is None:
        from rnnfarm_plugins.linux import debian_sources

        args.tarball = debian_sources()[0].url
    if args.child == "bare":
        print(json.dumps(bare(args.tarball, args.include)))
        return
    if args.child == "stdlib":
        print(json.dumps(bare_stdlib(args.tarball, args.include)))
        return
    if args.child == "build":
        print(json.dumps(build(args.tarball, args.include, args.folder)))
        return

    common = ["--tarball", args.tarball, "--include", *args.include]
    runs: dict[str, list] = {"bare": [], "stdlib": [], "build": []}
    for _ in range(args.repeat):
        runs["bare"].append(child(["--child", "bare", *common]))
        runs["stdlib"].append(child(["--child", "stdlib", *common]))
        folder = tempfile.mkdtemp(prefix="rnnfarm-bench-")
        try:
            runs["build"].append(child(["--child", "build", "--folder", folder, *common]))
        finally:
            shutil.rmtree(folder)
    best = {kind: min((r[0] for r in found), key=lambda r: r["seconds"]) for kind, found in runs.items()}
    text_mb = best["build"]["bytes"] / 1e6

    def line(label: str, kind: str) -> str:
        r = best[kind]
        return f"{label:22s}{r['seconds']:6.2f} s ({text_mb / r['seconds']:4.0f} MB/s), {r['cpu_seconds']:.1f} CPU s"

    print(f"machine: {os.cpu_count()} CPUs; tarball: {args.tarball}; include: {' '.join(args.include)}")
    print(f"text: {text_mb:,.1f} MB ({best['build']['chars']:,} chars) in the files the globs pick")
    print(line("bare decompress+read:", "bare"))
    print(line("  the same, tarfile:", "stdlib"))
    print(line("corpus build:", "build"))
    ratio = best["build"]["seconds"] / best["bare"]["seconds"]
    ratio_stdlib = best["build"]["seconds"] / best["stdlib"]["seconds"]
    print(f"build / bare:         {ratio:.2f}x (against the tarfile reading: {ratio_stdlib:.2f}x)")
    print(f"peak RSS: bare {max(r[1] for r in runs['bare']):.0f} MB, build {max(r[1] for r in runs['build']):.0f} MB")


if __name__ == "__main__":
    main()
