"""The run layout on storage, and browsing it.

<storage>/runs/<run>/spec.yaml, run.json, SHA256SUMS, best/{model.safetensors, samples.json, meta.json}
<storage>/runs/<run>/trials/<trial>/{checkpoint-NNNNNN/, samples/step-NNNNNN.json, metrics/step-NNNNNN.json}
                                    diverged.json: why a trial stopped diverging (distributed.DIVERGED)

What a reader can rely on: every object is whole (storage.py). A trial's checkpoint folder is uploaded
file by file (``meta.json`` last) and counts only once Ray's checkpoint manager has registered it
(``leaderboard.registered``); rnnfarm promotes nothing else. ``best/meta.json`` is removed first and
written last on promotion, and records the sha256 of the other files in ``best/``. ``SHA256SUMS``
(sha256sum's format) is written when the run completes, before ``run.json`` says so, and covers
``best/`` and every trial's sample archives.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from . import archive, checkpoint, redact
from .errors import UserError
from .spec import JobSpec, dump
from .storage import Store, sha256_bytes

SINGLE_TRIAL = "main"
SUMS = "SHA256SUMS"
RECORD = "run.json"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def comparable(spec: JobSpec) -> dict[str, Any]:
    """The parts of a spec that decide a run's results (where it runs does not), credentials masked."""
    return redact.redact(spec.model_dump(mode="json", exclude={"cluster", "storage", "storage_options"}))


@dataclass(frozen=True)
class Run:
    store: Store

    @property
    def name(self) -> str:
        return self.store.name

    def trial(self, name: str = SINGLE_TRIAL) -> Store:
        return self.store / "trials" / name

    @property
    def best(self) -> Store:
        return self.store / "best"

    def info(self) -> dict[str, Any] | None:
        target = self.store / RECORD
        return target.read_json() if target.exists() else None

    def require(self) -> dict[str, Any]:
        """The run's record; a UserError when there is no run at this URL."""
        self.store.check()
        record = self.info()
        if record is None:
            raise UserError(
                f"no run at {redact.scrub(self.store.url)} (no {RECORD} there): check the URL; "
                f"`rnnfarm runs list {redact.scrub(self.store.parent.parent.url)}` lists the runs"
            )
        return record

    def trials(self) -> list[str]:
        return [t.name for t in (self.store / "trials").list()]

    def begin(self, spec: JobSpec, corpus: dict[str, Any]) -> dict[str, Any] | None:
        """Record the run's start; returns the earlier record when the same run was started before.

        A run name is bound to one spec: the same spec continues (or reports) the earlier run, a
        different one is refused rather than mixing checkpoints of two models.
        """
        earlier = self.info()
        if earlier is not None and earlier.get("spec") != comparable(spec):
            raise UserError(
                f"run {self.name!r} already exists at {self.store.url} with a different spec: "
                "give this job another name (the spec's `name:` or --name), or delete that run"
            )
        (self.store / "spec.yaml").write_text(dump(spec, masked=True))
        record = {
            "name": self.name,
            "status": "running",
            "started": (earlier or {}).get("started", now()),
            "ended": None,
            "spec": comparable(spec),
            "corpus": redact.redact(corpus),
            "best": None,
        }
        if earlier is None or earlier.get("status") != "completed":
            (self.store / "run.json").write_json(record)
        return earlier

    def end(
        self,
        status: str,
        best: dict[str, Any] | None = None,
        error: str | None = None,
        trials: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Record the run's end; a completed run is sealed (``SHA256SUMS``) before its record says so."""
        if status == "completed":
            self.seal()
        record = {**(self.info() or {}), "status": status, "ended": now(), "best": best}
        if error:
            record["error"] = redact.scrub(error)
        if trials is not None:
            record["trials"] = trials
        (self.store / RECORD).write_json(record)
        return record

    def promote(self, trial: str, checkpoint_name: str) -> dict[str, Any]:
        """Copy a trial's checkpoint, its config, its samples at that step and its sample archive to ``best/``.

        The old ``meta.json`` goes first and the new one comes last, with the sha256 of each file, so a
        reader never trusts weights of one checkpoint under the metadata of another.
        """
        source = self.trial(trial) / checkpoint_name
        meta = (source / checkpoint.META).read_json()
        (self.best / checkpoint.META).remove()
        files = {checkpoint.MODEL: (source / checkpoint.MODEL).read_bytes()}
        extras = {f"samples/step-{meta['step']:06d}.json": "samples.json"}
        extras.update({name: name for name in ("config.json", archive.JSONL, archive.TEXT)})
        for name, target in extras.items():
            if (self.trial(trial) / name).exists():
                files[target] = (self.trial(trial) / name).read_bytes()
        for name, data in files.items():
            (self.best / name).write_bytes(data)
        sums = {name: {"sha256": sha256_bytes(data), "size": len(data)} for name, data in files.items()}
        (self.best / checkpoint.META).write_json({**meta, "trial": trial, "checkpoint": checkpoint_name, "files": sums})
        return {
            "trial": trial,
            "checkpoint": checkpoint_name,
            "step": meta["step"],
            "val_loss": meta["val_loss"],
            "url": self.best.url,
        }

    def seal(self) -> None:
        """Write ``SHA256SUMS`` for ``best/`` and every trial's sample archives."""
        sums = {}
        meta = self.best / checkpoint.META
        if meta.exists():
            data = meta.read_bytes()
            sums[f"best/{checkpoint.META}"] = sha256_bytes(data)
            for name, entry in json.loads(data).get("files", {}).items():
                sums[f"best/{name}"] = entry["sha256"]
        for trial in self.trials():
            for name in archive.names(self.trial(trial)):
                sums[f"trials/{trial}/{name}"] = sha256_bytes((self.trial(trial) / name).read_bytes())
        (self.store / SUMS).write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))

    def summary(self, record: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``rnnfarm runs list`` shows of a run."""
        record = record if record is not None else self.require()
        best = record.get("best") or {}
        trials = record.get("trials")
        return {
            "name": record.get("name", self.name),
            "status": record.get("status"),
            "best_val_loss": best.get("val_loss"),
            "best_trial": best.get("trial"),
            "trials": sum(trials.values()) if isinstance(trials, dict) else len(self.trials()),
            "started": record.get("started"),
            "ended": record.get("ended"),
            "url": self.store.url,
        }

    def describe(self) -> dict[str, Any]:
        """What ``rnnfarm runs show`` shows: the summary, the record's details, and each trial's progress."""
        record = self.require()
        trials = []
        for name in self.trials():
            metrics = (self.trial(name) / "metrics").list()
            last = metrics[-1].read_json() if metrics else {}
            trials.append(
                {
                    "name": name,
                    "step": last.get("step"),
                    "best_val_loss": last.get("best_val_loss"),
                    "samples": len((self.trial(name) / "samples").list()),
                }
            )
        return {
            **self.summary(record),
            "corpus": record.get("corpus"),
            "best": record.get("best"),
            "error": record.get("error"),
            "sealed": (self.store / SUMS).exists(),
            "trial_details": trials,
        }


def list_runs(storage: Store) -> list[dict[str, Any]]:
    """A summary of every run under ``<storage>/runs/``, by name."""
    storage.check()
    summaries = []
    for folder in (storage / "runs").list():
        run = Run(folder)
        record = run.info()
        if record is not None:
            summaries.append(run.summary(record))
    return summaries
