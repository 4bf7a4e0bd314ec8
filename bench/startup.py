"""Seconds from launching ``rnnfarm run`` to the first training step, and where they go.

Each repetition launches the CLI on deploy/local.yaml (its model and workers, a few steps, a fresh
run name, the corpus already built) and reads the JSON log events' timestamps: ``training`` (the
corpus is checked and the embedded Ray is up) and the first ``first step`` (the TorchTrainer's
controller and workers started, the process group formed, data loaded, one step done).

    .venv/bin/python bench/startup.py --reps 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def event_times(stderr: str) -> dict[str, float]:
    """Unix time of the first occurrence of each log event."""
    times: dict[str, float] = {}
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "event" in event and "timestamp" in event:
            stamp = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            times.setdefault(event["event"], stamp)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--spec", default=str(ROOT / "deploy" / "local.yaml"))
    parser.add_argument("--storage", default="./rnnfarm-data")
    args = parser.parse_args()

    data = yaml.safe_load(Path(args.spec).read_text())
    data["storage"] = os.path.abspath(args.storage)
    data["train"].update(steps=5, eval_every=5, warmup_steps=0)
    data["samples"] = {"temperatures": [1.0], "length": 1}
    rnnfarm = str(Path(sys.executable).parent / "rnnfarm")
    env = {**os.environ, "RNNFARM_LOG_FORMAT": "json"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-") as tmp:
        spec_file = Path(tmp) / "job.yaml"
        spec_file.write_text(yaml.safe_dump(data))
        for rep in range(args.reps):
            name = f"bench-startup-{os.getpid()}-{rep}"
            launched = time.time()
            command = [rnnfarm, "run", str(spec_file), "--name", name]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            finished = time.time()
            shutil.rmtree(Path(args.storage) / "runs" / name, ignore_errors=True)
            if done.returncode != 0:
                sys.exit(f"rnnfarm run failed:\n{done.stderr[-3000:]}")
            times = event_times(done.stderr)
            rows.append(
                {
                    "ray_up_s": times["training"] - launched,
                    "first_step_s": times["first step"] - launched,
                    "total_s": finished - launched,
                }
            )
            print(", ".join(f"{k} {v:.1f}" for k, v in rows[-1].items()), file=sys.stderr)

    workers = data["cluster"]["workers"]
    print(f"rnnfarm run -> first training step ({workers} workers, {args.reps} reps, median [min-max]):")
    for key, label in (("ray_up_s", "corpus checked, Ray up"), ("first_step_s", "first step done")):
        values = [r[key] for r in rows]
        print(f"  {label:<24} {statistics.median(values):5.1f} s  [{min(values):.1f}-{max(values):.1f}]")


if __name__ == "__main__":
    main()
