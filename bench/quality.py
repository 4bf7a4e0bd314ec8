"""Quality and time to quality on this machine, next to the published figures.

Each figure runs ``rnnfarm run`` as a user would (a subprocess with JSON logs), is stored in a
results file (bench/results/quality.json) and the Quality section of BENCHMARKS.md is regenerated
from that file; the other sections are left as they are.

    .venv/bin/python bench/quality.py sweep --minutes 25          # a Tune sweep for a tiny-Shakespeare config
    .venv/bin/python bench/quality.py sweep-regular --minutes 50  # weight drop x weight averaging
    .venv/bin/python bench/quality.py sweep-regular --steps 600 --minutes 75  # 600-step trials, whatever the spec
    .venv/bin/python bench/quality.py placement                   # 2 workers x 1 thread, or 1 worker x 2 threads
    .venv/bin/python bench/quality.py shakespeare --minutes 30    # deploy/shakespeare-quality.yaml
    .venv/bin/python bench/quality.py long --corpus linux --minutes 30   # or --corpus complete (the plays)
    .venv/bin/python bench/quality.py levers --label cold-starts --calibrate --variant train.state_reset=0.01
                                                                  # variants of the quality run, scored on val
    .venv/bin/python bench/quality.py levers --label regular --variant model.weight_drop=0.3 --reuse cold-starts
                                                                  # a config and seed measured before: taken over
    .venv/bin/python bench/quality.py headline --label regular    # the quality figure: its best variant on val
    .venv/bin/python bench/quality.py ttq --reps 3                # wall time of `rnnfarm run` to val loss 1.89
    .venv/bin/python bench/quality.py startup --reps 5 --before REF   # launch -> first step, this tree and REF
    .venv/bin/python bench/quality.py corpora --minutes 2         # val bits/char of each built-in corpus
    .venv/bin/python bench/quality.py ngram                       # and each one's n-gram baseline
    .venv/bin/python bench/quality.py all                         # every figure on short budgets (~20 min)
    .venv/bin/python bench/quality.py render                      # BENCHMARKS.md from the results file
    .venv/bin/python bench/quality.py cuts --run RUN              # a kept quality run under others' cuts

``--quiet 0.8`` waits (up to ``--quiet-wait`` minutes) for the 1-minute load average to fall below
0.8 before each measurement; every figure records the load average at its start and end. A load average
counts the run's own workers too, so each figure also counts, from /proc, the CPU time of the processes
outside the run (quality_bench/cpu.py): where they took more than ``--outside-max`` (5%) of the CPUs' time,
the figure is not recorded in the results file but kept beside it, and the command exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from quality_bench import BENCHMARKS, DEPLOY, RESULTS, figures
from quality_bench.cpu import CpuWatch
from quality_bench.launch import command, machine
from quality_bench.markdown import minutes, read_results, render, write_results, write_section

from rnnfarm.layout import Run
from rnnfarm.storage import Store


def measure(figure: str, args: argparse.Namespace) -> None:
    started, code = time.time(), machine()["commit"]
    print(f"{figure}:", file=sys.stderr)
    alone = {"placement": figures.placement, "ttq": figures.ttq, "startup": figures.startup, "corpora": figures.corpora}
    alone["ngram"] = figures.ngram
    built_on = {"sweep": figures.sweep, "sweep-long": figures.sweep, "sweep-regular": figures.sweep}  # read earlier
    built_on |= {"shakespeare": figures.shakespeare, "long": figures.long, "levers": figures.levers}
    with CpuWatch() as cpu:  # from the end of the figure's last wait for a quiet machine (wait_quiet) to here
        args = argparse.Namespace(**vars(args), cpu=cpu)
        value = built_on[figure](args, read_results(args.results)) if figure in built_on else alone[figure](args)
    key = "shakespeare_gpu" if getattr(args, "gpu", False) else figure.replace("-", "_")
    key += f"_{args.corpus}" if figure == "long" else ""
    key += f"_{args.label}" if figure == "levers" else ""
    value["date"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    value["commit"] = code
    value["bench_s"] = round(time.time() - started)
    value["machine"] = {k: v for k, v in machine().items() if k != "commit"}
    value["outsiders"] = {**cpu.result(), "max_share": args.outside_max}
    if value["outsiders"]["outside_share"] > args.outside_max:  # kept apart, where nothing renders it
        refused = args.results.with_name(args.results.stem + ".refused.json")
        kept = read_results(refused)
        kept["figures"][key] = value
        write_results(refused, kept)
        sys.exit(
            f"{figure}: processes outside the run took {value['outsiders']['outside_share']:.1%} of the CPUs, over "
            f"--outside-max {args.outside_max:.1%}: not recorded (kept in {refused})"
        )
    results = read_results(args.results)  # as it is now: other figures may have been written meanwhile
    results["figures"][key] = value
    results.setdefault("machine", value["machine"])  # the machine of the figures that name none
    write_results(args.results, results)
    write_section(args.benchmarks, render(results))
    print(f"{figure}: done in {minutes(value['bench_s'])}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS, help="the Markdown file to update")
    parser.add_argument("--storage", type=Path, default=Path("rnnfarm-data").resolve())
    parser.add_argument("--keep", action="store_true", help="keep the runs on storage")
    parser.add_argument("--quiet", type=float, help="wait for the 1-minute load average to fall below this")
    parser.add_argument("--quiet-wait", type=float, default=60, help="minutes to wait for it at most")
    parser.add_argument(
        "--outside-max",
        type=float,
        default=0.05,
        help="the share of the CPUs' time processes outside the run may take while a figure is measured; over "
        "it, the figure is not recorded (it is kept in <results>.refused.json)",
    )
    sub = parser.add_subparsers(dest="figure", required=True)
    p = sub.add_parser("sweep", help="Tune sweep on tiny Shakespeare")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-sweep.yaml"))
    p.add_argument("--minutes", type=float, default=25)
    p = sub.add_parser("sweep-long", help="the second sweep: regularization at the quality run's length")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-sweep-long.yaml"))
    p.add_argument("--minutes", type=float, default=72)
    p.add_argument("--from-sweep", action="store_true", help="start from the first sweep's best settings")
    p = sub.add_parser("sweep-regular", help="the third sweep: weight drop and weight averaging")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-sweep-regular.yaml"))
    p.add_argument("--minutes", type=float, default=50)
    p.add_argument("--steps", type=int, help="trials of this many steps (the spec's schedule stretched to them)")
    p = sub.add_parser("placement", help="2 workers x 1 thread against 1 worker x 2 threads")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-quality.yaml"))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--reps", type=int, default=2)
    p = sub.add_parser("shakespeare", help="the quality run")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-quality.yaml"))
    p.add_argument("--minutes", type=float, default=figures.HEADLINE_MINUTES)
    p.add_argument("--from-sweep", action="store_true", help="apply the sweep figure's best settings to the spec")
    p.add_argument("--gpu", action="store_true", help="one GPU worker, the same steps (figure shakespeare_gpu)")
    p.add_argument(
        "--calibrate", action="store_true", help="steps that fit --minutes here, from a 60-step calibration (as long)"
    )
    p = sub.add_parser("levers", help="the quality run beside variants of it, the same steps, scored on val")
    p.add_argument("--label", required=True, help="names the figure (levers_<label>): cold-starts, regular, ...")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-quality.yaml"))
    p.add_argument("--variant", type=figures.settings, action="append", default=[], help="KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    p.add_argument("--minutes", type=float, default=figures.HEADLINE_MINUTES)
    p.add_argument("--calibrate", action="store_true", help="steps that fit --minutes here (as shakespeare)")
    p.add_argument("--steps", type=int, help="without --calibrate: this many steps (the spec's otherwise)")
    p.add_argument("--positions", type=int, default=32, help="the cold start's first positions scored")
    p.add_argument("--context", type=int, default=256, help="the characters read before them for the warm loss")
    p.add_argument("--cold-windows", type=int, default=4000, help="random windows of the cold-start measure")
    p.add_argument("--held-out", action="store_true", help="also test and nanoGPT's val+test: the chosen config only")
    p.add_argument(
        "--reuse", nargs="+", default=[], metavar="LABEL", help="rows of these levers figures: not trained again"
    )
    p = sub.add_parser("headline", help="the quality figure from a levers --held-out figure: its variant best on val")
    p.add_argument("--label", default="cold-starts", help="the levers figure (levers_<label>)")
    p = sub.add_parser("long", help="another corpus for the quality run's budget, beside its n-gram baseline")
    p.add_argument("--corpus", choices=["linux", "complete"], default="linux", help="complete: Shakespeare's plays")
    p.add_argument("--minutes", type=float, default=figures.HEADLINE_MINUTES)
    p = sub.add_parser("ttq", help="time to val loss 1.89")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-ttq.yaml"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threshold", type=float, default=figures.THRESHOLD)
    p = sub.add_parser("startup", help="launch to first step, phase by phase")
    p.add_argument("--spec", default=str(DEPLOY / "shakespeare-ttq.yaml"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--before", help="a git ref whose code is measured too, alternating")
    p = sub.add_parser("corpora", help="val bits/char of every built-in corpus")
    p.add_argument("--minutes", type=float, default=2)
    sub.add_parser("ngram", help="the n-gram baseline of every built-in corpus (the per-corpus table's column)")
    p = sub.add_parser("all", help="every figure on short budgets")
    p.add_argument("--sweep-minutes", type=float, default=4)
    p.add_argument("--sweep-long-minutes", type=float, default=3)
    p.add_argument("--run-minutes", type=float, default=4)
    p.add_argument("--corpus-minutes", type=float, default=0.4)
    sub.add_parser("render", help="regenerate the BENCHMARKS.md section from the results file")
    p = sub.add_parser("cuts", help="the quality run kept (--keep) under char-rnn's and nanoGPT's evaluations")
    p.add_argument("--run", required=True, help="the run's folder on storage")
    return parser


# What `all` changes of each figure's own defaults: short budgets, fewer repetitions.
ALL = {
    "sweep": lambda a: {"minutes": a.sweep_minutes},
    "sweep-long": lambda a: {"minutes": a.sweep_long_minutes, "from_sweep": True},
    "sweep-regular": lambda a: {"minutes": a.sweep_long_minutes},
    "placement": lambda a: {"steps": 90, "reps": 1},
    "shakespeare": lambda a: {"minutes": a.run_minutes, "from_sweep": True},
    "ttq": lambda a: {"reps": 1},
    "startup": lambda a: {"reps": 2},
    "corpora": lambda a: {"minutes": a.corpus_minutes},
    "ngram": lambda a: {},
}


def main() -> None:
    args = parser().parse_args()
    args.storage.mkdir(parents=True, exist_ok=True)

    if args.figure == "render":
        write_section(args.benchmarks, render(read_results(args.results)))
        return
    if args.figure == "cuts":  # the quality figure's kept run, scored under the published figures' cuts
        theirs = figures.their_cuts(args.run)
        results = read_results(args.results)
        corpus = Store.at(Run(Store.at(args.run)).info()["corpus"]["url"])
        results["figures"]["shakespeare"]["ngram"] = figures.ngram_beside(corpus)
        theirs["scored"] = {
            "command": command(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": machine()["commit"],
        }
        results["figures"]["shakespeare"]["theirs"] = theirs
        write_results(args.results, results)
        write_section(args.benchmarks, render(results))
        return
    if args.figure == "headline":  # scores the levers' kept runs; the training and its measures were theirs
        results = read_results(args.results)
        results["figures"]["shakespeare"] = figures.headline(args, results)
        write_results(args.results, results)
        write_section(args.benchmarks, render(results))
        return
    if args.figure != "all":
        measure(args.figure, args)
        return
    started = time.time()
    for figure, changes in ALL.items():
        own = {k: v for k, v in vars(parser().parse_args([figure])).items() if k not in vars(args)}  # its defaults
        measure(figure, argparse.Namespace(**{**vars(args), **own, **changes(args)}))
    print(f"all: {minutes(time.time() - started)}", file=sys.stderr)


if __name__ == "__main__":
    main()
