"""Running ``rnnfarm run`` as a user would (a subprocess with JSON logs) and reading what it left on storage."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rnnfarm.layout import Run
from rnnfarm.storage import Store

from . import ROOT


def load_now() -> float:
    return round(os.getloadavg()[0], 2)


def wait_quiet(args: argparse.Namespace) -> dict[str, Any]:
    """Wait until the 1-minute load average is below ``--quiet`` (if given); what was waited and seen. The
    figure's count of CPU time outside the run (``args.cpu``) starts again when the wait ends."""
    started, waited = time.time(), 0.0
    if args.quiet is not None:
        while load_now() >= args.quiet and waited < args.quiet_wait * 60:
            print(f"  load average {load_now()} >= {args.quiet}: waiting", file=sys.stderr)
            time.sleep(30)
            waited = time.time() - started
    if getattr(args, "cpu", None) is not None:
        args.cpu.restart()
    return {"start": load_now(), "waited_s": round(waited), "quiet_below": args.quiet}


@dataclass
class Launched:
    """One `rnnfarm run`: when it started and ended, its JSON log events, and its run folder."""

    name: str
    launched: float
    ended: float
    events: list[dict[str, Any]]
    run: Run

    def first(self, event: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == event), None)

    def since(self, event: str) -> float | None:
        found = self.first(event)
        return round(found["t"] - self.launched, 2) if found else None

    @property
    def wall_s(self) -> float:
        return round(self.ended - self.launched, 1)


def parse_events(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON log events among the lines, each with its unix time as ``t``."""
    events = []
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            event = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "event" in event and "timestamp" in event:
            stamp = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            events.append({**event, "t": stamp.timestamp()})
    return sorted(events, key=lambda e: e["t"])


def launch(data: dict[str, Any], name: str, storage: Path, python: str = sys.executable, cwd: Path = ROOT) -> Launched:
    """Run ``rnnfarm run`` on the spec ``data`` under ``name`` (with ``python``, from ``cwd``); a failed run
    stops the benchmark."""
    data = {**data, "name": name, "storage": str(storage)}
    with tempfile.TemporaryDirectory(prefix="rnnfarm-quality-") as tmp:
        spec_file, log_file = Path(tmp) / "job.yaml", Path(tmp) / "log.jsonl"
        spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
        env = {**os.environ, "RNNFARM_LOG_FORMAT": "json"}
        print(f"  rnnfarm run {name} ...", file=sys.stderr, flush=True)
        launched = time.time()
        with log_file.open("w") as log:
            argv = [python, "-m", "rnnfarm", "run", str(spec_file)]
            code = subprocess.call(argv, cwd=cwd, env=env, stdout=log, stderr=log)
        ended = time.time()
        lines = log_file.read_text(errors="replace").splitlines()
    if code != 0:
        sys.exit(f"rnnfarm run {name} failed (exit {code}):\n" + "\n".join(lines[-30:]))
    return Launched(name, launched, ended, parse_events(lines), Run.under(Store.at(str(storage)), name))


def training_seconds(metrics: list[dict[str, Any]]) -> list[float]:
    """Seconds spent in training steps up to each evaluation (evaluation, sampling, checkpoints excluded)."""
    total, last, out = 0.0, 0, []
    for m in metrics:
        total += m["step_time_s"] * (m["step"] - last)
        last = m["step"]
        out.append(total)
    return out


def curve(launched: Launched, trial: str = "main") -> list[dict[str, Any]]:
    """Each evaluation: step, chars, losses, training seconds, and wall seconds since `rnnfarm run` started."""
    metrics = launched.run.trial(trial).evaluations()
    evals = {e["step"]: e["t"] for e in launched.events if e["event"] == "eval" and e.get("trial") == trial}
    rows = []
    for m, trained in zip(metrics, training_seconds(metrics), strict=True):
        at = evals.get(m["step"])
        rows.append(
            {
                "step": m["step"],
                "epoch": m["epoch"],
                "chars": m["chars"],
                "train_loss": round(m["train_loss"], 4),
                "val_loss": round(m["val_loss"], 4),
                "val_bpc": round(m["val_bpc"], 4),
                "chars_per_s": round(m["chars_per_s"]),
                "train_s": round(trained, 1),
                "loop_s": round(m["elapsed_s"], 1),
                "wall_s": round(at - launched.launched, 1) if at else None,
            }
        )
    return rows


def shorten(data: dict[str, Any], scale: float) -> None:
    """Scale spec ``data``'s schedule (steps, evaluations, warmup, ASHA's grace) down by ``scale`` < 1."""
    if scale >= 1:
        return
    t = data["train"]
    t["steps"] = max(10, round(t["steps"] * scale))
    t["eval_every"] = max(5, round(t["eval_every"] * scale))
    t["warmup_steps"] = min(t["warmup_steps"], t["steps"] // 10)
    scheduler = data.get("tune", {}).get("scheduler", {})
    if scheduler.get("grace_period"):
        scheduler["grace_period"] = max(1, round(scheduler["grace_period"] * scale))


def stretch(data: dict[str, Any], steps: int) -> None:
    """Give spec ``data`` ``steps`` training steps with as many evaluations as before, warmup at most a tenth,
    and a weight average over the same share of the run: an EMA's horizon, 1 / (1 - decay), and SWA's start
    scale with the steps."""
    t = data["train"]
    evals, scale = max(1, t["steps"] // t["eval_every"]), steps / t["steps"]
    if "average" in t:
        a = t["average"]
        if "decay" in a:
            a["decay"] = 1 - (1 - a["decay"]) / scale
        if "start" in a:
            a["start"] = round(a["start"] * scale)
    t |= {"steps": steps, "eval_every": max(1, steps // evals), "warmup_steps": min(t["warmup_steps"], steps // 10)}


def read_spec(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def quiet_samples(data: dict[str, Any], length: int = 1) -> dict[str, Any]:
    """Spec ``data`` sampling as little as possible at its evaluations (timing runs)."""
    return {**data, "samples": {"temperatures": [1.0], "length": length, "prime": "\n"}}


def command(argv: list[str] | None = None) -> str:
    return ".venv/bin/python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def chars_per_step(data: dict[str, Any]) -> int:
    return data["cluster"]["workers"] * data["train"]["batch_size"] * data["train"]["seq_len"]


def steady_rate(rows: list[dict[str, Any]]) -> float:
    """chars/s of a run past its first evaluation interval (which holds the first, slow steps)."""
    later = rows[1:] or rows
    return statistics.median(r["chars_per_s"] for r in later)


def cleanup(args: argparse.Namespace, *runs: Launched) -> None:
    if not args.keep:
        for run in runs:
            shutil.rmtree(run.run.store.url, ignore_errors=True)


def machine() -> dict[str, Any]:
    import ray
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "commit": (commit + ("+changes" if changed.stdout.strip() else "")) or None,
    }
