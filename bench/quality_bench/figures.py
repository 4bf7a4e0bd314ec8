"""The figures: each runs ``rnnfarm run`` (launch.py) on its spec and returns what the results file keeps of it."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from rnnfarm.corpus import shards
from rnnfarm.corpus.build import build
from rnnfarm.insight.evaluate import checkpoint_loss, cold_start
from rnnfarm.insight.ngram import METHOD, ORDERS, baseline
from rnnfarm.layout import Run
from rnnfarm.runs import leaderboard
from rnnfarm.spec import CorpusSpec, apply_settings
from rnnfarm.storage import Store

from . import DEPLOY, ROOT
from .launch import (
    Launched,
    chars_per_step,
    cleanup,
    command,
    curve,
    launch,
    load_now,
    machine,
    median,
    quiet_samples,
    read_spec,
    shorten,
    steady_rate,
    stretch,
    training_seconds,
    wait_quiet,
)

HEADLINE_MINUTES = 30  # the quality run's budget
SPEC_MINUTES = 24  # deploy/shakespeare-quality.yaml's steps fit in this many minutes of `rnnfarm run` on the Xeon
THRESHOLD = 1.89  # nats/char: nanoGPT's README reports 1.88 after about 3 minutes of its CPU recipe

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


def spec_name(path: str) -> str:
    """The spec file as the results name it: relative to the checkout when it is inside it."""
    return str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else path


def sweep(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """rnnfarm's Tune stage on tiny Shakespeare for ``--minutes``: the config the quality run uses. With
    ``--from-sweep`` it starts from the first sweep's best settings, except those it searches itself."""
    data = read_spec(args.spec)
    if getattr(args, "steps", None):  # trials of that many steps, sized for this machine
        stretch(data, args.steps)
    else:  # trials that still finish in a short budget
        shorten(data, args.minutes * 60 / data["tune"]["time_budget_s"])
    inherited = {}
    if getattr(args, "from_sweep", False):
        best = results["figures"]["sweep"]["best"]["settings"]
        inherited = {k: v for k, v in best.items() if k not in data["tune"]["space"]}
        data = apply_settings(data, inherited)
    data["tune"]["time_budget_s"] = int(args.minutes * 60)
    load = wait_quiet(args)
    run = launch(data, f"quality-sweep-{int(time.time())}", args.storage)
    load["end"] = load_now()
    rows = leaderboard.read(run.run)
    space = list(data["tune"]["space"])
    trials = []
    for row in rows:
        metrics = run.run.trial(row["trial"]).evaluations()
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
        "spec": spec_name(args.spec),
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
            run = launch(apply_settings(base, settings), f"quality-placement-{int(time.time())}", args.storage)
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
    # The first sweep's shape and learning rate, the second's regularization; not the third's weight drop,
    # which lost at the run's length (deploy/shakespeare-sweep-regular.yaml gives the figures).
    if args.from_sweep:
        found = results["figures"]["sweep"]
        settings = found["best"]["settings"]
        if "sweep_long" in results["figures"]:
            settings = {**settings, **results["figures"]["sweep_long"]["best"]["settings"]}
        slower = step_cost(found, data["model"], {**data["model"], **apply_settings(data, settings)["model"]})
        data = apply_settings(data, settings)
    t = data["train"]
    t["steps"] = round(t["steps"] / slower)  # the sweep's model may take longer a step than the spec's
    if args.gpu:  # one GPU worker with the global batch computes the same steps: the CPU run's config, timed
        t["batch_size"] *= data["cluster"]["workers"]
        data["cluster"].update(workers=1, use_gpu=True, cpus_per_worker=1)
    rate = None
    if args.calibrate:  # the steps this machine trains in the budget, the spec's schedule stretched to them
        load = wait_quiet(args)
        rate = calibrated(args, data)
    else:  # a shorter budget than the spec needs scales its steps down; about a minute goes to start-up and evals
        shorten(data, max(0.0, args.minutes - 1) / (SPEC_MINUTES - 1))
        load = wait_quiet(args)
    run = launch(data, f"quality-shakespeare-{int(time.time())}", args.storage)
    load["end"] = load_now()
    rows = curve(run)
    budget = args.minutes * 60
    within = [r for r in rows if r["wall_s"] is not None and r["wall_s"] <= budget]
    samples = run.run.best_samples.read_json()
    test = held_out(run, data)
    theirs = their_cuts(run.run.store.url) if test else None
    gram = ngram_beside(Store.at(run.run.info()["corpus"]["url"])) if test else None
    cleanup(args, run)
    return {
        "command": command(),
        "spec": spec_name(args.spec),
        "budget_minutes": args.minutes,
        "from_sweep": settings,
        "step_cost": round(slower, 2),
        "calibration_chars_per_s": round(rate) if rate else None,
        "config": trained_sections(data),
        "test": test,
        "ngram": gram,
        "theirs": theirs,
        "curve": rows,
        "best_val_loss": min(r["val_loss"] for r in rows),
        "best_within_budget": min((r["val_loss"] for r in within), default=None),
        "first_step_s": run.since("first step"),
        "wall_s": run.wall_s,
        "gpu": machine()["gpu"] if args.gpu else None,
        "samples": samples,
        "load": load,
    }


def held_out(run: Launched, data: dict[str, Any]) -> dict[str, Any] | None:
    """The best checkpoint (chosen on val) scored on val and, once, on the test split, as `rnnfarm evaluate
    RUN --split test` does; None where the corpus has no test split."""
    if not data["corpus"].get("test"):
        return None
    scored = {split: checkpoint_loss(run.run.store.url, split=split) for split in ("val", "test")}
    return {
        "command": f"rnnfarm evaluate {run.run.store.url} --split test",
        "step": scored["test"].step,
        "val_loss": round(scored["val"].loss, 4),
        "test_loss": round(scored["test"].loss, 4),
        "eval": scored["test"].cut.model_dump(exclude_none=True),
    }


# The published figures' own evaluations, reproduced on the quality run's best checkpoint (train 90% | val 5% |
# test 5%). char-rnn (train.lua, CharSplitLMMinibatchLoader): its batch_size (50) streams, each from a zero
# state carried to its end; nanoGPT (train.py's estimate_loss with train_shakespeare_char.py): 200 batches of
# 64 random windows of 256 characters, each from a zero state, on the last 10% of the text.
THEIR_CUTS = {
    "char_rnn": {"split": "test", "cut": {"streams": 50, "warmup": 0}},
    "nanogpt": {"split": "val+test", "cut": {"windows": 12_800, "window": 256, "warmup": 0}},
}


def ngram_beside(corpus: Store) -> dict[str, Any]:
    """The n-gram baseline of a run's own build: the order best on val, its val and test loss."""
    gram = baseline(corpus)
    order, val = gram.best("val")
    return {
        "method": METHOD,
        "order": order,
        "val_loss": round(val, 4),
        "test_loss": round(gram.nats[order]["test"], 4),
    }


def their_cuts(run_url: str) -> dict[str, Any]:
    """The best checkpoint of a run under char-rnn's and nanoGPT's evaluations, as `rnnfarm evaluate` runs them."""
    out = {}
    for name, how in THEIR_CUTS.items():
        started = time.perf_counter()
        scored = checkpoint_loss(run_url, split=how["split"], cut=how["cut"])
        options = " ".join(f"--{k} {v}" for k, v in how["cut"].items())
        out[name] = {
            "command": f"rnnfarm evaluate {run_url} --split {how['split']} {options}",
            "split": how["split"],
            "eval": scored.cut.model_dump(exclude_none=True),
            "step": scored.step,
            "loss": round(scored.loss, 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
    return out


def headline(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """The quality figure from a ``levers --held-out`` figure already measured: the variant with the lowest
    mean val under nanoGPT's windows (val alone chooses; the streamed val is shown beside it), its first seed's
    curve and samples, and every seed's val, test and nanoGPT val+test. Each kept run of that variant is also
    scored under char-rnn's and nanoGPT's cuts (`cuts`). Only scoring runs here: the training was the levers'."""
    levers = results["figures"].get(f"levers_{args.label}")
    if not levers:
        sys.exit(f"no levers_{args.label} figure in the results: measure it first (levers --label {args.label})")
    by: dict[str, list[dict[str, Any]]] = {}
    for row in levers["runs"]:
        by.setdefault(row["variant"], []).append(row)
    means = {
        v: {
            "val_nanogpt": round(statistics.mean(r["val_nanogpt"] for r in rows), 4),
            "best_val": round(statistics.mean(r["best_val_loss"] for r in rows), 4),
            "seeds": [r["seed"] for r in rows],
        }
        for v, rows in by.items()
    }
    chosen = min(means, key=lambda v: means[v]["val_nanogpt"])
    rows = by[chosen]
    if not all("held_out" in r and "curve" in r for r in rows):
        sys.exit(f"levers_{args.label} was measured without --held-out (or before runs kept their curves)")
    first = rows[0]
    budget = levers["budget_minutes"] or HEADLINE_MINUTES
    for row in rows:
        if not Path(row["run"]).exists():
            sys.exit(f"{row['run']}: the levers' runs were not kept (measure with --keep)")
    cuts = [their_cuts(row["run"]) for row in rows]
    seeds = [
        {
            "seed": row["seed"],
            "steps": row["steps"],
            "wall_s": row["wall_s"],
            "best_val_loss": row["best_val_loss"],
            "val_nanogpt": row["val_nanogpt"],
            "test_loss": row["test_loss"],
            "val_test_nanogpt": theirs["nanogpt"]["loss"],
            "char_rnn": theirs["char_rnn"]["loss"],
            "run": row["run"],
        }
        for row, theirs in zip(rows, cuts, strict=True)
    ]
    within = [r for r in first["curve"] if r["wall_s"] is not None and r["wall_s"] <= budget * 60]
    return {
        "command": levers["command"],
        "scored": command(),
        "spec": levers["spec"],
        "budget_minutes": budget,
        "from_sweep": {},
        "from_levers": {"label": args.label, "chosen": chosen, "settings": first["settings"], "means": means},
        "step_cost": 1.0,
        "calibration_chars_per_s": levers["calibration_chars_per_s"],
        "config": apply_settings(levers["config"], {**first["settings"], "train.seed": first["seed"]}),
        "test": first["held_out"],
        "ngram": ngram_beside(Store.at(Run(Store.at(first["run"])).info()["corpus"]["url"])),
        "theirs": cuts[0],
        "seeds": seeds,
        "curve": first["curve"],
        "best_val_loss": first["best_val_loss"],
        "best_within_budget": min((r["val_loss"] for r in within), default=None),
        "first_step_s": first.get("first_step_s"),
        "wall_s": first["wall_s"],
        "samples": first["samples"],
        **{k: levers[k] for k in ("load", "date", "commit", "machine", "outsiders", "bench_s")},
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
        "spec": spec_name(args.spec),
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


def calibrated(args: argparse.Namespace, data: dict[str, Any]) -> float:
    """Stretch spec ``data``'s schedule to the steps this machine trains in ``--minutes``, at the speed a
    calibration measures now (its corpus built apart: the run builds its own); that speed, in chars/s."""
    with tempfile.TemporaryDirectory(prefix="rnnfarm-calibration-", dir=args.storage) as elsewhere:
        rate = calibrate(args, data, Path(elsewhere))
    trains = rate * CALIBRATION_HOLDS * max(0.0, args.minutes * 60 - LONG_OVERHEAD_S)
    stretch(data, max(10, round(trains / chars_per_step(data))))
    return rate


def calibrate(args: argparse.Namespace, data: dict[str, Any], storage: Path | None = None) -> float:
    """chars/s of spec ``data``'s training here and now: 60 steps, past the first 20 (on ``storage``, by
    default the benchmark's)."""
    calibration = apply_settings(data, {"train.steps": 60, "train.eval_every": 20, "train.warmup_steps": 0})
    run = launch(calibration, f"quality-calibration-{int(time.time())}", storage or args.storage)
    rate = steady_rate(curve(run))
    cleanup(args, run)
    return rate


def corpora(args: argparse.Namespace) -> dict[str, Any]:
    """Val bits/char of every built-in corpus: the same config and the same number of steps (``--minutes`` of
    training at the speed measured on tiny Shakespeare just before), one evaluation at the end."""
    base = quiet_samples({**json.loads(json.dumps(STANDARD)), "corpus": {"name": "shakespeare"}})
    load = wait_quiet(args)
    rate = calibrate(args, base)
    steps = max(10, round(args.minutes * 60 * rate / chars_per_step(base)))
    rows = []
    for name, options, label in CORPORA:
        data = apply_settings(base, {"train.steps": steps, "train.eval_every": steps})
        data["corpus"] = {"name": name, "options": options}
        run = launch(data, f"quality-corpus-{name}-{int(time.time())}", args.storage)
        manifest = shards.load_manifest(Store.at(run.run.info()["corpus"]["url"]))
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


def ngram(args: argparse.Namespace) -> dict[str, Any]:
    """The n-gram baseline (`rnnfarm baseline`, interpolated Kneser-Ney, orders 1 to 10) of every corpus the
    per-corpus figure trains on, built the same way: its best order on val, and that order's val and test."""
    rows = []
    load = wait_quiet(args)
    for name, options, label in CORPORA:
        folder = build(Store.at(str(args.storage)), CorpusSpec(name=name, options=options)).folder
        started = time.time()
        result = baseline(folder, refit=True)
        order, val = result.best("val")
        rows.append(
            {
                "corpus": name,
                "options": options,
                "label": label,
                "train_chars": result.tokens["train"],
                "order": order,
                "val_loss": round(val, 4),
                "fit_s": round(time.time() - started, 1),
            }
        )
        print(f"  {label}: order {order}, {val:.4f} nats/char", file=sys.stderr)
    load["end"] = load_now()
    return {"command": command(), "method": METHOD, "orders": list(ORDERS), "rows": rows, "load": load}


# The 30-minute runs on other corpora: the per-corpus config, the quality run's split and budget. Their steps
# are what fits the budget at the speed measured just before, less this much for start-up, the corpus build,
# the evaluations and the samples.
LONG_OVERHEAD_S = 240
LONG_EVALS = 8
# The 30-minute Linux and complete-plays runs trained 15-25% slower than their calibrations: the quality run's
# calibrated steps leave that room.
CALIBRATION_HOLDS = 0.85


def long(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """One corpus trained for ``--minutes`` with the per-corpus config (not tuned for it), on a train | val |
    test cut; the best checkpoint's test loss, and the n-gram baseline of the same build beside it."""
    name, options, label = next(c for c in CORPORA if c[2].startswith(args.corpus) or c[0] == args.corpus)
    data = quiet_samples({**json.loads(json.dumps(STANDARD))}, length=300)
    load = wait_quiet(args)
    data["corpus"] = {"name": name, "options": options, "val": 0.05, "test": 0.05}
    with tempfile.TemporaryDirectory(prefix="rnnfarm-calibration-", dir=args.storage) as elsewhere:
        rate = calibrate(args, data, Path(elsewhere))  # the corpus built there: the run builds its own
    steps = max(10, round(max(0.0, args.minutes * 60 - LONG_OVERHEAD_S) * rate / chars_per_step(data)))
    data["train"] |= {"steps": steps, "eval_every": max(1, steps // LONG_EVALS), "warmup_steps": min(100, steps // 10)}
    run = launch(data, f"quality-long-{name}-{int(time.time())}", args.storage)
    load["end"] = load_now()
    rows = curve(run)
    corpus = Store.at(run.run.info()["corpus"]["url"])
    manifest = shards.load_manifest(corpus)
    budget = args.minutes * 60
    test = held_out(run, data)
    samples = run.run.best_samples.read_json()
    cleanup(args, run)
    return {
        "command": command(),
        "corpus": name,
        "options": options,
        "label": label,
        "budget_minutes": args.minutes,
        "config": trained_sections(data),
        "calibration_chars_per_s": round(rate),
        "calibrated_on": name,
        "chars": {s: manifest["splits"][s]["chars"] for s in ("train", "val", "test")},
        "curve": rows,
        "best_val_loss": min(r["val_loss"] for r in rows),
        "best_within_budget": min((r["val_loss"] for r in rows if r["wall_s"] and r["wall_s"] <= budget), default=None),
        "test": test,
        "ngram": ngram_beside(corpus),
        "first_step_s": run.since("first step"),
        "wall_s": run.wall_s,
        "samples": samples,
        "load": load,
    }


# nanoGPT's cut on val alone (its own scores val+test: that is kept for the figure chosen at the end)
NANOGPT_VAL = {"windows": 12_800, "window": 256, "warmup": 0}


def settings(text: str) -> dict[str, Any]:
    """``--variant``'s dotted settings, ``train.state_reset=0.01,model.dropout=0.4``, each value read as YAML."""
    import yaml

    pairs = [item.partition("=") for item in text.split(",")]
    if not all(key and sep for key, sep, _ in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE pairs joined by commas (train.state_reset=0.01)")
    return {key.strip(): yaml.safe_load(value) for key, _, value in pairs}


def trained_sections(data: dict[str, Any]) -> dict[str, Any]:
    """The sections of a spec that decide what a run trains, as a figure records its config."""
    return {k: data[k] for k in ("corpus", "model", "train", "cluster")}


def cold_cut(args: argparse.Namespace) -> dict[str, Any]:
    """How ``levers`` measures a cold start (``rnnfarm evaluate --cold-start``, its windows drawn with seed 0)."""
    return {"positions": args.positions, "context": args.context, "windows": args.cold_windows, "seed": 0}


def measured_config(data: dict[str, Any]) -> str:
    """What makes two levers rows the same measurement: the trained sections of the spec, seed included."""
    return json.dumps(trained_sections(data), sort_keys=True)


def reusable(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of the ``--reuse`` levers figures, by the config they trained, where they were scored under the
    same cuts as this figure's and their runs are still on storage: a config measured once is not trained again."""
    found: dict[str, dict[str, Any]] = {}
    for label in args.reuse:
        old = results["figures"].get(f"levers_{label}")
        if not old:
            sys.exit(f"--reuse {label}: no levers_{label} figure in the results")
        same_cuts = old["nanogpt_val_cut"] == NANOGPT_VAL and old["cold_cut"] == cold_cut(args)
        for row in old["runs"] if same_cuts else []:
            if Path(row["run"]).exists() and (not args.held_out or "held_out" in row):
                key = measured_config(apply_settings(old["config"], {**row["settings"], "train.seed": row["seed"]}))
                found[key] = {**row, "reused": {"label": label, "variant": row["variant"], "date": old["date"]}}
    return found


def levers(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """The quality run's spec, and the same with each ``--variant``'s settings, trained for the same steps with
    each of ``--seeds``, variants alternating. Each best checkpoint is scored on val alone: under the spec's
    cut, under nanoGPT's windows, and what a cold start costs it (``rnnfarm evaluate --cold-start``). Nothing is
    scored on test unless ``--held-out`` asks (for the config already chosen: its spread over seeds). A config
    and seed that a ``--reuse`` figure already measured is taken over from it, marked so, not trained again."""
    data = read_spec(args.spec)
    variants = {"base": {}} | {",".join(f"{k}={v}" for k, v in v.items()): v for v in args.variant}
    load = wait_quiet(args)
    rate = None
    if args.calibrate:
        rate = calibrated(args, data)
    elif args.steps:
        stretch(data, args.steps)
    runs, earlier = [], reusable(args, results)
    for seed in args.seeds:
        for label, changes in variants.items():
            spec = apply_settings(data, {**changes, "train.seed": seed})
            if done := earlier.get(measured_config(spec)):
                runs.append({**done, "variant": label, "settings": changes})
                print(f"  {label}, seed {seed}: taken over from levers_{done['reused']['label']}", file=sys.stderr)
                continue
            run = launch(spec, f"quality-levers-{int(time.time())}", args.storage)
            rows, url = curve(run), run.run.store.url
            cold = cold_start(url, **cold_cut(args))
            row = {
                "variant": label,
                "settings": changes,
                "seed": seed,
                "steps": rows[-1]["step"],
                "wall_s": run.wall_s,
                "first_step_s": run.since("first step"),
                "chars_per_s": round(steady_rate(rows)),
                "best_val_loss": min(r["val_loss"] for r in rows),
                "run": url,
                "curve": rows,
                "samples": run.run.best_samples.read_json(),
                "val_nanogpt": round(checkpoint_loss(url, split="val", cut=NANOGPT_VAL).loss, 4),
                "cold": {
                    "loss": round(cold.cold_loss, 4),
                    "warm": round(cold.warm_loss, 4),
                    "cost": round(cold.cost, 4),
                    "by_position": [round(x, 4) for x in cold.cold],
                },
            }
            if args.held_out:
                test, nanogpt = held_out(run, spec), THEIR_CUTS["nanogpt"]
                row["test_loss"] = test["test_loss"] if test else None
                row["val_test_nanogpt"] = round(
                    checkpoint_loss(url, split=nanogpt["split"], cut=nanogpt["cut"]).loss, 4
                )
                row["held_out"] = test
            runs.append(row)
            print(
                f"  {label}, seed {seed}: val {row['best_val_loss']:.4f}, cold-start cost {cold.cost:.4f}",
                file=sys.stderr,
            )
            cleanup(args, run)
    load["end"] = load_now()
    return {
        "command": command(),
        "spec": spec_name(args.spec),
        "label": args.label,
        "budget_minutes": args.minutes if args.calibrate else None,
        "calibration_chars_per_s": round(rate) if rate else None,
        "config": trained_sections(data),
        "cold_cut": cold_cut(args),
        "nanogpt_val_cut": NANOGPT_VAL,
        "runs": runs,
        "load": load,
    }
