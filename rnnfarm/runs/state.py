"""A trial's state, from what it stored: the one place that says its status, steps, wall time and best value.

A trial's figures also travel in the metrics reported to Ray Tune and in the log, and a worker can finish its
last steps while a scheduler's stop is on its way: storage is the one source that holds them all. The
leaderboard, the progress display, the sweep's end, the report and the benchmarks read a trial through here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..layout import Trial

STATUSES = ("completed", "stopped", "failed", "not started")


@dataclass(frozen=True)
class TrialState:
    trial: str
    status: str  # one of STATUSES: "stopped" means it ended before its steps (a scheduler stopped it early)
    steps: int  # the step of its last stored evaluation
    chars: int  # characters trained on by then
    wall_s: float | None  # training time as its evaluations measured it, summed over restarts
    best: dict[str, Any] | None  # the metrics of its evaluation with the lowest (finite) val loss
    evaluations: list[dict[str, Any]]


def rankable(val_loss: Any) -> bool:
    """Whether a val loss can rank: a finite number (a NaN would compare as neither better nor worse)."""
    return isinstance(val_loss, int | float) and math.isfinite(val_loss)


def status(steps: int, *, target: int, failed: bool = False) -> str:
    """The rule for a trial's status: failed, else not started, completed or stopped by its steps."""
    if failed:
        return "failed"
    if not steps:
        return "not started"
    return "completed" if steps >= target else "stopped"


def wall_time(evaluations: list[dict[str, Any]]) -> float | None:
    """Training time of a trial as its evaluations measured it (summed over restarts)."""
    if not evaluations:
        return None
    total, last = 0.0, 0.0
    for m in evaluations:
        if m["elapsed_s"] < last:  # the worker restarted: its clock started again
            total += last
        last = m["elapsed_s"]
    return total + last


def trial_state(trial: Trial, *, target: int, failed: bool = False) -> TrialState:
    """The trial as it stands on storage; ``target`` is the steps it was to train, ``failed`` whether it raised."""
    evaluations = trial.evaluations()
    last = evaluations[-1] if evaluations else {}
    steps = last.get("step", 0)
    finite = [m for m in evaluations if rankable(m.get("val_loss"))]
    return TrialState(
        trial=trial.name,
        status=status(steps, target=target, failed=failed),
        steps=steps,
        chars=last.get("chars", 0),
        wall_s=wall_time(evaluations),
        best=min(finite, key=lambda m: m["val_loss"]) if finite else None,
        evaluations=evaluations,
    )
