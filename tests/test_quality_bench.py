"""bench/quality.py's figures: the specs it runs are valid jobs, its results file is complete, and the Quality
section of BENCHMARKS.md is exactly what that file renders (no figure edited by hand)."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from rnnfarm import spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    """bench/quality.py's package: the paths it reads and the Markdown it renders."""
    from bench import quality_bench
    from bench.quality_bench import markdown

    paths = {name: getattr(quality_bench, name) for name in ("DEPLOY", "RESULTS", "BENCHMARKS")}
    return SimpleNamespace(
        **paths, HEADING=markdown.HEADING, render=markdown.render, write_section=markdown.write_section
    )


@pytest.fixture(scope="module")
def results(quality):
    return json.loads(quality.RESULTS.read_text())


def test_the_quality_sweep_and_time_to_quality_specs_are_valid_jobs_on_tiny_shakespeare():
    names = ("quality", "sweep", "sweep-long", "sweep-regular", "ttq")
    jobs = {name: spec.load(ROOT / "deploy" / f"shakespeare-{name}.yaml") for name in names}
    for job in jobs.values():
        assert (job.corpus.name, job.corpus.options) == ("shakespeare", {"variant": "tiny"})
    # The third sweep and the quality run hold out a test split: chosen on val, scored once on test.
    splits = {name: (job.corpus.val, job.corpus.test) for name, job in jobs.items()}
    assert splits == {name: (0.05, 0.05) for name in ("quality", "sweep-regular")} | {
        name: (0.1, 0.0) for name in ("sweep", "sweep-long", "ttq")
    }
    assert all(jobs[name].tune is not None for name in ("sweep", "sweep-long", "sweep-regular"))
    assert jobs["quality"].tune is None and jobs["ttq"].tune is None


@pytest.mark.parametrize("name", ["sweep", "sweep-long", "sweep-regular"])
def test_a_sweep_trial_computes_the_steps_of_the_quality_run(quality, name):
    """One worker with the sweep's batch reads what the quality run's workers read together (engine/streams.py)."""
    sweep = spec.load(quality.DEPLOY / f"shakespeare-{name}.yaml")
    run = spec.load(quality.DEPLOY / "shakespeare-quality.yaml")
    assert sweep.tune.resources.workers * sweep.train.batch_size == run.cluster.workers * run.train.batch_size
    assert sweep.train.seq_len == run.train.seq_len


def test_the_third_sweep_trains_the_quality_runs_model_and_optimizer_on_shorter_trials(quality):
    sweep = spec.load(quality.DEPLOY / "shakespeare-sweep-regular.yaml")
    run = spec.load(quality.DEPLOY / "shakespeare-quality.yaml")
    shape = ("cell", "layers", "hidden", "embedding", "dropout")
    assert {k: getattr(sweep.model, k) for k in shape} == {k: getattr(run.model, k) for k in shape}
    same = ("optimizer", "weight_decay", "warmup_steps", "decay", "grad_clip", "precision")
    assert {k: getattr(sweep.train, k) for k in same} == {k: getattr(run.train, k) for k in same}
    assert abs(sweep.train.lr - run.train.lr) < 1e-4 and 2 * sweep.train.steps <= run.train.steps
    space = set(sweep.tune.space)
    assert space == {"model.weight_drop", "train.average.kind"} and sweep.tune.scheduler.kind == "none"


def test_trials_stretched_to_other_steps_keep_their_evaluations_and_average_over_the_same_share():
    from bench.quality_bench.launch import stretch

    data = {
        "train": {"steps": 1200, "eval_every": 200, "warmup_steps": 100, "average": {"kind": "ema", "decay": 0.998}}
    }
    stretch(data, 600)
    t = data["train"]
    assert (t["steps"], t["eval_every"], t["warmup_steps"]) == (600, 100, 60)
    assert t["average"]["decay"] == pytest.approx(0.996)  # a horizon of 250 steps, not 500: the same share
    swa = {"train": {"steps": 1000, "eval_every": 100, "warmup_steps": 0, "average": {"kind": "swa", "start": 750}}}
    stretch(swa, 2000)
    assert swa["train"]["average"]["start"] == 1500 and swa["train"]["eval_every"] == 200


def test_every_figure_records_its_command_date_and_the_load_at_its_start_and_end(results):
    assert results["machine"]["cores"] and results["machine"]["torch"] and results["machine"]["ray"]
    assert set(results["figures"]) == {
        "sweep",
        "sweep_long",
        "sweep_regular",
        "ngram",
        "long_linux",
        "long_complete",
        "placement",
        "shakespeare",
        "ttq",
        "startup",
        "corpora",
        "levers_cold-starts",
        "levers_regular",
    }
    for figure in results["figures"].values():
        assert figure["command"].startswith(".venv/bin/python bench/quality.py ")
        assert figure["date"] and figure["bench_s"] > 0
        assert figure["load"]["start"] >= 0 and figure["load"]["end"] >= 0


def test_the_quality_figure_is_the_levers_variant_best_on_val_and_its_rows_are_those_runs(results, quality):
    figure = results["figures"]["shakespeare"]
    levers = results["figures"][f"levers_{figure['from_levers']['label']}"]
    chosen = figure["from_levers"]["chosen"]
    means = {v: m["val_nanogpt"] for v, m in figure["from_levers"]["means"].items()}
    assert chosen == min(means, key=means.get) and set(means) == {r["variant"] for r in levers["runs"]}
    rows = [r for r in levers["runs"] if r["variant"] == chosen]
    assert [(s["seed"], s["best_val_loss"], s["test_loss"]) for s in figure["seeds"]] == [
        (r["seed"], r["best_val_loss"], r["test_loss"]) for r in rows
    ]
    assert all(s["val_test_nanogpt"] == r["val_test_nanogpt"] for s, r in zip(figure["seeds"], rows, strict=True))
    spec = yaml.safe_load((quality.DEPLOY / "shakespeare-quality.yaml").read_text())
    assert {k: figure["config"][k] for k in ("model", "corpus", "cluster")} == {
        k: spec[k] for k in ("model", "corpus", "cluster")
    }
    assert {k: v for k, v in figure["config"]["train"].items() if k != "seed"} == spec["train"]


def test_the_quality_run_is_scored_beside_char_rnn_and_nanogpt_under_their_own_evaluations(results):
    figure = results["figures"]["shakespeare"]
    assert (figure["config"]["corpus"]["val"], figure["config"]["corpus"]["test"]) == (0.05, 0.05)
    char_rnn, nanogpt = figure["theirs"]["char_rnn"], figure["theirs"]["nanogpt"]
    # char-rnn: its batch of 50 streams, state carried, on the last 5% of the text (the test split)
    assert char_rnn["split"] == "test" and char_rnn["eval"] == {"streams": 50, "warmup": 0, "window": 256, "seed": 0}
    # nanoGPT: 200 x 64 random windows of 256 from a zero state, on the last 10% (val, then test)
    assert nanogpt["split"] == "val+test" and {k: nanogpt["eval"][k] for k in ("windows", "window", "warmup")} == {
        "windows": 12_800,
        "window": 256,
        "warmup": 0,
    }
    assert char_rnn["step"] == nanogpt["step"] == figure["test"]["step"]  # the one checkpoint chosen on val
    assert all(f"--split {f['split']}" in f["command"] for f in (char_rnn, nanogpt))


def test_the_quality_section_of_benchmarks_md_is_what_the_results_file_renders(quality, results):
    text = quality.BENCHMARKS.read_text()
    start = text.index(quality.HEADING + "\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    assert section.rstrip("\n") == quality.render(results).rstrip("\n")


def test_writing_the_section_replaces_only_its_own(quality, results, tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(f"# Benchmarks\n\n## Before\n\nkept\n\n{quality.HEADING}\n\nold figures\n\n## After\n\nkept too\n")
    quality.write_section(page, quality.render(results))
    once = page.read_text()
    assert once.startswith("# Benchmarks\n\n## Before\n\nkept\n\n" + quality.HEADING)
    assert once.endswith("\n## After\n\nkept too\n") and "old figures" not in once
    quality.write_section(page, quality.render(results))
    assert page.read_text() == once


def test_the_section_is_appended_where_there_is_none(quality, results, tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    quality.write_section(page, quality.render(results))
    assert page.read_text().startswith("# Benchmarks\n\n## Other\n\nkept\n\n" + quality.HEADING + "\n")


BUSY = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"


def test_the_cpu_time_of_processes_outside_the_run_is_counted_apart_from_the_runs_own():
    """A busy process outside the run counts as an outsider's CPU time; a busy descendant of the run (its
    child's child, as Ray's workers are) counts as the run's own."""
    import subprocess
    import sys
    import time

    from bench.quality_bench.cpu import TICK, CpuWatch, processes

    def ticks() -> dict[int, int]:
        return {pid: spent for (pid, _), (_, spent) in processes().items()}

    # The run: a process whose child spins; beside it, an outsider that spins too (the test's child, not the run's)
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BUSY!r}])"
    run = subprocess.Popen([sys.executable, "-c", spawn])
    outsider = subprocess.Popen([sys.executable, "-c", BUSY])
    spinner = None
    try:
        while spinner is None:
            time.sleep(0.05)
            spinner = next((pid for (pid, _), (ppid, _) in processes().items() if ppid == run.pid), None)
        before = ticks()
        with CpuWatch(root=run.pid, interval=0.2) as watch:
            time.sleep(2)
        after = ticks()
    finally:
        for pid in (run.pid, outsider.pid, spinner):
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        run.wait(), outsider.wait()
    figures = watch.result()
    assert {pid for pid, _ in watch.own} == {run.pid, spinner}
    # Each spinner had some of the 2 s (the machine is shared): the run's is its own, the outsider's is not
    own, outside = ((after[pid] - before[pid]) / TICK for pid in (spinner, outsider.pid))
    assert figures["own_cpu_s"] == pytest.approx(own, abs=0.15) and own > 0.2
    assert figures["outside_cpu_s"] >= outside - 0.15 and outside > 0.2
    assert figures["outside_share"] == pytest.approx(
        figures["outside_cpu_s"] / (figures["wall_s"] * figures["cpus"]), abs=0.03
    )  # of the CPUs' time while watched; the seconds are rounded to tenths


def levers_args(spec: Path, **given) -> argparse.Namespace:
    """``bench/quality.py levers``'s arguments, as its parser's defaults give them, with ``given`` over them."""
    from bench.quality_bench import figures

    defaults = {"positions": 32, "context": 256, "cold_windows": 4000, "held_out": True, "quiet": None}
    defaults |= {"calibrate": False, "steps": None, "seeds": [1337], "variant": [], "reuse": [], "label": "again"}
    return argparse.Namespace(**{"spec": str(spec), "minutes": figures.HEADLINE_MINUTES, **defaults, **given})


@pytest.fixture
def measured(results, tmp_path):
    """The cold-start levers figure as the results hold it, its runs kept in folders of their own."""
    old = results["figures"]["levers_cold-starts"]
    rows = [{**r, "run": str(tmp_path / f"run-{i}")} for i, r in enumerate(old["runs"])]
    for row in rows:
        Path(row["run"]).mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(old["config"]))
    return SimpleNamespace(figure={**old, "runs": rows}, spec=spec)


def test_a_config_and_seed_that_a_levers_figure_measured_is_taken_over_not_trained_again(measured):
    """``levers --reuse LABEL``: every config and seed already measured comes from that figure's rows, marked
    so; nothing is launched (no storage is given to launch into)."""
    from bench.quality_bench import figures

    args = levers_args(measured.spec, reuse=["old"], variant=[{"train.state_reset": 0.05}], seeds=[1338, 1337])
    figure = figures.levers(args, {"figures": {"levers_old": measured.figure}})
    old = {(r["variant"], r["seed"]): r for r in measured.figure["runs"]}
    assert [(r["variant"], r["seed"]) for r in figure["runs"]] == [
        ("base", 1338),
        ("train.state_reset=0.05", 1338),
        ("base", 1337),
        ("train.state_reset=0.05", 1337),
    ]
    for row in figure["runs"]:
        was = old[(row["variant"], row["seed"])]
        assert {k: v for k, v in row.items() if k != "reused"} == was
        assert row["reused"] == {"label": "old", "variant": was["variant"], "date": measured.figure["date"]}


def test_only_a_row_of_the_same_config_seed_and_cuts_whose_run_is_kept_is_taken_over(measured):
    from bench.quality_bench import figures

    given = {"figures": {"levers_old": measured.figure}}
    found = figures.reusable(levers_args(measured.spec, reuse=["old"]), given)
    assert sorted(r["run"] for r in found.values()) == sorted(r["run"] for r in measured.figure["runs"])
    data = yaml.safe_load(measured.spec.read_text())
    assert figures.measured_config(spec.apply_settings(data, {"train.seed": 1337})) in found
    for other in ({"train.seed": 1339}, {"train.seed": 1337, "model.dropout": 0.4}):
        assert figures.measured_config(spec.apply_settings(data, other)) not in found
    assert figures.reusable(levers_args(measured.spec, reuse=["old"], positions=16), given) == {}  # another cut
    Path(measured.figure["runs"][0]["run"]).rmdir()  # a run no longer on storage cannot be scored again
    assert len(figures.reusable(levers_args(measured.spec, reuse=["old"]), given)) == len(found) - 1
