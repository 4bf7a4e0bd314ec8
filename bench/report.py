"""What the live report costs the driver: one whole write of ``report.html`` for a run of N trials with
20 evaluations each (synthetic metrics on a local folder), against rendering the same page without its
charts, so the share the charts take reads as a ratio. The follower waits 10x a write's time before the
next (``progress.REPORT_SHARE``), so a write's seconds here are also a tenth of the gap between writes.

    .venv/bin/python bench/report.py [--trials 1 8 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from unittest import mock

from rnnfarm.insight import charts, report
from rnnfarm.layout import Run
from rnnfarm.storage import Store

EVALS = 20


def synthetic_run(root: str, trials: int) -> Run:
    run = Run.under(Store.at(root), "bench")
    run.record.write_json({"name": "bench", "status": "running", "started": "2026-01-01T00:00:00Z"})
    for t in range(trials):
        trial = run.trial(f"c13fb_{t:05d}")
        trial.config.write_json({"settings": {"model.hidden": 128 + t}})
        for e in range(1, EVALS + 1):
            loss = 4.2 / (1 + 0.1 * e) + 0.002 * t
            metrics = {"step": 100 * e, "train_loss": loss, "val_loss": loss + 0.05, "val_bpc": loss / 0.693}
            trial.metrics(100 * e).write_json({**metrics, "chars_per_s": 25000.0 + t})
    return run


def timed(run: Run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        report.write(run)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'trials':>6}  {'write s':>8}  {'no charts s':>11}  {'ratio':>6}")
    for trials in args.trials:
        with tempfile.TemporaryDirectory() as root:
            run = synthetic_run(root, trials)
            whole = timed(run, args.repeats)
            with mock.patch.object(charts, "line_chart", return_value=""):  # the same page, charts left out
                bare = timed(run, args.repeats)
        print(f"{trials:>6}  {whole:>8.2f}  {bare:>11.3f}  {whole / bare:>6.0f}")


if __name__ == "__main__":
    main()
