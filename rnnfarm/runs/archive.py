"""Sample archives: the samples a trial drew at each evaluation, consolidated once it ends.

While training, each evaluation writes one immutable object, ``samples/step-NNNNNN.json``. The
archive gathers them into ``samples.jsonl`` (one sample a line: step, val loss, temperature, prime,
text) and ``samples.txt`` (the same, for reading), both beside the trial's ``samples/`` folder.
"""

from __future__ import annotations

import json
from typing import Any

from ..storage import Store

JSONL, TEXT = "samples.jsonl", "samples.txt"


def per_step(trial: Store) -> list[dict[str, Any]]:
    """Every sample the trial stored, ordered by step then temperature."""
    rows = []
    for item in (trial / "samples").list():
        if item.name.startswith("step-") and item.name.endswith(".json"):
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


def consolidate(trial: Store) -> int:
    """Write the trial's archive from its per-step samples; returns how many samples it holds."""
    rows = per_step(trial)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if rows and not ((trial / JSONL).exists() and (trial / JSONL).read_text() == lines):
        (trial / JSONL).write_text(lines)
        (trial / TEXT).write_text(render(rows))
    return len(rows)


def read(trial: Store) -> list[dict[str, Any]]:
    """The trial's samples: from its archive when it has one, else from the per-step objects."""
    archive = trial / JSONL
    if archive.exists():
        return [json.loads(line) for line in archive.read_text().splitlines() if line]
    return per_step(trial)


def names(trial: Store) -> list[str]:
    """The trial's sample files, relative to its folder: the per-step objects, then the archive."""
    found = [f"samples/{item.name}" for item in (trial / "samples").list()]
    return found + [name for name in (JSONL, TEXT) if (trial / name).exists()]
