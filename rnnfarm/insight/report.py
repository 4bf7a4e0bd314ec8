"""A run's report: one static HTML page (leaderboard, loss and speed plots, the best trial's samples across
steps) and, beside it, the neuron and prediction pages of the best checkpoint. Every page is one file with
inline CSS and SVG: it opens from a local folder or a pulled run, with no server and no network. While a
run goes on, its driver rewrites the report after every evaluation (``launch.progress``), and the page
reloads itself until the run has ended.

    <run>/report.html, <run>/report/neurons.html, <run>/report/predictions.html
"""

from __future__ import annotations

import math
import statistics
import time
from html import escape
from typing import Any

from .. import log
from ..corpus import shards
from ..corpus.novelty import NGRAM
from ..corpus.vocab import Vocab
from ..engine import checkpoint
from ..errors import UserError
from ..layout import REPORT_FOLDER, REPORT_PAGE, Run
from ..runs import archive, leaderboard
from ..runs.record import require
from ..runs.state import TrialState, trial_state
from ..storage import Store
from ..tables import cell
from ..units import bits
from . import charts, ngram, pages, viz
from .sample import load

REPORT = REPORT_PAGE
NEURONS, PREDICTIONS = f"{REPORT_FOLDER}/neurons.html", f"{REPORT_FOLDER}/predictions.html"
TEXT_CHARS = 1200  # how much text the neuron and prediction pages show
TOP_CELLS = 8
EVOLUTION_CHARS = 120  # of each sample in the evolution view, newlines shown as ↵
REFRESH_S = 15  # how often a live run's report reloads itself


STYLE = """
table.evolution td { padding: 1px 9px; } code.evolving { font: 12px ui-monospace, "DejaVu Sans Mono", monospace;
  white-space: pre; }
div.novelty { color: #666; font-size: 12px; }
"""


def copying(meter: dict[str, Any] | None) -> tuple[str, str]:
    """A sample's novelty meter as two short texts: its longest copied span, and its n-grams found in train."""
    if not meter:
        return "-", "-"
    share = meter["ngram_share"]
    return f"{meter['longest']} chars", "-" if share is None else f"{share:.1%}"


def copying_charts(rows: list[dict[str, Any]]) -> str:
    """The samples' copying from the train split over training, a line per temperature: it rises as a model
    overfits."""
    metered = [r for r in rows if r.get("novelty")]
    if not metered:
        return ""
    temperatures = sorted({r["temperature"] for r in metered})
    n = metered[0]["novelty"]["ngram"]

    def series(value) -> list[tuple[str, list[float], list[float | None]]]:
        out = []
        for t in temperatures:
            drawn = sorted((r for r in metered if r["temperature"] == t), key=lambda r: r["step"])
            out.append((f"temperature {t:g}", [r["step"] for r in drawn], [value(r["novelty"]) for r in drawn]))
        return out

    def percent(m: dict[str, Any]) -> float | None:
        return None if m["ngram_share"] is None else 100 * m["ngram_share"]

    share = charts.line_chart(series(percent), f"{n}-grams found in train", "% of the sample's", floor=0)
    longest = charts.line_chart(series(lambda m: m["longest"]), "longest span copied from train", "characters", floor=0)
    return f"<div class=plots>{share}{longest}</div>"


def val_excerpt(run: Run, record: dict[str, Any], chars: int) -> str | None:
    """The start of the run's corpus's val split, from the first line start; None when it cannot be read."""
    url = (record.get("corpus") or {}).get("url")
    if not url:
        return None
    folder = Store.at(url, run.store.options)
    try:
        manifest = shards.load_manifest(folder)
        if "val" not in manifest["splits"]:
            return None
        vocab = Vocab.from_json(manifest["vocab"])
        stop = min(2 * chars, manifest["splits"]["val"]["tokens"])
        text = vocab.decode(shards.read_tokens(folder, manifest, "val", 0, stop, vocab))
    except (UserError, OSError):
        return None
    start = text.find("\n") + 1  # the split may begin mid-line
    return text[start : start + chars] or None


def samples_excerpt(rows: list[dict[str, Any]], chars: int) -> str | None:
    """The best trial's last samples, when the corpus itself is out of reach."""
    text = "\n".join(r["prime"] + r["text"] for r in reversed(rows))
    return text[:chars] or None


def trial_rows(run: Run, states: dict[str, TrialState]) -> list[dict[str, Any]]:
    """The leaderboard when the run wrote one; while it runs, one row per trial from what it has stored."""
    if run.leaderboard("parquet").exists():
        return leaderboard.read(run)
    rows = []
    for trial, state in states.items():
        config = run.trial(trial).config
        settings = config.read_json().get("settings", {}) if config.exists() else {}
        best = state.best
        rows.append(
            {
                "trial": trial,
                "status": "running",
                **dict(sorted(settings.items())),
                "best_val_loss": best["val_loss"] if best else None,
                "best_val_bpc": best["val_bpc"] if best else None,
                "best_step": best["step"] if best else None,
                "steps": state.steps,
                "wall_s": None,
            }
        )
    return leaderboard.ranked(rows)


def leaderboard_table(rows: list[dict[str, Any]], metrics: dict[str, list[dict[str, Any]]]) -> str:
    settings = sorted({k for r in rows for k in r if "." in k})
    header = ["#", "trial", "status", *settings, "best val loss", "best val bpc", "best step", "steps", "chars/s"]
    header.append("wall s")
    body = []
    for i, r in enumerate(rows):
        speeds = [m["chars_per_s"] for m in metrics.get(r["trial"], []) if m.get("chars_per_s")]
        speed = f"{statistics.median(speeds):,.0f}" if speeds else "-"
        cells = [i + 1, r["trial"], r.get("status") or "-", *(cell(r.get(k)) for k in settings)]
        cells += [cell(r.get("best_val_loss")), cell(r.get("best_val_bpc")), cell(r.get("best_step"))]
        cells += [cell(r.get("steps")), speed, cell(r.get("wall_s"))]
        body.append(cells)
    numeric = {0, *range(3 + len(settings), len(header))}
    return pages.table(header, body, numeric, "leaderboard")


def plots(order: list[str], metrics: dict[str, list[dict[str, Any]]]) -> str:
    def series(key: str) -> list[tuple[str, list[float], list[float]]]:
        return [(t, [m["step"] for m in metrics[t]], [m.get(key) for m in metrics[t]]) for t in order if metrics[t]]

    overview = []
    if len(order) > 1:
        overview.append(charts.line_chart(series("val_loss"), "val loss, every trial", "nats/char", log_y=True))
    overview.append(charts.line_chart(series("chars_per_s"), "training speed", "chars/s"))
    per_trial = []
    for t in order:
        steps = [m["step"] for m in metrics[t]]
        lines = [
            ("train loss", steps, [m.get("train_loss") for m in metrics[t]]),
            ("val loss", steps, [m.get("val_loss") for m in metrics[t]]),
        ]
        per_trial.append(charts.line_chart(lines, f"trial {t}", "nats/char", log_y=True, width=380, height=230))
    return (
        f"<div class=plots>{''.join(overview)}</div>"
        f"<h2>Train and val loss of each trial (log scale)</h2><div class=plots>{''.join(per_trial)}</div>"
    )


def evolution(rows: list[dict[str, Any]], temperature: float) -> str:
    """One temperature's samples at every step, one short line each beside its val loss: noise, words, speakers."""
    drawn = sorted((r for r in rows if math.isclose(r["temperature"], temperature)), key=lambda r: r["step"])
    if not drawn:
        return ""
    lines = "".join(
        f"<tr><td class=num>{r['step']}</td><td class=num>{r['val_loss']:.3f}</td>"
        + "".join(f"<td class=num>{c}</td>" for c in copying(r.get("novelty")))
        + f"<td><code class=evolving>{escape((r['prime'] + r['text'])[:EVOLUTION_CHARS]).replace(chr(10), '↵')}"
        "</code></td></tr>"
        for r in drawn
    )
    return (
        "<table class=evolution><thead><tr><th>step</th><th>val loss</th><th>longest copy</th>"
        f"<th>{NGRAM}-grams in train</th><th>sample at temperature {temperature:g}</th></tr></thead>"
        f"<tbody>{lines}</tbody></table>"
    )


def novelty_line(row: dict[str, Any] | None) -> str:
    """A sample's novelty meter, under it (nothing for a sample stored without one)."""
    if not row or not row.get("novelty"):
        return ""
    longest, share = copying(row["novelty"])
    return (
        f"<div class=novelty>longest copy from train {longest} · {row['novelty']['ngram']}-grams in train {share}</div>"
    )


def samples_section(rows: list[dict[str, Any]]) -> str:
    """The samples as a table: a row per evaluation step, a column per temperature."""
    if not rows:
        return "<p>No samples stored yet.</p>"
    temperatures = sorted({r["temperature"] for r in rows})
    head = "".join(f"<th>temperature {t:g}</th>" for t in temperatures)
    lines = []  # HTML drops a newline just after <pre>: each sample gets one, so its own first newline shows
    for step in sorted({r["step"] for r in rows}):
        drawn = {r["temperature"]: r for r in rows if r["step"] == step}
        loss = next(iter(drawn.values()))["val_loss"]
        cells = "".join(
            f"<td><pre class=sample>\n{escape(drawn[t]['prime'] + drawn[t]['text']) if t in drawn else ''}</pre>"
            f"{novelty_line(drawn.get(t))}</td>"
            for t in temperatures
        )
        lines.append(f"<tr><td class=step>{step}<br><span class=meta>val {loss:.3f}</span></td>{cells}</tr>")
    return f"<table class=samples><thead><tr><th>step</th>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def checkpoint_pages(
    run: Run, record: dict[str, Any], best_samples: list[dict[str, Any]], text: str | None
) -> dict[str, str]:
    """The neuron and prediction pages of the run's best checkpoint, by name; empty without one."""
    if not (run.best / checkpoint.META).exists():
        return {}
    model, vocab, meta = load(run.store.url, run.store.options)
    text = text or val_excerpt(run, record, TEXT_CHARS) or samples_excerpt(best_samples, TEXT_CHARS)
    if not text:
        return {}
    trace = viz.trace(model, vocab, text)
    title = f"best checkpoint of {run.name} (trial {meta.get('trial')}, step {meta.get('step')})"
    return {
        NEURONS: viz.neurons_page(trace, meta, title, top=TOP_CELLS),
        PREDICTIONS: viz.predictions_page(trace, vocab, meta, title),
    }


def render(run: Run, text: str | None = None) -> dict[str, str]:
    """Every page of the run's report, by its name relative to the run folder (the report itself last)."""
    record = require(run)
    target = record["spec"]["train"]["steps"]
    states = {t: trial_state(run.trial(t), target=target) for t in run.trials()}
    metrics = {t: state.evaluations for t, state in states.items()}
    rows = trial_rows(run, states)
    order = [r["trial"] for r in rows if r["trial"] in metrics]
    best = record.get("best") or {}
    best_trial = best.get("trial") or (order[0] if order else None)
    best_samples = archive.read(run.trial(best_trial)) if best_trial else []
    extra = checkpoint_pages(run, record, best_samples, text)

    corpus = record.get("corpus") or {}
    facts = [
        f"status <b>{escape(str(record.get('status')))}</b>",
        f"started {escape(str(record.get('started') or '-'))}",
        f"ended {escape(str(record.get('ended') or '-'))}",
        f"corpus {escape(str(corpus.get('name', '-')))} {escape(str(corpus.get('fingerprint', ''))[:12])}",
    ]
    if parent := record.get("parent"):
        facts.append(
            f"fine-tuned from <b>{escape(str(parent['url']))}</b> ({escape(str(parent.get('model')))}, step "
            f"{escape(str(parent.get('step')))}, corpus {escape(str(parent.get('corpus')))} "
            f"{escape(str(parent.get('fingerprint'))[:12])}, sha256 {escape(str(parent.get('sha256'))[:12])})"
        )
    if best:
        facts.append(
            f"best val loss <b>{best['val_loss']:.4f}</b> nats/char ({bits(best['val_loss']):.4f} "
            f"bits/char) at step {best['step']} of trial {escape(best['trial'])}"
        )
    ngrams = ngram.of_run(record, run.store.options)
    if ngrams is not None:
        facts.append(f"n-gram baseline: val {escape(ngram.line(ngrams))}")
    links = " · ".join(
        f'<a href="{name}">{label}</a>'
        for name, label in ((NEURONS, "neurons"), (PREDICTIONS, "predictions"))
        if name in extra
    )
    live = record.get("status") == "running"
    if live:
        facts.insert(1, f"updated {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, reloads every {REFRESH_S}s")
    temperatures = sorted({r["temperature"] for r in best_samples})
    shown_t = min(temperatures, key=lambda t: abs(t - 0.8)) if temperatures else None  # as `rnnfarm run` shows
    body = [
        f"<h1>Run {escape(run.name)}</h1>",
        f"<p class=meta>{' · '.join(facts)}</p>",
        f"<p>Best checkpoint, seen from inside: {links}</p>" if links else "",
        f"<h2>Leaderboard ({len(rows)} trial{'s' if len(rows) != 1 else ''})</h2>",
        leaderboard_table(rows, metrics),
        "<h2>Loss and speed</h2>",
        plots(order, metrics),
        f"<h2>Samples of trial {escape(str(best_trial))} evolving as it trained</h2>",
        evolution(best_samples, shown_t) if shown_t is not None else "",
        copying_charts(best_samples),
        "<h2>Every sample</h2>",
        samples_section(best_samples),
    ]
    html = pages.page(f"rnnfarm run {run.name}", "\n".join(body), STYLE, refresh_s=REFRESH_S if live else None)
    return {**extra, REPORT: html}


def write(run: Run, dest: Store | None = None, text: str | None = None) -> Store:
    """Write the report's pages (each a whole object) into ``dest`` (the run folder by default), report last."""
    dest = dest or run.store
    for name, html in render(run, text).items():
        (dest / name).write_text(html)
    return dest / REPORT


def write_live(run: Run) -> None:
    """Rewrite the report of a run that goes on (after each evaluation); a failure only waits for the next."""
    try:
        write(run)
    except Exception as exc:  # the next evaluation, or the run's end, writes it again
        log.get("rnnfarm.report").debug("live report not written", run=run.name, error=str(exc))


def publish(run: Run) -> None:
    """Write the report at the end of a run; a failure is logged, and leaves the finished run as it is."""
    logger = log.get("rnnfarm.report")
    try:
        where = write(run)
    except Exception as exc:  # the run's results stand without their report; `rnnfarm report` retries
        logger.warning("report not written", run=run.name, error=str(exc), retry=f"rnnfarm report {run.store.url}")
        return
    logger.info("report written", run=run.name, url=where.url)
