"""Quality and time to quality on this machine, next to the published figures.

Each figure runs ``rnnfarm run`` as a user would (a subprocess with JSON logs), is stored in a
results file (bench/results/quality.json) and the Quality section of BENCHMARKS.md is regenerated
from that file; the other sections are left as they are.

    .venv/bin/python bench/quality.py sweep --minutes 25          # a Tune sweep for a tiny-Shakespeare config
    .venv/bin/python bench/quality.py placement                   # 2 workers x 1 thread, or 1 worker x 2 threads
    .venv/bin/python bench/quality.py shakespeare --minutes 30    # deploy/shakespeare-quality.yaml
    .venv/bin/python bench/quality.py ttq --reps 3                # wall time of `rnnfarm run` to val loss 1.89
    .venv/bin/python bench/quality.py startup --reps 5 --before REF   # launch -> first step, this tree and REF
    .venv/bin/python bench/quality.py corpora --minutes 2         # val bits/char of each built-in corpus
    .venv/bin/python bench/quality.py all                         # every figure on short budgets (~20 min)
    .venv/bin/python bench/quality.py render                      # BENCHMARKS.md from the results file

``--quiet 0.8`` waits (up to ``--quiet-wait`` minutes) for the 1-minute load average to fall below
0.8 before each measurement; every figure records the load average at its start and end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RESULTS = ROOT / "bench" / "results" / "quality.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADING = "## Quality and time to quality"
HEADLINE_MINUTES = 30  # the quality run's budget
SPEC_MINUTES = 20  # deploy/shakespeare-quality.yaml's steps fit in this many minutes of `rnnfarm run` here
THRESHOLD = 1.89  # nats/char: nanoGPT's README reports 1.88 after about 3 minutes of its CPU recipe
LN2 = math.log(2)

# The published figures the table stands next to; none was measured on this machine or this budget.
ANCHORS = {
    "char_rnn": {"what": "char-rnn, tiny Shakespeare, val", "nats": 1.395, "where": "GPU"},
    "nanogpt": {
        "what": "nanoGPT baby GPT (6x384, 10.7 M params), tiny Shakespeare, val",
        "nats": 1.4697,
        "where": "A100",
    },
    "nanogpt_cpu": {"what": "nanoGPT's CPU recipe, tiny Shakespeare, val after ~3 min", "nats": 1.88, "where": "CPU"},
    "linux": {
        "what": "Karpathy, Johnson & Fei-Fei 2015: 3-layer LSTM, 6.2 M chars of Linux source, test",
        "nats": 0.84,
    },
    "enwik8": {"what": "Graves 2013: LSTM on enwik8 (Hutter prize, 100 M bytes), test", "bpc": 1.67},
}

# Every built-in corpus, as the per-corpus figure builds it.
CORPORA = [
    ("shakespeare", {"variant": "tiny"}, "tiny Shakespeare"),
    ("shakespeare", {"variant": "complete"}, "complete Shakespeare (38 plays)"),
    ("wikipedia", {"variant": "raw"}, "Wikipedia dump sample, raw XML (enwik8's format)"),
    ("wikipedia", {"variant": "text"}, "Wikipedia dump sample, article wikitext"),
    ("latex", {}, "LaTeX (texlive-science-doc)"),
    ("linux", {"max_bytes": 6_200_000}, "Linux 6.1 core folders, first 6.2 MB of .c/.h"),
    ("names", {}, "US baby names (SSA), one per line"),
    ("files", {"url": sysconfig.get_paths()["stdlib"] + "/*.py"}, "files: Python's standard library, top-level .py"),
]

# The per-corpus config: one model for every corpus.
STANDARD = {
    "model": {"cell": "lstm", "layers": 2, "hidden": 512, "embedding": 64, "dropout": 0.0},
    "train": {"batch_size": 32, "seq_len": 128, "lr": 0.004, "warmup_steps": 30, "decay": "cosine", "keep_best": 1},
    "cluster": {"address": "local", "workers": 2, "cpus_per_worker": 1},
}


# --- running `rnnfarm run` and reading what it left ------------------------------------------------------------


def load_now() -> float:
    return round(os.getloadavg()[0], 2)


def wait_quiet(args: argparse.Namespace) -> dict[str, Any]:
    """Wait until the 1-minute load average is below ``--quiet`` (if given); what was waited and seen."""
    started, waited = time.time(), 0.0
    if args.quiet is not None:
        while load_now() >= args.quiet and waited < args.quiet_wait * 60:
            print(f"  load average {load_now()} >= {args.quiet}: waiting", file=sys.stderr)
            time.sleep(30)
            waited = time.time() - started
    return {"start": load_now(), "waited_s": round(waited), "quiet_below": args.quiet}


@dataclass
class Launched:
    """One `rnnfarm run`: when it started and ended, its JSON log events, and its run folder."""

    name: str
    launched: float
    ended: float
    events: list[dict[str, Any]]
    run: Path

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
    return Launched(name, launched, ended, parse_events(lines), storage / "runs" / name)


def evaluations(trial: Path) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in (trial / "metrics").glob("step-*.json")]
    return sorted(found, key=lambda m: m["step"])


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
    metrics = evaluations(launched.run / "trials" / trial)
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


def dotted(data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of spec ``data`` with dotted settings (``model.hidden: 512``) applied."""
    data = json.loads(json.dumps(data))
    for key, value in settings.items():
        section, field = key.split(".", 1)
        data.setdefault(section, {})[field] = value
    return data


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
            shutil.rmtree(run.run, ignore_errors=True)


# --- the figures --------------------------------------------------------------------------------------------------


def sweep(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """rnnfarm's Tune stage on tiny Shakespeare for ``--minutes``: the config the quality run uses. With
    ``--from-sweep`` it starts from the first sweep's best settings, except those it searches itself."""
    data = read_spec(args.spec)
    shorten(data, args.minutes * 60 / data["tune"]["time_budget_s"])  # trials that still finish in a short budget
    inherited = {}
    if getattr(args, "from_sweep", False):
        best = results["figures"]["sweep"]["best"]["settings"]
        inherited = {k: v for k, v in best.items() if k not in data["tune"]["space"]}
        data = dotted(data, inherited)
    data["tune"]["time_budget_s"] = int(args.minutes * 60)
    load = wait_quiet(args)
    run = launch(data, f"quality-sweep-{int(time.time())}", args.storage)
    load["end"] = load_now()
    import pyarrow.parquet as pq

    rows = pq.read_table(run.run / "leaderboard.parquet").to_pylist()
    space = list(data["tune"]["space"])
    trials = []
    for row in rows:
        metrics = evaluations(run.run / "trials" / row["trial"])
        trained = training_seconds(metrics)
        trials.append(
            {
                "trial": row["trial"],
                "status": row["status"],
                "settings": {k: row[k] for k in space if k in row},
                "best_val_loss": row["best_val_loss"],
                "steps": row["steps"],
                "train_s": round(trained[-1], 1) if trained else None,
                "chars_per_s": round(statistics.median(m["chars_per_s"] for m in metrics)) if metrics else None,
            }
        )
    best = next(t for t in trials if t["best_val_loss"] is not None)
    cleanup(args, run)
    return {
        "command": command(),
        "spec": str(Path(args.spec).relative_to(ROOT)) if Path(args.spec).is_relative_to(ROOT) else args.spec,
        "budget_minutes": args.minutes,
        "from_sweep": inherited,
        "base": {"model": data["model"], "train": data["train"], "resources": data["tune"]["resources"]},
        "space": data["tune"]["space"],
        "scheduler": data["tune"].get("scheduler"),
        "trials": trials,
        "best": {"trial": best["trial"], "settings": best["settings"], "val_loss": best["best_val_loss"]},
        "wall_s": run.wall_s,
        "load": load,
    }


def placement(args: argparse.Namespace) -> dict[str, Any]:
    """chars/s of the quality config with 2 workers x 1 thread (DDP over gloo) against 1 worker x 2 threads,
    at the same global batch, so both compute the same steps."""
    base = quiet_samples(read_spec(args.spec))
    batch = base["train"]["batch_size"] * base["cluster"]["workers"]
    steps = args.steps
    base["train"].update(steps=steps, eval_every=steps // 3, warmup_steps=0)
    variants = {
        "2 workers x 1 thread": {"cluster.workers": 2, "cluster.cpus_per_worker": 1, "train.batch_size": batch // 2},
        "1 worker x 2 threads": {"cluster.workers": 1, "cluster.cpus_per_worker": 2, "train.batch_size": batch},
    }
    load = wait_quiet(args)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(args.reps):
        for label, settings in variants.items() if rep % 2 == 0 else reversed(variants.items()):
            run = launch(dotted(base, settings), f"quality-placement-{int(time.time())}", args.storage)
            rates[label].append(steady_rate(curve(run)))
            cleanup(args, run)
    load["end"] = load_now()
    medians = {label: round(statistics.median(r)) for label, r in rates.items()}
    return {
        "command": command(),
        "config": {"model": base["model"], "global_batch": batch, "seq_len": base["train"]["seq_len"], "steps": steps},
        "chars_per_s": medians,
        "reps": {label: [round(r) for r in rs] for label, rs in rates.items()},
        "choice": max(medians, key=medians.get),
        "load": load,
    }


def step_cost(found: dict[str, Any], spec_model: dict[str, Any], model: dict[str, Any]) -> float:
    """How much longer a training step of ``model`` takes than one of ``spec_model``: the ratio of the median
    chars/s of the sweep's trials of each shape (layers x hidden); 1 where the sweep ran no trial of a shape."""

    def rate(m: dict[str, Any]) -> float | None:
        shape = {"model.layers": m["layers"], "model.hidden": m["hidden"]}
        return median(
            t["chars_per_s"]
            for t in found["trials"]
            if all(t["settings"].get(k, found["base"]["model"][k.split(".")[1]]) == v for k, v in shape.items())
        )

    ours, theirs = rate(spec_model), rate(model)
    return ours / theirs if ours and theirs else 1.0


def shakespeare(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """The quality run: deploy/shakespeare-quality.yaml (or the sweep's best settings on it), its steps scaled
    from the headline 30 minutes to ``--minutes``."""
    data = read_spec(args.spec)
    settings, slower = {}, 1.0
    if args.from_sweep:  # the first sweep's shape and learning rate, then the second's regularization
        found = results["figures"]["sweep"]
        settings = found["best"]["settings"]
        if "sweep_long" in results["figures"]:
            settings = {**settings, **results["figures"]["sweep_long"]["best"]["settings"]}
        slower = step_cost(found, data["model"], {**data["model"], **dotted(data, settings)["model"]})
        data = dotted(data, settings)
    t = data["train"]
    t["steps"] = round(t["steps"] / slower)  # the sweep's model may take longer a step than the spec's
    if args.gpu:  # one GPU worker with the global batch computes the same steps: the CPU run's config, timed
        t["batch_size"] *= data["cluster"]["workers"]
        data["cluster"].update(workers=1, use_gpu=True, cpus_per_worker=1)
    # A shorter budget than the spec needs scales its steps down; about a minute goes to start-up and evaluations.
    shorten(data, max(0.0, args.minutes - 1) / (SPEC_MINUTES - 1))
    load = wait_quiet(args)
    run = launch(data, f"quality-shakespeare-{int(time.time())}", args.storage)
    load["end"] = load_now()
    rows = curve(run)
    budget = args.minutes * 60
    within = [r for r in rows if r["wall_s"] is not None and r["wall_s"] <= budget]
    samples = json.loads((run.run / "best" / "samples.json").read_text())
    cleanup(args, run)
    return {
        "command": command(),
        "spec": str(Path(args.spec).relative_to(ROOT)) if Path(args.spec).is_relative_to(ROOT) else args.spec,
        "budget_minutes": args.minutes,
        "from_sweep": settings,
        "step_cost": round(slower, 2),
        "config": {k: data[k] for k in ("model", "train", "cluster")},
        "curve": rows,
        "best_val_loss": min(r["val_loss"] for r in rows),
        "best_within_budget": min((r["val_loss"] for r in within), default=None),
        "first_step_s": run.since("first step"),
        "wall_s": run.wall_s,
        "gpu": machine()["gpu"] if args.gpu else None,
        "samples": samples,
        "load": load,
    }


def ttq(args: argparse.Namespace) -> dict[str, Any]:
    """Wall time of `rnnfarm run` (start-up, corpus build, training, evaluations) until val loss first
    reaches the threshold; each repetition builds the corpus into a fresh storage folder."""
    data = read_spec(args.spec)
    load = wait_quiet(args)
    reps = []
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="rnnfarm-ttq-") as storage:
            run = launch(data, f"quality-ttq-{int(time.time())}", Path(storage))
            rows = curve(run)
        hit = next((r for r in rows if r["val_loss"] <= args.threshold), None)
        reps.append(
            {
                "first_step_s": run.since("first step"),
                "corpus_s": round(run.first("corpus built")["t"] - run.launched, 2)
                if run.first("corpus built")
                else None,
                "ray_up_s": run.since("training"),
                "reached_s": hit["wall_s"] if hit else None,
                "step": hit["step"] if hit else None,
                "chars": hit["chars"] if hit else None,
                "val_loss": hit["val_loss"] if hit else None,
                "train_s": hit["train_s"] if hit else None,
                "eval_s": round(hit["loop_s"] - hit["train_s"], 1)
                if hit
                else None,  # evaluations, samples, checkpoints
                "wall_s": run.wall_s,
                "curve": [{k: r[k] for k in ("step", "val_loss", "wall_s")} for r in rows],
            }
        )
        print(f"  reached {args.threshold} at {reps[-1]['reached_s']} s", file=sys.stderr)
    load["end"] = load_now()
    return {
        "command": command(),
        "spec": str(Path(args.spec).relative_to(ROOT)) if Path(args.spec).is_relative_to(ROOT) else args.spec,
        "threshold": args.threshold,
        "config": {k: data[k] for k in ("model", "train", "cluster")},
        "reps": reps,
        "median": {k: median([r[k] for r in reps]) for k in ("reached_s", "first_step_s", "train_s", "eval_s")},
        "load": load,
    }


def tree_python(ref: str, tmp: Path) -> tuple[str, Path]:
    """A Python that runs rnnfarm as committed at ``ref`` with this venv's packages (torch, ray, ...), and the
    folder to run it from (not this checkout, whose ``rnnfarm`` would be found first)."""
    src, venv = tmp / "src", tmp / "venv"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    packages = sysconfig.get_paths()["purelib"]
    target = Path(
        subprocess.check_output(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Path entries only: this venv's editable-install hook (a .pth of its own) is not run, so `rnnfarm` is ref's.
    (target / "rnnfarm-ref.pth").write_text(f"{src}\n{src / 'plugins'}\n{packages}\n")
    return str(venv / "bin" / "python"), src


def startup(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds from launching `rnnfarm run` to its first training step, phase by phase (imports and the corpus
    check, the embedded Ray, Ray Train's controller and workers up to the first step done), for one worker
    (the time-to-quality config) and for two (deploy/local.yaml's). With ``--before REF`` the code at REF is
    measured too, alternating with this tree's, in the same session."""
    placements = {}
    for label, path in (("1 worker", args.spec), ("2 workers", DEPLOY / "local.yaml")):
        data = quiet_samples({k: v for k, v in read_spec(path).items() if k != "tune"})
        data["train"].update(steps=5, eval_every=5, warmup_steps=0)
        placements[f"{label} ({Path(path).name})"] = data
    codes = {"this tree": (sys.executable, ROOT)}
    with tempfile.TemporaryDirectory(prefix="rnnfarm-before-") as tmp:
        if args.before:
            codes = {f"at {args.before}": tree_python(args.before, Path(tmp)), **codes}
        for data in placements.values():  # the corpus built, caches warm
            launch(data, f"quality-startup-warm-{int(time.time())}", args.storage)
        load = wait_quiet(args)
        rows: dict[str, dict[str, list[dict[str, float]]]] = {p: {c: [] for c in codes} for p in placements}
        for rep in range(args.reps):
            for placement, data in placements.items():
                for code, (python, cwd) in codes.items() if rep % 2 == 0 else reversed(codes.items()):
                    run = launch(data, f"quality-startup-{int(time.time())}", args.storage, python, cwd)
                    corpus = run.first("corpus already built") or run.first("corpus built")
                    rows[placement][code].append(
                        {
                            "corpus_s": round(corpus["t"] - run.launched, 2),
                            "ray_up_s": run.since("training"),
                            "first_step_s": run.since("first step"),
                            "wall_s": run.wall_s,
                        }
                    )
                    cleanup(args, run)
        load["end"] = load_now()
    phases = ("corpus_s", "ray_up_s", "first_step_s", "wall_s")
    return {
        "command": command(),
        "before": args.before,
        "median": {
            placement: {code: {p: median([r[p] for r in rs]) for p in phases} for code, rs in by_code.items()}
            for placement, by_code in rows.items()
        },
        "reps": rows,
        "load": load,
    }


def corpora(args: argparse.Namespace) -> dict[str, Any]:
    """Val bits/char of every built-in corpus: the same config and the same number of steps (``--minutes`` of
    training at the speed measured on tiny Shakespeare just before), one evaluation at the end."""
    base = quiet_samples({**json.loads(json.dumps(STANDARD)), "corpus": {"name": "shakespeare"}})
    calibration = dotted(base, {"train.steps": 60, "train.eval_every": 20, "train.warmup_steps": 0})
    load = wait_quiet(args)
    run = launch(calibration, f"quality-corpora-calibration-{int(time.time())}", args.storage)
    rate = steady_rate(curve(run))
    cleanup(args, run)
    steps = max(10, round(args.minutes * 60 * rate / chars_per_step(base)))
    rows = []
    for name, options, label in CORPORA:
        data = dotted(base, {"train.steps": steps, "train.eval_every": steps})
        data["corpus"] = {"name": name, "options": options}
        run = launch(data, f"quality-corpus-{name}-{int(time.time())}", args.storage)
        record = json.loads((run.run / "run.json").read_text())
        manifest = json.loads((Path(record["corpus"]["url"]) / "manifest.json").read_text())
        last = curve(run)[-1]
        rows.append(
            {
                "corpus": name,
                "options": options,
                "label": label,
                "train_chars": manifest["splits"]["train"]["chars"],
                "val_chars": manifest["splits"]["val"]["chars"],
                "vocab": len(manifest["vocab"]["symbols"]) if "symbols" in manifest["vocab"] else None,
                "val_loss": last["val_loss"],
                "val_bpc": last["val_bpc"],
                "train_loss": last["train_loss"],
                "epochs": round(last["chars"] / manifest["splits"]["train"]["chars"], 2),
                "train_s": last["train_s"],
                "wall_s": run.wall_s,
            }
        )
        print(f"  {label}: {last['val_bpc']:.3f} bits/char", file=sys.stderr)
        cleanup(args, run)
    load["end"] = load_now()
    return {
        "command": command(),
        "budget_minutes": args.minutes,
        "config": {**STANDARD, "steps": steps, "chars": steps * chars_per_step(base)},
        "calibration_chars_per_s": round(rate),
        "rows": rows,
        "load": load,
    }


# --- results file and BENCHMARKS.md ------------------------------------------------------------------------------


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


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"figures": {}}


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def write_section(path: Path, section: str) -> None:
    """Replace the Quality section of the Markdown file (from its heading to the next ``## ``), or append it."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line.rstrip() == HEADING), None)
    if start is None:
        before, after = lines, []
        if before and before[-1].strip():
            before.append("\n")
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = lines[:start], lines[end:]
    text = "".join(before) + section.rstrip("\n") + "\n" + ("\n" + "".join(after) if after else "")
    path.write_text(text)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def measured(s: dict[str, Any]) -> str:
    """When, on which code and under what load a figure was measured."""
    load, quiet = s["load"], s["load"].get("quiet_below")
    note = f"measured {s.get('date')} on rnnfarm {s.get('commit')}, load average {load['start']} at the start"
    note += f" and {load.get('end')} at the end"
    if quiet is not None and load["start"] >= quiet:
        note += f" (never below {quiet} within the wait: measured under load)"
    return note


def plot(points: list[tuple[float, float]], width: int = 60, height: int = 12) -> list[str]:
    """A text plot of (x, y) points: y down the side, x along the bottom."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = 0.0, max(xs), min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    for x, y in points:
        col = min(width - 1, round((x - x0) / (x1 - x0 or 1) * (width - 1)))
        row = min(height - 1, round((y1 - y) / (y1 - y0 or 1) * (height - 1)))
        grid[row][col] = "*"
    lines = []
    for i, cells in enumerate(grid):
        label = f"{y1 - (y1 - y0) * i / (height - 1):6.3f}" if i in (0, height // 2, height - 1) else " " * 6
        lines.append(f"{label} |{''.join(cells).rstrip()}")
    lines.append(" " * 7 + "+" + "-" * width)
    lines.append(" " * 8 + f"0{'':<{width - 12}}{x1:.0f} min")
    return lines


def config_line(config: dict[str, Any]) -> str:
    m, t, c = config["model"], config["train"], config["cluster"]
    return (
        f"{m['layers']}x{m['hidden']} {m['cell'].upper()}, embedding {m['embedding']}, dropout {m['dropout']:g}; "
        f"{c['workers']} worker(s) x batch {t['batch_size']} x seq_len {t['seq_len']}; "
        f"{t['optimizer']} lr {t['lr']:g}"
        + (f" weight decay {t['weight_decay']:g}" if t.get("weight_decay") else "")
        + ", "
        f"warmup {t['warmup_steps']}, {t['decay']} decay, {t['steps']} steps, eval every {t['eval_every']}, "
        f"precision {t['precision']}"
    )


def render(results: dict[str, Any]) -> str:
    f, m = results["figures"], results.get("machine", {})
    out = [HEADING, ""]
    out += [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, "
        f"{'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}; Python {m.get('python')}, torch {m.get('torch')}, "
        f"Ray {m.get('ray')}. The machine is shared with other work: each figure gives the load average at its "
        "start and end, and the rnnfarm commit it ran. Everything below is generated by `bench/quality.py` from "
        "`bench/results/quality.json`; each figure names the command that made it and its budget.",
        "",
        "Published figures for scale. None was measured here, on this data size, budget or hardware: "
        "they are not comparable, only a sense of where the numbers sit.",
        "",
        "| published | nats/char | bits/char |",
        "|---|---:|---:|",
    ]
    for a in ANCHORS.values():
        nats = a.get("nats", a.get("bpc", 0) * LN2)
        where = f" ({a['where']})" if "where" in a else ""
        out.append(f"| {a['what']}{where} | {nats:.3f} | {nats / LN2:.3f} |")
    out.append("")
    for key, section in (
        ("shakespeare", render_shakespeare),
        ("shakespeare_gpu", render_gpu),
        ("sweep", render_sweep),
        ("sweep_long", render_sweep_long),
        ("placement", render_placement),
        ("ttq", render_ttq),
        ("startup", render_startup),
        ("corpora", render_corpora),
    ):
        if key in f:
            out += section(f[key], f)
    return "\n".join(out) + "\n"


def value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def settings_text(settings: dict[str, Any]) -> str:
    """Dotted settings as Markdown: `model.hidden` = 512, `train.lr` = 0.004125."""
    return ", ".join(f"`{k}` = {value_text(v)}" for k, v in settings.items())


def sweep_settings(s: dict[str, Any]) -> str:
    if not s.get("from_sweep"):
        return ""
    chosen = settings_text(s["from_sweep"])
    cost = s.get("step_cost", 1.0)
    scaled = f", its steps divided by {cost:g}, the sweep's measured cost of a step of that model" if cost != 1 else ""
    return f" with the sweeps' best settings ({chosen}){scaled}"


def render_shakespeare(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    budget = s["budget_minutes"]
    best = s["best_within_budget"]
    goal = "met" if best is not None and best <= 1.45 else "not met"
    out = [
        f"### Tiny Shakespeare in {budget:g} minutes on the CPU",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        f"`{s['spec']}`{sweep_settings(s)}: {config_line(s['config'])}. "
        "Val is the last 10% of the text (char-rnn's and nanoGPT's split).",
        f"Whole `rnnfarm run`: {minutes(s['wall_s'])}, first training step after {s['first_step_s']} s; {measured(s)}.",
        "",
        f"**Best val loss within {budget:g} minutes of `rnnfarm run`: {fmt(best, 4)} nats/char "
        f"({fmt(best / LN2 if best else None, 4)} bits/char)**: the goal of at most 1.45 is {goal}. "
        f"char-rnn's 1.395 and nanoGPT's 1.4697 are GPU figures.",
        "",
        "| step | epoch | wall since launch | train loss | val loss | val bits/char | chars/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = s["curve"]
    shown = rows if len(rows) <= 16 else [rows[round(i * (len(rows) - 1) / 15)] for i in range(16)]
    for r in shown:
        out.append(
            f"| {r['step']} | {r['epoch']} | {minutes(r['wall_s'])} | {r['train_loss']:.4f} | {r['val_loss']:.4f} "
            f"| {r['val_bpc']:.4f} | {r['chars_per_s']:,} |"
        )
    points = [(r["wall_s"] / 60, r["val_loss"]) for r in rows if r["wall_s"] is not None]
    if len(points) > 1:
        out += ["", "Val loss (nats/char) against minutes since launch:", "", "```", *plot(points), "```"]
    low, last = min(rows, key=lambda r: r["val_loss"]), rows[-1]
    if last is not low:
        out += [
            "",
            f"Val is lowest at step {low['step']} (epoch {low['epoch']}, {minutes(low['wall_s'])}); by the last "
            f"evaluation it is {last['val_loss']:.4f} while train loss went on down to {last['train_loss']:.4f}: "
            "past that point the model fits the training text and no longer the val text.",
        ]
    samples = s["samples"]
    out += ["", f"Samples of the best checkpoint (step {samples['step']}, val {samples['val_loss']:.4f}):", ""]
    for sample in samples["samples"]:
        out += [f"temperature {sample['temperature']:g}:", "", "```", sample["text"].strip("\n"), "```", ""]
    return out


def render_gpu(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    cpu = figures.get("shakespeare")
    gpu = s.get("gpu") or "a GPU"
    out = [
        f"### The same run on {gpu}",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        f"{config_line(s['config'])}: one GPU worker with the CPU run's global batch computes the same steps.",
        "",
        "| where | whole `rnnfarm run` | first step | best val loss |",
        "|---|---:|---:|---:|",
        f"| {gpu} | {minutes(s['wall_s'])} | {s['first_step_s']} s | {fmt(s['best_val_loss'], 4)} |",
    ]
    if cpu:
        out.append(
            f"| this CPU (above) | {minutes(cpu['wall_s'])} | {cpu['first_step_s']} s "
            f"| {fmt(cpu['best_val_loss'], 4)} |"
        )
    return [*out, ""]


def scheduler_line(scheduler: dict[str, Any] | None) -> str:
    if not scheduler or scheduler.get("kind") != "asha":
        return "no early stopping"
    return (
        f"ASHA stopping trials that trail from step {scheduler['grace_period']} on "
        f"(reduction factor {scheduler['reduction_factor']:g})"
    )


def render_sweep(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    return sweep_table("The first sweep: shape and learning rate", s)


def render_sweep_long(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    return sweep_table("The second sweep: regularization at the run's length", s)


def sweep_table(title: str, s: dict[str, Any]) -> list[str]:
    r, train = s["base"]["resources"], s["base"]["train"]
    keys = list(s["space"])
    inherited = s.get("from_sweep")
    start = (
        f"Every trial starts from the first sweep's best settings ({settings_text(inherited)}). " if inherited else ""
    )
    out = [
        f"### {title} ({s['budget_minutes']:g} minutes)",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        start + f"`{s['spec']}`: rnnfarm's own Tune stage, {len(s['trials'])} trials of up to {train['steps']} steps "
        f"({train['optimizer']}, batch {train['batch_size']} x {train['seq_len']}), "
        f"{r['workers']} worker(s) per trial, "
        f"{scheduler_line(s['scheduler'])}, time budget {s['budget_minutes']:g} minutes; "
        f"whole run {minutes(s['wall_s'])}, "
        f"{measured(s)}. Space: " + "; ".join(f"`{k}` {json.dumps(v)}" for k, v in s["space"].items()) + ".",
        "",
        "| trial | status | " + " | ".join(keys) + " | best val loss | steps | training | chars/s |",
        "|---|---|" + "---:|" * len(keys) + "---:|---:|---:|---:|",
    ]
    for t in s["trials"]:
        values = " | ".join(value_text(t["settings"].get(k)) for k in keys)
        out.append(
            f"| {t['trial']} | {t['status']} | {values} | {fmt(t['best_val_loss'], 4)} | {t['steps']} "
            f"| {minutes(t['train_s'])} | {t['chars_per_s'] or '-':,} |"
        )
    out += ["", f"Best: {s['best']['trial']}, {settings_text(s['best']['settings'])}.", ""]
    return out


def render_placement(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    c = s["config"]
    rates = s["chars_per_s"]
    fast, slow = sorted(rates, key=rates.get, reverse=True)
    out = [
        "### Two workers, or one worker with two threads",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        f"The quality config ({c['model']['layers']}x{c['model']['hidden']}, global batch {c['global_batch']} x "
        f"{c['seq_len']}, {c['steps']} steps), `rnnfarm run` alternating the two placements, chars/s past the "
        f"first evaluation interval, median of {len(next(iter(s['reps'].values())))}; {measured(s)}.",
        "",
        "| placement | chars/s |",
        "|---|---:|",
        *[f"| {label} | {rate:,} |" for label, rate in rates.items()],
        "",
        f"{fast} is {rates[fast] / rates[slow]:.2f}x as fast here.",
        "",
    ]
    return out


def render_ttq(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    med = s["median"]
    out = [
        f"### Time to val loss {s['threshold']}",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        f"`{s['spec']}`: {config_line(s['config'])}. Each repetition runs `rnnfarm run` into an empty storage "
        "folder, so the time counts start-up, the corpus build (from the source already in rnnfarm's download "
        "cache), training and every evaluation (the whole val split, samples, a checkpoint) up to the first one at "
        f"or below {s['threshold']}; {measured(s)}.",
        "",
        f"**Wall time from launch to val loss {s['threshold']}: {fmt(med['reached_s'], 1)} s** (median of "
        f"{len(s['reps'])}); nanoGPT's README reports 1.88 after about 3 minutes of its CPU recipe.",
        "",
        f"Start-up (launch to the first training step): {fmt(med['first_step_s'], 1)} s.",
        "",
        "| rep | first step | corpus built | Ray up | val <= threshold at | step | val loss | training | evaluations |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(s["reps"], 1):
        out.append(
            f"| {i} | {fmt(r['first_step_s'], 1)} s | {fmt(r['corpus_s'], 1)} s | {fmt(r['ray_up_s'], 1)} s "
            f"| {fmt(r['reached_s'], 1)} s | {r['step']} | {fmt(r['val_loss'], 4)} | {fmt(r['train_s'], 1)} s "
            f"| {fmt(r['eval_s'], 1)} s |"
        )
    out.append("")
    return out


def render_startup(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    reps = len(next(iter(next(iter(s["reps"].values())).values())))
    out = [
        "### Start-up: launch to the first training step",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        f"Each config trained for 5 steps, the corpus already built, median of {reps} launches of each, "
        f"alternating; {measured(s)}. Phases, as times since launch: the corpus checked (imports, "
        "storage, the corpus's manifest found), the embedded Ray up, the first optimizer step done on every worker.",
        "",
        "| config | code | corpus checked | Ray up | first step done | whole run |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for placement, by_code in s["median"].items():
        for code, med in by_code.items():
            out.append(
                f"| {placement} | {code} | {fmt(med['corpus_s'], 1)} s | {fmt(med['ray_up_s'], 1)} s "
                f"| {fmt(med['first_step_s'], 1)} s | {fmt(med['wall_s'], 1)} s |"
            )
    out.append("")
    return out


def render_corpora(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    c = s["config"]
    m, t = c["model"], c["train"]
    out = [
        f"### Every built-in corpus, {s['budget_minutes']:g} minutes of training each",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        f"One config for all: {m['layers']}x{m['hidden']} LSTM, embedding {m['embedding']}, dropout {m['dropout']:g}, "
        f"2 workers x batch {t['batch_size']} x seq_len {t['seq_len']}, adam lr {t['lr']:g}, cosine decay; "
        f"{c['steps']} steps ({c['chars'] / 1e6:.1f} M chars), the number that takes {s['budget_minutes']:g} "
        f"minutes at the {s['calibration_chars_per_s']:,} chars/s measured on tiny Shakespeare just before; "
        f"one evaluation on the whole val split at the end. {measured(s)}.",
        "",
        "| corpus | train chars | val chars | vocab | epochs | training | val loss | val bits/char |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        out.append(
            f"| {r['label']} | {r['train_chars']:,} | {r['val_chars']:,} | {r['vocab']} | {r['epochs']} "
            f"| {fmt(r['train_s'], 0)} s | {r['val_loss']:.4f} | {r['val_bpc']:.4f} |"
        )
    out += [
        "",
        "Not comparable with the published figures above (different data size, model, budget, hardware): "
        f"Karpathy et al.'s 0.84 nats/char on Linux source ({0.84 / LN2:.2f} bits/char) came from 3-layer LSTMs "
        "trained to convergence on a GPU; Graves' 1.67 bits/char is on the whole of enwik8 (100 M bytes), not "
        "on a 6 MB sample of the same format.",
        "",
    ]
    return out


# --- command line ---------------------------------------------------------------------------------------------------


def measure(figure: str, args: argparse.Namespace) -> None:
    started, code = time.time(), machine()["commit"]
    print(f"{figure}:", file=sys.stderr)
    alone = {"placement": placement, "ttq": ttq, "startup": startup, "corpora": corpora}
    built_on = {"sweep": sweep, "sweep-long": sweep, "shakespeare": shakespeare}  # read the figures before them
    value = built_on[figure](args, read_results(args.results)) if figure in built_on else alone[figure](args)
    key = "shakespeare_gpu" if getattr(args, "gpu", False) else figure.replace("-", "_")
    value["date"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    value["commit"] = code
    value["bench_s"] = round(time.time() - started)
    results = read_results(args.results)  # as it is now: other figures may have been written meanwhile
    results["figures"][key] = value
    results["machine"] = machine()
    write_results(args.results, results)
    write_section(args.benchmarks, render(results))
    print(f"{figure}: done in {minutes(value['bench_s'])}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS, help="the Markdown file to update")
    parser.add_argument("--storage", type=Path, default=Path("rnnfarm-data").resolve())
    parser.add_argument("--keep", action="store_true", help="keep the runs on storage")
    parser.add_argument("--quiet", type=float, help="wait for the 1-minute load average to fall below this")
    parser.add_argument("--quiet-wait", type=float, default=60, help="minutes to wait for it at most")
    sub = parser.add_subparsers(dest="figure", required=True)
    p = sub.add_parser("sweep", help="Tune sweep on tiny Shakespeare")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-sweep.yaml"))
    p.add_argument("--minutes", type=float, default=25)
    p = sub.add_parser("sweep-long", help="the second sweep: regularization at the quality run's length")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-sweep-long.yaml"))
    p.add_argument("--minutes", type=float, default=72)
    p.add_argument("--from-sweep", action="store_true", help="start from the first sweep's best settings")
    p = sub.add_parser("placement", help="2 workers x 1 thread against 1 worker x 2 threads")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-quality.yaml"))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--reps", type=int, default=2)
    p = sub.add_parser("shakespeare", help="the quality run")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-quality.yaml"))
    p.add_argument("--minutes", type=float, default=HEADLINE_MINUTES)
    p.add_argument("--from-sweep", action="store_true", help="apply the sweep figure's best settings to the spec")
    p.add_argument("--gpu", action="store_true", help="one GPU worker, the same steps (figure shakespeare_gpu)")
    p = sub.add_parser("ttq", help="time to val loss 1.89")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-ttq.yaml"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p = sub.add_parser("startup", help="launch to first step, phase by phase")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-ttq.yaml"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--before", help="a git ref whose code is measured too, alternating")
    p = sub.add_parser("corpora", help="val bits/char of every built-in corpus")
    p.add_argument("--minutes", type=float, default=2)
    p = sub.add_parser("all", help="every figure on short budgets")
    p.add_argument("--sweep-minutes", type=float, default=4)
    p.add_argument("--sweep-long-minutes", type=float, default=3)
    p.add_argument("--run-minutes", type=float, default=4)
    p.add_argument("--corpus-minutes", type=float, default=0.4)
    sub.add_parser("render", help="regenerate the BENCHMARKS.md section from the results file")
    args = parser.parse_args()
    args.storage.mkdir(parents=True, exist_ok=True)

    if args.figure == "render":
        write_section(args.benchmarks, render(read_results(args.results)))
        return
    if args.figure != "all":
        measure(args.figure, args)
        return
    started = time.time()
    plan = {
        "sweep": {"spec": str(DEPLOY / "shakespeare-sweep.yaml"), "minutes": args.sweep_minutes, "from_sweep": False},
        "sweep-long": {
            "spec": str(DEPLOY / "shakespeare-sweep-long.yaml"),
            "minutes": args.sweep_long_minutes,
            "from_sweep": True,
        },
        "placement": {"spec": str(DEPLOY / "shakespeare-quality.yaml"), "steps": 90, "reps": 1},
        "shakespeare": {
            "spec": str(DEPLOY / "shakespeare-quality.yaml"),
            "minutes": args.run_minutes,
            "from_sweep": True,
            "gpu": False,
        },
        "ttq": {"spec": str(DEPLOY / "shakespeare-ttq.yaml"), "reps": 1, "threshold": THRESHOLD},
        "startup": {"spec": str(DEPLOY / "shakespeare-ttq.yaml"), "reps": 2, "before": None},
        "corpora": {"minutes": args.corpus_minutes},
    }
    for figure, settings in plan.items():
        measure(figure, argparse.Namespace(**{**vars(args), **settings}))
    print(f"all: {minutes(time.time() - started)}", file=sys.stderr)


if __name__ == "__main__":
    main()
