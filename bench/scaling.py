"""Data-parallel scaling through Ray Train: 2 workers against 1, one thread each, the same batch per worker.

Each repetition runs the job on an embedded Ray with 1 worker and with 2 (alternating which goes
first) and reads the training throughput the loop reports (chars/s summed over workers, evaluation
excluded). Perfect scaling is 2.0; gradient all-reduce over gloo and the machine's other load take
their share.

    .venv/bin/python bench/scaling.py --steps 40 --reps 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

from rnnfarm import log, spec
from rnnfarm.launch import pipeline


def chars_per_s(args: argparse.Namespace, workers: int, name: str) -> float:
    job = spec.parse(
        {
            "name": name,
            "storage": os.path.abspath(args.storage),
            "model": {"layers": args.layers, "hidden": args.hidden, "embedding": 64, "dropout": 0.0},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch,
                "seq_len": args.seq_len,
                "eval_every": args.steps,
                "warmup_steps": 0,
                "precision": args.precision,
            },
            "samples": {"temperatures": [1.0], "length": 1},
            "cluster": {"workers": workers, "cpus_per_worker": 1, "threads_per_worker": 1},
        }
    )
    try:
        outcome = pipeline.run(job)
        trial = outcome.run.trial()
        return trial.metrics(args.steps).read_json()["chars_per_s"]
    finally:
        shutil.rmtree(Path(args.storage) / "runs" / name, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--storage", default="./rnnfarm-data")
    args = parser.parse_args()
    log.configure("json", level=40)
    pipeline.start_local_ray(num_cpus=2)

    figures: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(args.reps):
        for workers in (1, 2) if rep % 2 == 0 else (2, 1):
            figures[workers].append(chars_per_s(args, workers, f"bench-scaling-{os.getpid()}-{workers}-{rep}"))
        last = f"1 worker {figures[1][-1]:,.0f}, 2 workers {figures[2][-1]:,.0f} chars/s"
        print(f"rep {rep + 1}/{args.reps}: {last}", file=sys.stderr)

    ratios = [b / a for a, b in zip(figures[1], figures[2], strict=True)]
    print(f"{args.layers}x{args.hidden} LSTM, batch {args.batch} x seq_len {args.seq_len} per worker, {args.precision}")
    print(f"1 worker  {statistics.median(figures[1]):>9,.0f} chars/s")
    print(f"2 workers {statistics.median(figures[2]):>9,.0f} chars/s")
    print(f"scaling   {statistics.median(ratios):.2f}x  [{min(ratios):.2f}-{max(ratios):.2f}] (2.0 is perfect)")


if __name__ == "__main__":
    main()
