"""The parts of bench/gpu.sh that are not another bench script, and the record every part's result goes to.

Each part writes its figures to one JSON file (``--json``, in a folder of parts' files); ``record`` then files
them, or the part's failure with its last log lines, under the part's name in ``OUT/gpu.json`` and writes
``OUT/gpu.md`` again from it, so whatever finished before a run was cut is kept.

    python bench/gpu_parts.py resume  --device cuda --json PARTS/resume.json
    python bench/gpu_parts.py quality --device cuda --budget 95 --json PARTS/quality.json
    python bench/gpu_parts.py serve   --device cuda --budget 35 --json PARTS/serve.json
    python bench/gpu_parts.py sweep   --device cuda --budget 40 --json PARTS/sweep.json
    python bench/gpu_parts.py record NAME --out OUT --json PARTS/NAME.json --rc RC --log LOG --wall-s S
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
# torch, Ray and rnnfarm are imported by the parts that use them: `record` runs after every part and costs little.

GOAL = 1.35  # nats/char: val on the 90/5/5 cut of tiny Shakespeare
QUALITY_SPEC = BENCH.parent / "deploy" / "shakespeare-quality.yaml"


# ---- running `rnnfarm` as a user would, within a budget -----------------------------------------------


def rnnfarm(argv: list[str], log: Path, budget_s: float) -> tuple[int | None, float, float]:
    """``python -m rnnfarm ARGV`` with JSON logs into ``log``; past ``budget_s`` it gets ctrl-C (it then stops
    its trials and checkpoints nothing half-written) and 20 s to end. The exit code (None: cut), start, end."""
    env = {**os.environ, "RNNFARM_LOG_FORMAT": "json"}
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rnnfarm", *argv], env=env, stdout=out, stderr=out)
        try:
            code = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = None
    return code, started, time.time()


def launched(name: str, storage: Path, log: Path, started: float, ended: float):
    from quality_bench.launch import Launched, parse_events

    from rnnfarm.layout import Run
    from rnnfarm.storage import Store

    events = parse_events(log.read_text(errors="replace").splitlines())
    return Launched(name, started, ended, events, Run.under(Store.at(str(storage)), name))


def tail(log: Path, lines: int = 15) -> list[str]:
    return log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []


# ---- resume exactness -------------------------------------------------------------------------------------


class Stopped(Exception):
    """Raised by the session below right after the first checkpoint: the run stops there, as if killed."""


def resume(args: argparse.Namespace) -> dict[str, Any]:
    """A run stopped after its first checkpoint and resumed, against one that never stopped and against a second
    unbroken run (what the kernels alone give), compared bitwise: weights, optimizer state, each rank's state."""
    import torch

    from rnnfarm import spec
    from rnnfarm.corpus.build import build
    from rnnfarm.engine.loop import Job, LocalSession, train
    from rnnfarm.layout import Run
    from rnnfarm.storage import Store

    class StopAfterCheckpoint(LocalSession):
        def report(self, metrics, folder, name):
            super().report(metrics, folder, name)
            raise Stopped(name)

    def trained(job: spec.JobSpec, folder: Path, session_type: type[LocalSession] = LocalSession) -> Path:
        """Train ``job`` with its checkpoints and trial in ``folder`` (resuming from the latest checkpoint
        there); the last checkpoint."""
        trial = Run(Store.at(str(folder / "run"))).trial()
        train(Job(job, built.folder, trial), session_type(folder / "checkpoints", device=args.device))
        return folder / "checkpoints" / f"checkpoint-{job.train.steps:06d}"

    small, steps = args.small, 8 if args.small else 40
    job_spec = spec.parse(
        {
            "name": "resume",
            "storage": str(args.storage),
            "model": {"layers": 2, "hidden": 32 if small else 512, "dropout": 0.2},  # dropout between layers
            "train": {
                "steps": steps,
                "eval_every": steps // 2,
                "batch_size": 4 if small else 64,
                "seq_len": 16 if small else 128,
                "warmup_steps": 2,
            },
            "samples": {"temperatures": [1.0], "length": 20},
            "cluster": {"workers": 1},
        }
    )
    built = build(Store.at(job_spec.storage), job_spec.corpus)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rnnfarm-gpu-resume-") as tmp:
        for precision, deterministic in [("fp32", False), ("auto", False), ("fp32", True)]:
            torch.use_deterministic_algorithms(deterministic)
            asked = job_spec.train.model_copy(update={"precision": precision})
            folder = Path(tmp) / f"{precision}-{deterministic}"
            job = job_spec.model_copy(update={"train": asked})
            straight, again = trained(job, folder / "straight"), trained(job, folder / "again")
            with contextlib.suppress(Stopped):
                trained(job, folder / "stopped", StopAfterCheckpoint)
            resumed = trained(job, folder / "stopped")
            rows.append(
                {
                    "precision": precision,
                    "deterministic": deterministic,
                    "steps": steps,
                    "stopped_at": steps // 2,
                    "resumed_vs_straight": compare(straight, resumed),
                    "two_straight_runs": compare(straight, again),
                }
            )
            torch.use_deterministic_algorithms(False)
    return {"device": args.device, "rows": rows}


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Tensors that differ between two checkpoints, and the largest difference."""
    import torch
    from safetensors.torch import load_file as load

    differing, total, largest = [], 0, 0.0
    for file in sorted(p.name for p in a.glob("*.safetensors")):
        first, second = load(str(a / file)), load(str(b / file))
        for key in first:
            total += 1
            if not torch.equal(first[key], second[key]):
                differing.append(f"{file}:{key}")
                diff = (first[key].double() - second[key].double()).abs().max().item()
                largest = max(largest, diff)
    return {"bitwise": not differing, "tensors": total, "differing": differing[:8], "max_abs_diff": largest}


# ---- the quality run ---------------------------------------------------------------------------------------


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """deploy/shakespeare-quality.yaml's model and schedule on one worker (the two CPU workers' global batch),
    its steps sized to the budget from the throughput part's rnnfarm chars/s; cut at the budget, it keeps the
    evaluations done."""
    import yaml
    from quality_bench.launch import curve

    from rnnfarm import spec

    data = yaml.safe_load(QUALITY_SPEC.read_text())
    t = data["train"]
    t["batch_size"] *= data["cluster"]["workers"]
    rate = measured_rate(args.json.parent, "fp16" if args.device == "cuda" else "fp32")
    train_s = max(10.0, args.budget - 35)  # Ray's start, the corpus build, the evaluations and the final one
    chars_per_step = t["batch_size"] * t["seq_len"]
    # measured at batch 128: at this batch a step moves fewer chars a second, so half the budget's worth
    steps = int(train_s * rate * 0.5 / chars_per_step) if rate else (1500 if args.device == "cuda" else 60)
    if args.small:
        data["model"].update(layers=1, hidden=64)
        t.update(batch_size=8, seq_len=32)
        steps = 20
    t.update(
        steps=steps, warmup_steps=max(1, round(t["warmup_steps"] * steps / t["steps"])), eval_every=max(1, steps // 6)
    )
    t["log_every"] = min(t["log_every"], t["eval_every"])
    data["samples"]["length"] = 200
    data["cluster"].update(workers=1, cpus_per_worker=1, use_gpu=args.device == "cuda")
    name = f"gpu-quality-{int(time.time())}"
    data.update(name=name, storage=str(args.storage))
    spec.parse(data)  # a spec this code refuses fails here, in one line, not after Ray has started
    with tempfile.TemporaryDirectory(prefix="rnnfarm-gpu-quality-") as tmp:
        spec_file, log = Path(tmp) / "quality.yaml", Path(tmp) / "log.jsonl"
        spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
        code, started, ended = rnnfarm(["run", str(spec_file)], log, args.budget - 5)
        run = launched(name, args.storage, log, started, ended)
        rows = curve(run) if run.run.store.exists() and run.run.trial().metrics_files() else []
        result = {
            "exit": code,
            "cut": code is None,
            "config": {k: data[k] for k in ("model", "train", "cluster")},
            "sized_from_chars_per_s": rate,
            "curve": rows,
            "best_val_loss": min((r["val_loss"] for r in rows), default=None),
            "goal": GOAL,
            "first_step_s": run.since("first step"),
            "wall_s": run.wall_s,
        }
        result["goal_met"] = result["best_val_loss"] is not None and result["best_val_loss"] <= GOAL
        if code not in (0, None):
            result["log"] = tail(log)
    if not rows:
        raise SystemExit("quality: the run left no evaluation:\n" + "\n".join(result.get("log", [])))
    return result


def measured_rate(parts: Path, precision: str) -> float | None:
    """rnnfarm's 2x512 chars/s from the throughput part's file in ``parts``, where it ran."""
    found = parts / f"throughput-{precision}.json"
    if not found.exists():
        return None
    rows = json.loads(found.read_text())["rows"]
    return next((r["rnnfarm"] for r in rows if r["model"] == "2x512"), None)


# ---- rnnfarm serve -----------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> dict[str, Any]:
    """`rnnfarm serve` of a 2x512 model with random weights, on the GPU, at concurrency 32 (bench/serve.py's
    requests and client); a few requests are also drawn the way `rnnfarm sample --seed` draws, to compare texts."""
    import requests
    import serve as serve_bench
    import torch

    from rnnfarm.engine import checkpoint
    from rnnfarm.engine.model import CharRNN
    from rnnfarm.launch.pipeline import free_ports
    from rnnfarm.spec import ModelSpec

    count, length, concurrency = (8, 20, 32) if args.small else (64, 200, 32)
    layers, hidden = (1, 32) if args.small else (2, 512)
    torch.manual_seed(0)
    model = CharRNN(len(serve_bench.VOCAB), ModelSpec(layers=layers, hidden=hidden, embedding=64)).eval()
    asked = serve_bench.bodies(count, length)
    with tempfile.TemporaryDirectory(prefix="rnnfarm-gpu-serve-") as tmp:
        checkpoint.save_model(Path(tmp), model, serve_bench.VOCAB, {"step": 0})
        (port,) = free_ports(1)
        argv = ["serve", tmp, "--port", str(port), "--max-length", str(length)]
        if args.device == "cuda":
            argv += ["--gpus-per-replica", "1"]
        log, url = Path(tmp) / "serve.log", f"http://127.0.0.1:{port}"
        env, launched_at = {**os.environ, "RNNFARM_LOG_FORMAT": "json"}, time.time()
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "rnnfarm", *argv], env=env, stdout=out, stderr=out)
        try:
            deadline = launched_at + args.budget * 0.6  # the rest is for the requests
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"rnnfarm serve ended (exit {proc.returncode}):\n" + "\n".join(tail(log)))
                try:
                    if requests.get(f"{url}/healthz", timeout=2).ok:
                        break
                except requests.RequestException:  # not listening yet, or too busy starting to answer
                    pass
                if time.time() > deadline:
                    raise SystemExit("rnnfarm serve did not answer /healthz in time:\n" + "\n".join(tail(log)))
                time.sleep(0.5)
            started_s = round(time.time() - launched_at, 1)
            info = requests.get(f"{url}/model", timeout=10).json()
            serve_bench.served(url, asked[:4], 4)  # warm-up
            wall, firsts, texts = serve_bench.served(url, asked, concurrency)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        loaded, _, _ = checkpoint.load_model(Path(tmp))
        few = 4
        plain_s, plain_texts = serve_bench.plain_loop(loaded, asked[:few])  # `rnnfarm sample --seed`'s way
    differing = sum(a != b for t, p in zip(texts[:few], plain_texts, strict=True) for a, b in zip(t, p, strict=True))
    return {
        "model": f"{layers}x{hidden}",
        "device_asked": args.device,
        "model_info": info,
        "start_s": started_s,
        "requests": count,
        "length": length,
        "concurrency": concurrency,
        "requests_per_s": count / wall,
        "chars_per_s": count * length / wall,
        "first_char_p50_ms": serve_bench.percentile(firsts, 50) * 1000,
        "first_char_p99_ms": serve_bench.percentile(firsts, 99) * 1000,
        "plain_cpu_loop_chars_per_s": few * length / plain_s,
        "chars_differing_from_sample_seed": f"{differing} of {few * length}",
    }


# ---- a sweep sharing one GPU -------------------------------------------------------------------------------


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Four one-worker trials at 0.25 GPU per worker: all four should run at once on one GPU."""
    import yaml

    from rnnfarm import spec

    name = f"gpu-sweep-{int(time.time())}"
    steps = 10 if args.small else 300
    resources: dict[str, Any] = {"workers": 1, "cpus_per_worker": 1, "driver_cpus": 0.01}
    if args.device == "cuda":
        resources["gpus_per_worker"] = 0.25
    data = {
        "name": name,
        "storage": str(args.storage),
        "corpus": {"name": "shakespeare", "options": {"variant": "tiny"}},
        "model": {"layers": 1 if args.small else 2, "hidden": 32 if args.small else 256, "dropout": 0.1},
        "train": {"steps": steps, "batch_size": 4 if args.small else 64, "seq_len": 32 if args.small else 128},
        "samples": {"temperatures": [0.8], "length": 50},
        "cluster": {"address": "local", "workers": 1},
        "tune": {
            "space": {"train.lr": {"grid": [0.001, 0.002, 0.004, 0.008]}},
            "samples": 1,
            "scheduler": {"kind": "none"},
            "resources": resources,
        },
    }
    data["train"].update(eval_every=steps // 2, log_every=steps // 2, warmup_steps=1)
    spec.parse(data)  # a spec this code refuses fails here, in one line
    with tempfile.TemporaryDirectory(prefix="rnnfarm-gpu-sweep-") as tmp:
        spec_file, log = Path(tmp) / "sweep.yaml", Path(tmp) / "log.jsonl"
        spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
        code, started, ended = rnnfarm(["run", str(spec_file)], log, args.budget - 5)
        run = launched(name, args.storage, log, started, ended)
        lines = tail(log)
    trials = []
    for trial in run.run.trials():
        evaluations = run.run.trial(trial).evaluations()
        trials.append(
            {
                "trial": trial,
                "steps": evaluations[-1]["step"] if evaluations else 0,
                "best_val_loss": min((e["val_loss"] for e in evaluations), default=None),
            }
        )
    result = {
        "exit": code,
        "cut": code is None,
        "gpus_per_worker": resources.get("gpus_per_worker"),
        "trials": trials,
        "most_trials_at_once": most_at_once(run.events),
        "wall_s": run.wall_s,
    }
    if code != 0:
        raise SystemExit(f"the sweep's rnnfarm run ended with {code}:\n" + "\n".join(lines))
    return result


def most_at_once(events: list[dict[str, Any]]) -> int:
    """The most trials running at one time, from the sweep's 'trial started' and 'trial ended' events."""
    running, most = 0, 0
    for event in events:  # in time order
        if event["event"] == "trial started":
            running += 1
            most = max(most, running)
        elif event["event"] == "trial ended":
            running -= 1
    return most


# ---- the record -------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import platform

    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        found |= {
            "gpu": torch.cuda.get_device_name(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "native_bf16": torch.cuda.is_bf16_supported(including_emulation=False),
        }
    try:
        import ray

        found["ray"] = ray.__version__
    except ImportError:
        pass
    return found


def versions_found(names: list[str]) -> dict[str, str | None]:
    """The versions of the machine's packages that the carry relies on (their list gives few)."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def record(args: argparse.Namespace) -> None:
    results_file = args.out / "gpu.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"parts": {}}
    if "machine" not in results:
        results["machine"] = machine()
    carry = Path(os.environ.get("GPU_SH_CARRY", "gpu-carry")) / "BUILD.json"
    if carry.exists() and "build" not in results:
        results["build"] = json.loads(carry.read_text())
        results["machine"]["packages"] = versions_found(results["build"].get("from_the_machine", []))
    part = {"wall_s": args.wall_s, "date": time.strftime("%Y-%m-%d %H:%M")}
    figures = args.json
    if args.rc == 0 and figures.exists():
        part |= {"status": "ok", "result": json.loads(figures.read_text())}
    else:
        part["status"] = "timed out" if args.rc in (124, 137) else f"failed (exit {args.rc})"
        part["log"] = tail(args.log, 12) if args.log else []
        if figures.exists():  # a part cut short may still have written what it finished
            part["result"] = json.loads(figures.read_text())
    results["parts"][args.name] = part
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "gpu.md").write_text(render(results))


def render(results: dict[str, Any]) -> str:
    """The results as a Markdown section that BENCHMARKS.md can take as it is."""
    m, parts = results["machine"], results["parts"]
    where = m.get("gpu") or "CPU (no GPU: a check of the script, not a GPU figure)"
    built = results.get("build", {})
    lines = [
        f"### GPU: {where}",
        "",
        f"`bash bench/gpu.sh`, torch {m['torch']}, Python {m['python']}, Ray {m.get('ray', '-')}"
        + (f", CUDA {m['cuda']}, cuDNN {m['cudnn']}, native bf16 {m['native_bf16']}" if "cuda" in m else "")
        + (f"; code {built['commit']}" if "commit" in built else ""),
        "",
        "| part | status | wall s |",
        "|---|---|---|",
        *[f"| {name} | {p['status']} | {p['wall_s']} |" for name, p in parts.items()],
    ]
    throughput = [(n, p["result"]) for n, p in parts.items() if n.startswith("throughput") and "result" in p]
    if throughput:
        lines += ["", "| model | precision | rnnfarm chars/s | plain cuDNN loop chars/s | ratio |"]
        lines += ["|---|---|---|---|---|"]
        for _, r in throughput:
            for row in r["rows"]:
                lines.append(
                    f"| {row['model']} | {r['precision']} | {row['rnnfarm']:,.0f} | {row['plain']:,.0f} "
                    f"| {row['ratio']:.3f} |"
                )
    if "result" in parts.get("resume", {}):
        lines += [
            "",
            "| resume: precision | deterministic kernels | resumed = unbroken, bitwise | "
            "two unbroken runs equal | tensors differing (max diff) |",
            "|---|---|---|---|---|",
        ]
        for row in parts["resume"]["result"]["rows"]:
            r, s = row["resumed_vs_straight"], row["two_straight_runs"]
            lines.append(
                f"| {row['precision']} | {row['deterministic']} | {r['bitwise']} | {s['bitwise']} "
                f"| {len(r['differing'])} of {r['tensors']} ({r['max_abs_diff']:.3g}) |"
            )
    if "result" in parts.get("quality", {}):
        q = parts["quality"]["result"]
        t = q["config"]["train"]
        lines += [
            "",
            "| quality run | steps | batch x seq | precision | best val nats/char | goal | met | wall s |",
            "|---|---|---|---|---|---|---|---|",
            f"| {q['config']['model']['layers']}x{q['config']['model']['hidden']}, tiny Shakespeare 90/5/5 "
            f"| {q['curve'][-1]['step']} of {t['steps']} | {t['batch_size']}x{t['seq_len']} | {t['precision']} "
            f"| {q['best_val_loss']:.4f} | <= {q['goal']} | {q['goal_met']} | {q['wall_s']} |",
        ]
    if "result" in parts.get("serve", {}):
        s = parts["serve"]["result"]
        lines += [
            "",
            "| rnnfarm serve | concurrency | requests/s | chars/s | first char p50 ms | p99 ms | vs `sample --seed` |",
            "|---|---|---|---|---|---|---|",
            f"| {s['model']}, {s['requests']} x {s['length']} chars | {s['concurrency']} | {s['requests_per_s']:.2f} "
            f"| {s['chars_per_s']:,.0f} | {s['first_char_p50_ms']:.1f} | {s['first_char_p99_ms']:.1f} "
            f"| {s['chars_differing_from_sample_seed']} differ |",
        ]
    if "result" in parts.get("sweep", {}):
        s = parts["sweep"]["result"]
        lines += [
            "",
            f"Sweep: {len(s['trials'])} trials at {s['gpus_per_worker'] or 'no'} GPU per worker, at most "
            f"{s['most_trials_at_once']} at once, {s['wall_s']} s; best val per trial: "
            + ", ".join(f"{t['best_val_loss']:.4f}" for t in s["trials"] if t["best_val_loss"] is not None),
        ]
    failed = [(n, p) for n, p in parts.items() if p["status"] != "ok" and p.get("log")]
    for name, p in failed:
        lines += ["", f"{name} {p['status']}; its last lines:", "", "```", *p["log"][-6:], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    for name in ("resume", "quality", "serve", "sweep"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cuda")
        p.add_argument("--small", action="store_true", help="toy sizes: a check of the script on a CPU")
        p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_SH_BUDGET", 60)), help="wall s")
        p.add_argument("--storage", type=Path, default=Path("rnnfarm-data").resolve())
        p.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("record", help="file a part's result (or failure) and write gpu.md again")
    p.add_argument("name")
    p.add_argument("--out", type=Path, required=True, help="the folder of gpu.json and gpu.md")
    p.add_argument("--json", type=Path, required=True, help="the part's own file")
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--log", type=Path)
    p.add_argument("--wall-s", type=float, required=True)
    args = parser.parse_args()
    if args.part == "record":
        record(args)
        return
    parts = {"resume": resume, "quality": quality, "serve": serve, "sweep": sweep}
    from rnnfarm.errors import UserError

    try:
        result = parts[args.part](args)
    except UserError as exc:  # a spec or an argument this code refuses: its one line
        raise SystemExit(f"{args.part}: {exc}") from None
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
