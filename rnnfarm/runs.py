"""The run layout on storage.

<storage>/runs/<run>/spec.yaml, run.json, best/{model.safetensors, meta.json, samples.json}
<storage>/runs/<run>/trials/<trial>/{checkpoint-NNNNNN/, samples/step-NNNNNN.json, metrics/step-NNNNNN.json}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import archive, checkpoint
from .errors import UserError
from .spec import JobSpec, dump
from .storage import Store

SINGLE_TRIAL = "main"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def comparable(spec: JobSpec) -> dict[str, Any]:
    """The parts of a spec that decide a run's results (where it runs does not)."""
    return spec.model_dump(mode="json", exclude={"cluster", "storage", "storage_options"})


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
        target = self.store / "run.json"
        return target.read_json() if target.exists() else None

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
        (self.store / "spec.yaml").write_text(dump(spec))
        record = {
            "name": self.name,
            "status": "running",
            "started": (earlier or {}).get("started", now()),
            "ended": None,
            "spec": comparable(spec),
            "corpus": corpus,
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
        record = {**(self.info() or {}), "status": status, "ended": now(), "best": best}
        if error:
            record["error"] = error
        if trials is not None:
            record["trials"] = trials
        (self.store / "run.json").write_json(record)
        return record

    def promote(self, trial: str, checkpoint_name: str) -> dict[str, Any]:
        """Copy a trial's checkpoint, its config, its samples at that step and its sample archive to ``best/``.

        ``meta.json`` is written last: a ``best/`` folder without it is not a checkpoint yet.
        """
        source = self.trial(trial) / checkpoint_name
        meta = (source / checkpoint.META).read_json()
        (self.best / checkpoint.MODEL).write_bytes((source / checkpoint.MODEL).read_bytes())
        extras = {f"samples/step-{meta['step']:06d}.json": "samples.json"}
        extras.update({name: name for name in ("config.json", archive.JSONL, archive.TEXT)})
        for name, target in extras.items():
            if (self.trial(trial) / name).exists():
                (self.best / target).write_bytes((self.trial(trial) / name).read_bytes())
        (self.best / checkpoint.META).write_json({**meta, "trial": trial, "checkpoint": checkpoint_name})
        return {
            "trial": trial,
            "checkpoint": checkpoint_name,
            "step": meta["step"],
            "val_loss": meta["val_loss"],
            "url": self.best.url,
        }
