"""The leaderboard: every trial of a run, its settings, how far it got and how well it did."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

from . import checkpoint
from .storage import Store

STATUSES = ("completed", "stopped", "failed", "not started")
# Where Ray Train's checkpoint manager records the checkpoints it registered (and has not deleted since).
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended, as its scheduler saw it."""

    trial: str
    status: str  # one of STATUSES: "stopped" means stopped early by the scheduler (ASHA)
    settings: dict[str, Any]
    wall_s: float | None
    error: str | None = None


def registered(trial: Store) -> list[str]:
    """The trial's checkpoints that Ray Train registered, by folder name: each was saved whole.

    A folder left by an upload that was cut short (or by a deletion cut short) is not among them.
    """
    snapshot = trial / RAY_SNAPSHOT
    if not snapshot.exists():
        return []
    return [r["checkpoint_dir_name"] for r in snapshot.read_json()["checkpoint_results"]]


def rankable(val_loss: Any) -> bool:
    """Whether a val loss can rank: a finite number (a NaN would compare as neither better nor worse)."""
    return isinstance(val_loss, int | float) and math.isfinite(val_loss)


def best_checkpoint(trial: Store) -> tuple[str, dict[str, Any]] | None:
    """The trial's kept checkpoint with the lowest val loss, among those Ray Train registered."""
    metas = [trial / name / checkpoint.META for name in registered(trial)]
    found = [(meta.parent.name, meta.read_json()) for meta in metas if meta.exists()]
    found = [(name, meta) for name, meta in found if rankable(meta.get("val_loss"))]
    return min(found, key=lambda f: f[1]["val_loss"]) if found else None


def evaluations(trial: Store) -> list[dict[str, Any]]:
    """The metrics the trial stored at each evaluation, by step."""
    found = [m.read_json() for m in (trial / "metrics").list() if m.name.endswith(".json")]
    return sorted(found, key=lambda m: m["step"])


def row(trial: Store, end: TrialEnd, kept: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The trial's line: its settings, its evaluations' best, and its best kept checkpoint."""
    metrics = evaluations(trial)
    finite = [m for m in metrics if rankable(m.get("val_loss"))]
    best_eval = min(finite, key=lambda m: m["val_loss"]) if finite else None
    return {
        "trial": end.trial,
        "status": end.status,
        **{key: value for key, value in sorted(end.settings.items())},
        "best_val_loss": best_eval["val_loss"] if best_eval else None,
        "best_val_bpc": best_eval["val_loss"] / math.log(2) if best_eval else None,
        "best_step": best_eval["step"] if best_eval else None,
        "steps": metrics[-1]["step"] if metrics else 0,
        "chars": metrics[-1]["chars"] if metrics else 0,
        "wall_s": round(end.wall_s, 1) if end.wall_s is not None else None,
        "checkpoint": kept[0] if kept else None,
        "error": end.error,
    }


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first; trials without a val loss last."""
    return sorted(rows, key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] or 0.0, r["trial"]))


def write(run: Store, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    (run / "leaderboard.parquet").write_bytes(sink.getvalue())
    sink = io.BytesIO()
    pyarrow.csv.write_csv(table, sink)
    (run / "leaderboard.csv").write_bytes(sink.getvalue())


def read(run: Store) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO((run / "leaderboard.parquet").read_bytes())).to_pylist()


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table for the terminal."""
    if not rows:
        return "(no trials)"
    settings = [k for k in rows[0] if "." in k]
    columns = ["trial", "status", *settings, "best_val_loss", "best_val_bpc", "best_step", "steps", "wall_s"]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)
