"""fp32 against bf16 autocast: val loss at equal steps, and the training speed each reached.

The same job (seed, data, schedule) is trained in-process twice, once per precision, on one worker;
the val loss is measured on the whole val split at every evaluation. Speed here is the loop's own
chars/s over all steps; bench/throughput.py interleaves short runs for a steadier speed figure.

    .venv/bin/python bench/precision.py --steps 600 --eval-every 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rnnfarm import log, spec
from rnnfarm.corpus.build import build
from rnnfarm.engine.loop import Job, LocalSession, train
from rnnfarm.layout import Trial
from rnnfarm.storage import Store


def run(args: argparse.Namespace, built, precision: str) -> list[dict]:
    job = spec.parse(
        {
            "name": "bench-precision",
            "storage": args.storage,
            "model": {"layers": args.layers, "hidden": args.hidden, "embedding": 64, "dropout": 0.0},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch,
                "seq_len": args.seq_len,
                "lr": 0.003,
                "warmup_steps": min(50, args.steps // 10),
                "eval_every": args.eval_every,
                "precision": precision,
            },
            "samples": {"temperatures": [1.0], "length": 1},
            "cluster": {"workers": 1, "threads_per_worker": args.threads},
        }
    )
    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-") as tmp:
        session = LocalSession(Path(tmp) / "checkpoints", device=args.device)
        train(Job(job, built.folder, Trial(Store.at(tmp) / "trial")), session)
    return session.reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--storage", default="./rnnfarm-data")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    log.configure("json", level=40)

    built = build(Store.at(args.storage), spec.CorpusSpec())
    reports = {precision: run(args, built, precision) for precision in ("fp32", "bf16")}

    print(f"{args.layers}x{args.hidden} LSTM, batch {args.batch} x seq_len {args.seq_len}, {args.threads} thread(s)")
    print(f"{'step':>6} {'fp32 val':>9} {'bf16 val':>9} {'bf16-fp32':>10}")
    for a, b in zip(reports["fp32"], reports["bf16"], strict=True):
        print(f"{a['step']:>6} {a['val_loss']:>9.4f} {b['val_loss']:>9.4f} {b['val_loss'] - a['val_loss']:>+10.4f}")
    speed = {p: statistics.fmean(r["chars_per_s"] for r in rs) for p, rs in reports.items()}
    print(f"chars/s: fp32 {speed['fp32']:,.0f}, bf16 {speed['bf16']:,.0f} ({speed['bf16'] / speed['fp32']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"reports": reports, "chars_per_s": speed}, indent=2))


if __name__ == "__main__":
    main()
