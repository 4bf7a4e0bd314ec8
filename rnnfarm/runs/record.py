"""A run's record on storage: its start and end (``run.json``), the promotion of its best checkpoint, its
checksum list, and browsing the runs. Where each file lies is ``rnnfarm.layout``'s.

What a reader can rely on: every object is whole (storage.py). A trial's checkpoint folder is uploaded
file by file (``meta.json`` last) and counts only once Ray's checkpoint manager has registered it
(``layout.Trial.registered``); rnnfarm promotes nothing else. ``best/meta.json`` is removed first and
written last on promotion, and records the sha256 of the other files in ``best/``. ``SHA256SUMS``
(sha256sum's format) is written when the run completes, before ``run.json`` says so, and covers
``best/`` and every trial's sample archives.
"""

from __future__ import annotations

import json
from typing import Any

from .. import redact
from ..engine import checkpoint
from ..errors import UserError
from ..layout import ARCHIVE_JSONL, ARCHIVE_TEXT, BEST_SAMPLES, CONFIG, RECORD, Run, in_best, in_trial
from ..spec import JobSpec, dump
from ..storage import Store, sha256_bytes
from ..units import now


def comparable(spec: JobSpec) -> dict[str, Any]:
    """The parts of a spec that decide a run's results (where it runs does not), credentials masked."""
    return redact.redact(spec.model_dump(mode="json", exclude={"cluster", "storage", "storage_options"}))


def require(run: Run) -> dict[str, Any]:
    """The run's record; a UserError when there is no run at this URL."""
    run.store.check()
    record = run.info()
    if record is None:
        raise UserError(
            f"no run at {redact.scrub(run.store.url)} (no {RECORD} there): check the URL; "
            f"`rnnfarm runs list {redact.scrub(run.storage.url)}` lists the runs"
        )
    return record


def begin(
    run: Run, spec: JobSpec, corpus: dict[str, Any], parent: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Record the run's start, with the parent it starts from (its lineage) where it has one; returns the
    earlier record when the same run was started before.

    A run name is bound to one spec: the same spec continues (or reports) the earlier run, a
    different one is refused rather than mixing checkpoints of two models.
    """
    earlier = run.info()
    if earlier is not None and earlier.get("spec") != comparable(spec):
        raise UserError(
            f"run {run.name!r} already exists at {run.store.url} with a different spec: "
            "give this job another name (the spec's `name:` or --name), or delete that run"
        )
    run.spec_file.write_text(dump(spec, masked=True))
    record = {
        "name": run.name,
        "status": "running",
        "started": (earlier or {}).get("started", now()),
        "ended": None,
        "spec": comparable(spec),
        "corpus": redact.redact(corpus),
        **({"parent": parent} if parent is not None else {}),
        "best": None,
    }
    if earlier is None or earlier.get("status") != "completed":
        run.record.write_json(record)
    return earlier


def end(
    run: Run,
    status: str,
    *,
    best: dict[str, Any] | None = None,
    error: str | None = None,
    trials: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Record the run's end; a completed run is sealed (``SHA256SUMS``) before its record says so."""
    if status == "completed":
        seal(run)
    record = {**(run.info() or {}), "status": status, "ended": now(), "best": best}
    if error:
        record["error"] = redact.scrub(error)
    if trials is not None:
        record["trials"] = trials
    run.record.write_json(record)
    return record


def promote(run: Run, trial: str, checkpoint_name: str) -> dict[str, Any]:
    """Copy a trial's checkpoint, its config, its samples at that step and its sample archive to ``best/``.

    The old ``meta.json`` goes first and the new one comes last, with the sha256 of each file, so a
    reader never trusts weights of one checkpoint under the metadata of another.
    """
    source = run.trial(trial)
    folder = source.checkpoint(checkpoint_name)
    meta = (folder / checkpoint.META).read_json()
    (run.best / checkpoint.META).remove()
    files = {checkpoint.MODEL: (folder / checkpoint.MODEL).read_bytes()}
    extras = {
        source.samples(meta["step"]): BEST_SAMPLES,
        source.config: CONFIG,
        source.archive_jsonl: ARCHIVE_JSONL,
        source.archive_text: ARCHIVE_TEXT,
    }
    for item, target in extras.items():
        if item.exists():
            files[target] = item.read_bytes()
    for name, data in files.items():
        (run.best / name).write_bytes(data)
    sums = {name: {"sha256": sha256_bytes(data), "size": len(data)} for name, data in files.items()}
    (run.best / checkpoint.META).write_json({**meta, "trial": trial, "checkpoint": checkpoint_name, "files": sums})
    return {
        "trial": trial,
        "checkpoint": checkpoint_name,
        "step": meta["step"],
        "val_loss": meta["val_loss"],
        "url": run.best.url,
    }


def seal(run: Run) -> None:
    """Write ``SHA256SUMS`` for ``best/`` and every trial's sample archives."""
    sums = {}
    meta = run.best / checkpoint.META
    if meta.exists():
        data = meta.read_bytes()
        sums[in_best(checkpoint.META)] = sha256_bytes(data)
        for name, entry in json.loads(data).get("files", {}).items():
            sums[in_best(name)] = entry["sha256"]
    for trial in run.trials():
        for name in run.trial(trial).published():
            sums[in_trial(trial, name)] = sha256_bytes((run.trial(trial).store / name).read_bytes())
    run.sums.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))


def summary(run: Run, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``rnnfarm runs list`` shows of a run."""
    record = record if record is not None else require(run)
    best = record.get("best") or {}
    trials = record.get("trials")
    return {
        "name": record.get("name", run.name),
        "status": record.get("status"),
        "best_val_loss": best.get("val_loss"),
        "best_trial": best.get("trial"),
        "trials": sum(trials.values()) if isinstance(trials, dict) else len(run.trials()),
        "started": record.get("started"),
        "ended": record.get("ended"),
        "url": run.store.url,
    }


def describe(run: Run) -> dict[str, Any]:
    """What ``rnnfarm runs show`` shows: the summary, the record's details (the parent of a fine-tuned run
    among them), and each trial's progress."""
    record = require(run)
    trials = []
    for name in run.trials():
        trial = run.trial(name)
        metrics = trial.metrics_files()
        last = metrics[-1].read_json() if metrics else {}
        trials.append(
            {
                "name": name,
                "step": last.get("step"),
                "best_val_loss": last.get("best_val_loss"),
                "samples": len(trial.sample_files()),
            }
        )
    return {
        **summary(run, record),
        "corpus": record.get("corpus"),
        "parent": record.get("parent"),
        "best": record.get("best"),
        "error": record.get("error"),
        "sealed": run.sums.exists(),
        "trial_details": trials,
    }


def list_runs(storage: Store) -> list[dict[str, Any]]:
    """A summary of every run under ``<storage>/runs/``, by name."""
    storage.check()
    summaries = []
    for run in Run.all(storage):
        record = run.info()
        if record is not None:
            summaries.append(summary(run, record))
    return summaries
