"""Sample archives: the samples a trial drew at each evaluation, consolidated once it ends.

While training, each evaluation writes one immutable object, ``samples/step-NNNNNN.json``. The
archive gathers them into ``samples.jsonl`` (one sample a line: step, val loss, temperature, prime,
text) and ``samples.txt`` (the same, for reading), both beside the trial's ``samples/`` folder.
"""

from __future__ import annotations

import json
from typing import Any

from ..layout import Trial


def per_step(trial: Trial) -> list[dict[str, Any]]:
    """Every sample the trial stored, ordered by step then temperature."""
    rows = []
    for item in trial.sample_files():
        record = item.read_json()
        for s in record["samples"]:
            rows.append({"step": record["step"], "val_loss": record["val_loss"], **s})
    return sorted(rows, key=lambda r: (r["step"], r["temperature"]))


def render(rows: list[dict[str, Any]]) -> str:
    blocks = [
        f"=== step {r['step']} · val loss {r['val_loss']:.4f} nats/char · temperature {r['temperature']:g} ===\n"
        f"{r['prime']}{r['text']}\n"
        for r in rows
    ]
    return "\n".join(blocks)


def consolidate(trial: Trial) -> int:
    """Write the trial's archive from its per-step samples; returns how many samples it holds."""
    rows = per_step(trial)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if rows and not (trial.archive_jsonl.exists() and trial.archive_jsonl.read_text() == lines):
        trial.archive_jsonl.write_text(lines)
        trial.archive_text.write_text(render(rows))
    return len(rows)


def read(trial: Trial) -> list[dict[str, Any]]:
    """The trial's samples: from its archive when it has one, else from the per-step objects."""
    if trial.archive_jsonl.exists():
        return [json.loads(line) for line in trial.archive_jsonl.read_text().splitlines() if line]
    return per_step(trial)
