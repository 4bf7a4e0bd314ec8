"""The leaderboard: every trial of a run, its settings, how far it got and how well it did (``state``)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

from ..engine import checkpoint
from ..layout import Run, Trial
from ..tables import cell, table
from ..units import bits
from .state import TrialState, rankable


@dataclass(frozen=True)
class TrialEnd:
    """What only the scheduler knows of a trial: the settings it sampled, and the error the trial raised.
    Everything else about it (status, steps, wall time, best) is its state on storage (``state``)."""

    trial: str
    settings: dict[str, Any]
    error: str | None = None


def best_checkpoint(trial: Trial) -> tuple[str, dict[str, Any]] | None:
    """The trial's kept checkpoint with the lowest val loss, among those Ray Train registered."""
    metas = [trial.checkpoint(name) / checkpoint.META for name in trial.registered()]
    found = [(meta.parent.name, meta.read_json()) for meta in metas if meta.exists()]
    found = [(name, meta) for name, meta in found if rankable(meta.get("val_loss"))]
    return min(found, key=lambda f: f[1]["val_loss"]) if found else None


def row(state: TrialState, end: TrialEnd, kept: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The trial's line: its settings, its state (status, best evaluation, steps, wall time), its best kept
    checkpoint."""
    best = state.best
    return {
        "trial": end.trial,
        "status": state.status,
        **{key: value for key, value in sorted(end.settings.items())},
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_bpc": bits(best["val_loss"]) if best else None,
        "best_step": best["step"] if best else None,
        "steps": state.steps,
        "chars": state.chars,
        "wall_s": round(state.wall_s, 1) if state.wall_s is not None else None,
        "checkpoint": kept[0] if kept else None,
        "error": end.error,
    }


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first; trials without a val loss last."""
    return sorted(rows, key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] or 0.0, r["trial"]))


def write(run: Run, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    run.leaderboard("parquet").write_bytes(sink.getvalue())
    sink = io.BytesIO()
    pyarrow.csv.write_csv(table, sink)
    run.leaderboard("csv").write_bytes(sink.getvalue())


def read(run: Run) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(run.leaderboard("parquet").read_bytes())).to_pylist()


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal."""
    if not rows:
        return "(no trials)"
    settings = [k for k in rows[0] if "." in k]
    columns = ["trial", "status", *settings, "best_val_loss", "best_val_bpc", "best_step", "steps", "wall_s"]
    return "\n".join(table([columns, *([cell(r.get(c)) for c in columns] for r in rows)]))
