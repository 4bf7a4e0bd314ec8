"""The results file (bench/results/quality.json) and the Quality section of BENCHMARKS.md it renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rnnfarm.spec import EvalSpec
from rnnfarm.units import LN2, bits

HEADING = "## Quality and time to quality"

# The published figures the table stands next to; none was measured on this machine or this budget.
GOAL = 1.40  # nats/char: the tiny-Shakespeare run's goal on this machine

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


# How a val loss is measured here and by the published figures above: the same model scores differently
# under each cut, so a figure is only beside another under the same one.
THEIR_WINDOWS = "12,800 random windows of 256 characters, each from a zero state, on the last 10% of the text"
CUTS = [
    "How the val losses are cut. rnnfarm (the spec's `eval:` section): the split is cut into a fixed number "
    "of contiguous streams (64 by default) whatever the batch and workers a run trains with; each stream is "
    "read from a zero state with the state carried from window to window, and the first `eval.warmup` targets "
    "of each (0 by default) build up the state unscored. char-rnn (`train.lua`'s defaults) cuts its val into "
    "`batch_size` (50) streams and carries the state the same way; its val is not the end of the text but the "
    "last 5% of each of the 50 rows its loader cuts the whole text into, so its val text lies among its "
    "training text. nanoGPT (`estimate_loss`) averages 200 batches of 64 random 256-character windows of the "
    "last 10% of the text, each from a zero state: the first characters of every window are predicted with "
    "little context. `eval: {windows: 12800, window: 256}` (or `rnnfarm evaluate --windows 12800 --window "
    "256`) is that cut. The quality run below is scored under both cuts beside those two figures; the other "
    "rows use rnnfarm's own.",
]


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
    where = s.get("machine")
    on = f" on {where['cpu']} ({where['cores']} cores, torch {where['torch']})" if where else ""
    note = f"measured {s.get('date')}{on} on rnnfarm {s.get('commit')}, load average {load['start']} at the start"
    note += f" and {load.get('end')} at the end"
    if quiet is not None and load["start"] >= quiet:
        note += f" (never below {quiet} within the wait: measured under load)"
    if "outsiders" in s:
        o = s["outsiders"]
        note += (
            f"; processes outside the run took {o['outside_cpu_s']:g} CPU seconds, {o['outside_share']:.1%} of "
            f"what the {o['cpus']} CPUs gave in {minutes(o['wall_s'])} (at most {o['max_share']:.0%} is recorded)"
        )
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


REGULARIZERS = {
    "weight_drop": "weight drop",
    "dropout_input": "locked input dropout",
    "dropout_between": "locked dropout between layers",
    "dropout_embedding": "embedding dropout",
}


def regularization(m: dict[str, Any], t: dict[str, Any]) -> str:
    """The regularizers and weight averaging a config turns on, as words (empty where none is)."""
    on = [f"{words} {m[key]:g}" for key, words in REGULARIZERS.items() if m.get(key)]
    if t.get("state_reset"):
        on.append(f"cold starts (state reset {t['state_reset']:g} per stream and batch)")
    average = t.get("average") or {}
    if average.get("kind") == "ema":
        on.append(f"EMA of the weights (decay {average['decay']:g})")
    elif average.get("kind") == "swa":
        on.append(f"SWA of the weights from step {average['start']}")
    return "".join(f", {item}" for item in on)


def split_words(config: dict[str, Any]) -> str:
    corpus = config.get("corpus") or {"val": 0.1}
    val, test = corpus.get("val", 0.1), corpus.get("test", 0.0)
    if not test:
        return f"Val is the last {val:.0%} of the text (nanoGPT's split; char-rnn's is the last 5%)."
    return (
        f"The text is cut train {1 - val - test:.0%} | val {val:.0%} | test {test:.0%} (one text by position, in "
        "that order; a corpus of documents by each document's id): checkpoints are chosen on val, and the "
        "chosen one is scored once on test."
    )


def config_line(config: dict[str, Any]) -> str:
    m, t, c = config["model"], config["train"], config["cluster"]
    return (
        f"{m['layers']}x{m['hidden']} {m['cell'].upper()}, embedding {m['embedding']}, dropout {m['dropout']:g}"
        f"{regularization(m, t)}; "
        f"{c['workers']} worker(s) x batch {t['batch_size']} x seq_len {t['seq_len']}; "
        f"{t.get('optimizer', 'adam')} lr {t['lr']:g}"
        + (f" weight decay {t['weight_decay']:g}" if t.get("weight_decay") else "")
        + ", "
        f"warmup {t['warmup_steps']}, {t['decay']} decay, {t['steps']} steps, eval every {t['eval_every']}, "
        f"precision {t.get('precision', 'auto')}"
    )


def render(results: dict[str, Any]) -> str:
    f, m = results["figures"], results.get("machine", {})
    out = [HEADING, ""]
    out += [
        f"Machine, where a figure names no other: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, "
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
        out.append(f"| {a['what']}{where} | {nats:.3f} | {bits(nats):.3f} |")
    out += ["", *CUTS, ""]
    longs = sorted(k for k in f if k.startswith("long_"))
    for key, section in (
        ("shakespeare", render_shakespeare),
        ("shakespeare_gpu", render_gpu),
        *((k, render_levers) for k in sorted(f) if k.startswith("levers_")),
        *((k, render_long) for k in longs[:1]),
        ("sweep", render_sweep),
        ("sweep_long", render_sweep_long),
        ("sweep_regular", render_sweep_regular),
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
    goal = "met" if best is not None and best <= GOAL else "not met"
    out = [
        f"### Tiny Shakespeare in {budget:g} minutes on the CPU",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        f"`{s['spec']}`{sweep_settings(s)}: {config_line(s['config'])}. {split_words(s['config'])}",
        f"Whole `rnnfarm run`: {minutes(s['wall_s'])}, first training step after {s['first_step_s']} s; {measured(s)}.",
        "",
        f"**Best val loss within {budget:g} minutes of `rnnfarm run`: {fmt(best, 4)} nats/char "
        f"({fmt(bits(best) if best else None, 4)} bits/char)**: the goal of at most {GOAL:g} is {goal}. "
        f"char-rnn's 1.395 and nanoGPT's 1.4697 are GPU figures.",
        "",
        *seed_lines(s),
        *held_out_lines(s.get("test")),
        *ngram_lines(s.get("ngram"), s.get("test")),
        *their_lines(s.get("theirs")),
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
    overfits = last["val_loss"] - low["val_loss"] > 0.002 and last["train_loss"] < low["train_loss"]
    if overfits:
        out += [
            "",
            f"Val is lowest at step {low['step']} (epoch {low['epoch']}, {minutes(low['wall_s'])}); by the last "
            f"evaluation it is {last['val_loss']:.4f} while train loss went on down to {last['train_loss']:.4f}: "
            "past that point the model fits the training text and no longer the val text.",
        ]
    elif goal == "not met":
        out += still_falling(s)
    samples = s["samples"]
    out += ["", f"Samples of the best checkpoint (step {samples['step']}, val {samples['val_loss']:.4f}):", ""]
    for sample in samples["samples"]:
        out += [f"temperature {sample['temperature']:g}:", "", "```", sample["text"].strip("\n"), "```", ""]
    return out


def seed_lines(s: dict[str, Any]) -> list[str]:
    """A figure taken from a levers figure (``headline``): nanoGPT's protocol over its seeds beside nanoGPT's
    figure, each seed a row, and how the variant was chosen. Nothing where the figure is one run's."""
    seeds, chosen = s.get("seeds"), s.get("from_levers")
    if not seeds:
        return []
    protocol = [r["val_test_nanogpt"] for r in seeds]
    mean, nanogpt = sum(protocol) / len(protocol), ANCHORS["nanogpt"]["nats"]
    verdict = "below it" if max(protocol) < nanogpt else "not below it with every seed"
    means = "; ".join(f"{v}: {m['val_nanogpt']:.4f} (streamed {m['best_val']:.4f})" for v, m in chosen["means"].items())
    out = [
        f"**Under nanoGPT's protocol ({THEIR_WINDOWS}): {mean:.4f} nats/char, the mean of {len(seeds)} seeds "
        f"({', '.join(f'{x:.4f}' for x in protocol)}), beside nanoGPT's {nanogpt} on an A100: {verdict}.**",
        "",
        "| seed | steps | whole run | best val | val, nanoGPT's cut | test | val+test, nanoGPT's cut "
        "| test, char-rnn's cut |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in seeds:
        out.append(
            f"| {r['seed']} | {r['steps']} | {minutes(r['wall_s'])} | {r['best_val_loss']:.4f} "
            f"| {r['val_nanogpt']:.4f} | {r['test_loss']:.4f} | {r['val_test_nanogpt']:.4f} | {r['char_rnn']:.4f} |"
        )
    out += [
        "",
        f"The runs are the `{chosen['chosen']}` rows of the `{chosen['label']}` levers below, chosen on val alone: "
        f"the lowest mean val under nanoGPT's windows ({means}). Test and nanoGPT's val+test were scored after "
        f"the choice, from `{s['scored']}`. The curve, the samples and the tables that follow are seed "
        f"{seeds[0]['seed']}'s.",
        "",
    ]
    return out


def still_falling(s: dict[str, Any]) -> list[str]:
    """What stops a run short of the goal when its val loss still fell over its last quarter: the steps that
    fit the budget. Nothing where it did not."""
    rows, steps = s["curve"], s["config"]["train"]["steps"]
    last = rows[-1]
    earlier = next(r for r in rows if r["wall_s"] >= 0.75 * last["wall_s"])
    if last["val_loss"] >= earlier["val_loss"]:
        return []
    rates = sorted(r["chars_per_s"] for r in rows)
    sized = s.get("calibration_chars_per_s")
    why = f", the steps that its calibration ({sized:,} chars/s) fits in the budget" if sized else ""
    return [
        "",
        f"What limits it: the budget's steps, not overfitting. Val was still falling when the run ended "
        f"({earlier['val_loss']:.4f} at {minutes(earlier['wall_s'])}, {last['val_loss']:.4f} at "
        f"{minutes(last['wall_s'])}), after {steps} steps ({last['epoch'] + 1} epochs) at a median of "
        f"{rates[len(rates) // 2]:,} chars/s{why}.",
    ]


def held_out_lines(test: dict[str, Any] | None) -> list[str]:
    if not test:
        return []
    return [
        f"**Test loss of that checkpoint (step {test['step']}): {test['test_loss']:.4f} nats/char "
        f"({bits(test['test_loss']):.4f} bits/char)**, from `{test['command']}` (val under the same cut: "
        f"{test['val_loss']:.4f}; {EvalSpec(**test['eval']).describe()}).",
        "",
    ]


def ngram_lines(gram: dict[str, Any] | None, test: dict[str, Any] | None) -> list[str]:
    """The n-gram baseline of the run's own build, and how much harder its test text is for each model."""
    if not gram or not test:
        return []
    return [
        f"The n-gram baseline of the same build ({gram['method']}, order {gram['order']}, the order best on val) "
        f"scores val {gram['val_loss']:.4f} and test {gram['test_loss']:.4f}: the test text (the last 5% of the "
        f"text) is harder for it too, by {gram['test_loss'] - gram['val_loss']:.3f} nats/char against the "
        f"LSTM's {test['test_loss'] - test['val_loss']:.3f}.",
        "",
    ]


def their_lines(theirs: dict[str, Any] | None) -> list[str]:
    """The quality run's best checkpoint under char-rnn's and nanoGPT's own evaluations, beside their figures."""
    if not theirs:
        return []
    c, n = theirs["char_rnn"], theirs["nanogpt"]
    return [
        "The same checkpoint under the published figures' own evaluations:",
        "",
        "| evaluation | text scored | this run | published |",
        "|---|---|---:|---:|",
        f"| char-rnn's: {c['eval']['streams']} streams, state carried from a zero start | the last 5% of the text "
        f"(test) | {c['loss']:.4f} | {ANCHORS['char_rnn']['nats']} (its val: the last 5% of each of 50 rows; "
        "trained on 95%) |",
        f"| nanoGPT's: {n['eval']['windows']:,} random windows of {n['eval']['window']}, each from a zero state "
        f"| the last 10% (val+test: nanoGPT's val) | {n['loss']:.4f} | {ANCHORS['nanogpt']['nats']} |",
        "",
        f"From `{c['command']}` and `{n['command']}` ({n['seconds']:g} s).",
        "",
    ]


def render_long(_: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """Every ``long_*`` figure as a row: the corpus's 30 minutes beside its n-gram baseline, on one cut."""
    rows = [figures[k] for k in sorted(figures) if k.startswith("long_")]
    first = rows[0]
    out = [
        f"### Other corpora in {first['budget_minutes']:g} minutes, beside their n-gram baselines",
        "",
        "```sh",
        *(r["command"] for r in rows),
        "```",
        "",
        f"The per-corpus config below, not tuned for these corpora: {config_line(first['config'])}. "
        f"{split_words(first['config'])} The n-gram model ({first['ngram']['method']}) is fit on the same "
        "train split; its order is the one best on val.",
        "",
        "| corpus | train chars | steps | whole run | epochs | best val bits/char | test bits/char (checkpoint) "
        "| n-gram order | n-gram val | n-gram test |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        test, gram, last = r["test"], r["ngram"], r["curve"][-1]
        at = next((c["wall_s"] for c in r["curve"] if c["step"] == test["step"]), None)
        out.append(
            f"| {r['label']} | {r['chars']['train']:,} | {last['step']} | {minutes(r['wall_s'])} "
            f"| {last['chars'] / r['chars']['train']:.1f} | {bits(r['best_within_budget']):.4f} "
            f"| {bits(test['test_loss']):.4f} (step {test['step']}, at {minutes(at)}) | {gram['order']} "
            f"| {bits(gram['val_loss']):.4f} | {bits(gram['test_loss']):.4f} |"
        )
    calibrated = {
        r["label"]: f"{r['calibration_chars_per_s']:,} chars/s on {r.get('calibrated_on', 'shakespeare')}" for r in rows
    }
    out += [
        "",
        "The steps of each are what fits the budget, less 4 minutes for start-up, the corpus build, evaluations "
        "and samples, at the speed 60 steps measured just before ("
        + "; ".join(f"{label}: {rate}" for label, rate in calibrated.items())
        + "). The whole run is `rnnfarm run` from launch to exit, which builds the corpus unless an earlier run "
        "built the same one. Best val counts the evaluations within the budget; the test loss is that of the "
        "run's best checkpoint on val, which may come later: "
        + "; ".join(
            f"{r['label']}: val {bits(r['test']['val_loss']):.4f} bits/char at step {r['test']['step']}" for r in rows
        )
        + ".",
    ]
    out += [
        "",
        "Each row: " + "; ".join(f"{r['label']}: {measured(r)}" for r in rows) + ". "
        f"Karpathy, Johnson & Fei-Fei (2015) give {bits(0.84):.3f} bits/char (0.84 nats) for a 3-layer LSTM and "
        f"{bits(0.889):.3f} (0.889 nats) for a 20-gram model on their 6.2 M characters of Linux source (test).",
        "",
    ]
    for r in rows:
        samples = r["samples"]["samples"]
        sample = next((x for x in samples if x["temperature"] == 0.8), samples[0])
        text = sample["text"].strip("\n")
        out += [f"{r['label']}, temperature {sample['temperature']:g}:", "", "```", text, "```", ""]
    return out


def render_levers(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """Variants of the quality run at the same steps, each seed a row, scored on val alone; the cold-start
    columns are ``rnnfarm evaluate --cold-start``'s."""
    c, cold = s["config"], s["cold_cut"]
    held = any("test_loss" in r for r in s["runs"])
    sized = (
        f"the steps {s['budget_minutes']:g} minutes hold at the {s['calibration_chars_per_s']:,} chars/s a "
        "calibration measured just before"
        if s.get("calibration_chars_per_s")
        else "the spec's steps"
    )
    out = [
        f"### Levers at the run's length: {s['label']}",
        "",
        "```sh",
        s["command"],
        "```",
        "",
        f"`{s['spec']}` ({config_line(c)}), and each variant of it, trained for {sized}, each seed in turn; "
        f"{measured(s)}. Each row's best checkpoint on val, scored on val: under the spec's cut (streams), under "
        f"nanoGPT's ({s['nanogpt_val_cut']['windows']:,} random windows of {s['nanogpt_val_cut']['window']} from a "
        f"zero state), and the loss at the first {cold['positions']} positions after a zero state beside the same "
        f"targets after {cold['context']} characters of context ({cold['windows']:,} random windows, seed "
        f"{cold['seed']}: `rnnfarm evaluate --cold-start {cold['positions']}`).",
        "",
        "| variant | seed | steps | whole run | best val | val, nanoGPT's cut "
        f"| first {cold['positions']} after a zero state | with context | cold-start cost |"
        + (" test | val+test, nanoGPT's cut |" if held else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if held else ""),
    ]
    for r in s["runs"]:
        k = r["cold"]
        out.append(
            f"| {r['variant']}{reused_mark(r)} | {r['seed']} | {r['steps']} | {minutes(r['wall_s'])} "
            f"| {r['best_val_loss']:.4f} "
            f"| {r['val_nanogpt']:.4f} | {k['loss']:.4f} | {k['warm']:.4f} | {k['cost']:.4f} |"
            + (f" {fmt(r.get('test_loss'), 4)} | {fmt(r.get('val_test_nanogpt'), 4)} |" if held else "")
        )
    return [*out, ""]


def reused_mark(row: dict[str, Any]) -> str:
    """Where a levers row was taken over from an earlier figure (``--reuse``): which, and when it was measured."""
    if not (r := row.get("reused")):
        return ""
    return f" (as measured in levers_{r['label']}, {r['date']})"


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


def render_sweep_regular(s: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    return sweep_table("The third sweep: weight drop and weight averaging", s)


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
        "| corpus | train chars | val chars | vocab | epochs | training | val loss | val bits/char "
        "| n-gram val bits/char (order) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    found = figures.get("ngram", {}).get("rows", [])
    grams = {(g["corpus"], json.dumps(g["options"], sort_keys=True)): g for g in found}
    apart = 0
    for r in s["rows"]:
        g = grams.get((r["corpus"], json.dumps(r["options"], sort_keys=True)))
        gram = f"{bits(g['val_loss']):.4f} ({g['order']})" if g else "-"
        if g and g["train_chars"] != r["train_chars"]:  # another build's split of the documents
            gram += f" on {g['train_chars']:,} train chars"
            apart += 1
        out.append(
            f"| {r['label']} | {r['train_chars']:,} | {r['val_chars']:,} | {r['vocab']} | {r['epochs']} "
            f"| {fmt(r['train_s'], 0)} s | {r['val_loss']:.4f} | {r['val_bpc']:.4f} | {gram} |"
        )
    if "ngram" in figures:
        n = figures["ngram"]
        out += [
            "",
            f"The n-gram column: `{n['command']}`, {n['method']}, fit on its build's train split, the order (of "
            f"{n['orders'][0]} to {n['orders'][-1]}) best on val; {measured(n)}. A dash where the figure has no "
            "row for a corpus. "
            + (
                "Where the column names other train chars, the n-gram's build split the corpus's documents by "
                "another rule than the LSTM's row (a val set of other documents): the two figures of that row "
                "are not on one cut until `bench/quality.py corpora` is measured again."
                if apart
                else "Each row's n-gram was fit on a build with the LSTM row's train characters: one cut."
            ),
        ]
    out += [
        "",
        "Not comparable with the published figures above (different data size, model, budget, hardware): "
        f"Karpathy et al.'s 0.84 nats/char on Linux source ({bits(0.84):.2f} bits/char) came from 3-layer LSTMs "
        "trained to convergence on a GPU; Graves' 1.67 bits/char is on the whole of enwik8 (100 M bytes), not "
        "on a 6 MB sample of the same format.",
        "",
    ]
    return out
