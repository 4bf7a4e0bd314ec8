"""The run layout on storage: every path a run's writers and readers use is spelled here, and only here.

    <storage>/runs/<run>/spec.yaml, run.json, SHA256SUMS, leaderboard.{parquet,csv}, report.html, report/, tune/
    <storage>/runs/<run>/best/{model.safetensors, meta.json, samples.json, config.json, samples.jsonl, samples.txt}
    <storage>/runs/<run>/trials/<trial>/config.json, checkpoint-NNNNNN/, metrics/step-NNNNNN.json,
        samples/step-NNNNNN.json, samples.jsonl, samples.txt, diverged.json,
        checkpoint_manager_snapshot.json (Ray Train's)

The engine's loop writes a trial's ``metrics/`` and ``samples/`` through :class:`Trial`; ``runs/`` writes the
run's record, its leaderboard and ``best/``; ``insight.report`` writes the report. What a checkpoint folder
holds is ``engine.checkpoint``'s. Ray Train's own record of the checkpoints it registered is read in one
marked place, :meth:`Trial.registered`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .storage import Store

SINGLE_TRIAL = "main"  # the one trial of a run that is not a sweep
RECORD, SUMS, SPEC = "run.json", "SHA256SUMS", "spec.yaml"
LEADERBOARD = "leaderboard"  # .parquet and .csv
REPORT_PAGE, REPORT_FOLDER = "report.html", "report"
LOG = "log.jsonl"  # every event of a run started on a terminal, one JSON line each
EXPERIMENT = "tune"  # Ray Tune's experiment folder of a sweep
CONFIG = "config.json"  # a sweep trial's sampled settings
DIVERGED = "diverged.json"  # why a trial stopped diverging
ARCHIVE_JSONL, ARCHIVE_TEXT = "samples.jsonl", "samples.txt"
BEST_SAMPLES = "samples.json"  # best/: the samples drawn at the promoted checkpoint's step
METRICS, SAMPLES = "metrics", "samples"
RUNS, TRIALS, BEST = "runs", "trials", "best"
# Ray Train's checkpoint manager writes this file, which is not a public Ray API: Trial.registered reads it,
# and tests/test_layout.py fails loudly if a Ray upgrade changes its format.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def step_file(step: int) -> str:
    return f"step-{step:06d}.json"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


CHECKPOINTS = "checkpoint-*"  # the glob of every checkpoint folder of a trial


def in_best(name: str) -> str:
    """A file of ``best/``, as a path inside the run folder."""
    return f"{BEST}/{name}"


def in_trial(trial: str, name: str = "") -> str:
    """A file of a trial (or, without ``name``, the prefix of its files), as a path inside the run folder."""
    return f"{TRIALS}/{trial}/{name}"


def _is_step_file(item: Store) -> bool:
    return item.name.startswith("step-") and item.name.endswith(".json")


@dataclass(frozen=True)
class Trial:
    """One trial's folder: its evaluations' metrics and samples, its checkpoints, its sample archive."""

    store: Store

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def url(self) -> str:
        return self.store.url

    def metrics(self, step: int) -> Store:
        return self.store / METRICS / step_file(step)

    def samples(self, step: int) -> Store:
        return self.store / SAMPLES / step_file(step)

    def checkpoint(self, name: str) -> Store:
        return self.store / name

    @property
    def config(self) -> Store:
        return self.store / CONFIG

    @property
    def diverged(self) -> Store:
        """Why the trial's training stopped diverging. Ray Train retries a worker's error from the latest
        checkpoint, which would only replay the same divergence (resume is exact), so the workers end without one."""
        return self.store / DIVERGED

    @property
    def archive_jsonl(self) -> Store:
        return self.store / ARCHIVE_JSONL

    @property
    def archive_text(self) -> Store:
        return self.store / ARCHIVE_TEXT

    def metrics_files(self) -> list[Store]:
        """The stored evaluations' metrics objects, by name (so by step)."""
        return [m for m in (self.store / METRICS).list() if m.name.endswith(".json")]

    def evaluations(self) -> list[dict[str, Any]]:
        """The metrics the trial stored at each evaluation, by step."""
        return sorted((m.read_json() for m in self.metrics_files()), key=lambda m: m["step"])

    def sample_files(self) -> list[Store]:
        """The per-step sample objects, by name (so by step)."""
        return [item for item in (self.store / SAMPLES).list() if _is_step_file(item)]

    def published(self) -> list[str]:
        """The trial's sample files, relative to its folder: the per-step objects, then the archive."""
        found = [f"{SAMPLES}/{item.name}" for item in (self.store / SAMPLES).list()]
        return found + [name for name in (ARCHIVE_JSONL, ARCHIVE_TEXT) if (self.store / name).exists()]

    def registered(self) -> list[str]:
        """The trial's checkpoints that Ray Train registered, by folder name: each was saved whole.

        A folder left by an upload that was cut short (or by a deletion cut short) is not among them.
        This reads Ray Train's private ``checkpoint_manager_snapshot.json``: ``checkpoint_results``, each with
        a ``checkpoint_dir_name``. A format it does not recognise is an error, never an empty list.
        """
        snapshot = self.store / RAY_SNAPSHOT
        if not snapshot.exists():
            return []
        data = snapshot.read_json()
        try:
            return [r["checkpoint_dir_name"] for r in data["checkpoint_results"]]
        except (KeyError, TypeError) as exc:
            raise RuntimeError(
                f"{snapshot.url}: Ray Train's checkpoint snapshot is not in the format rnnfarm reads "
                f"(checkpoint_results[].checkpoint_dir_name; {exc!r}): Ray changed it, rnnfarm.layout needs updating"
            ) from None


@dataclass(frozen=True)
class Run:
    """One run's folder: its record and spec, its trials, its best checkpoint, its leaderboard and report."""

    store: Store

    @classmethod
    def under(cls, storage: Store, name: str) -> Run:
        """The run ``name`` under the storage root."""
        return cls(storage / RUNS / name)

    @staticmethod
    def all(storage: Store) -> list[Run]:
        """Every run folder under the storage root, by name."""
        return [Run(folder) for folder in (storage / RUNS).list()]

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def storage(self) -> Store:
        """The storage root the run is under."""
        return self.store.parent.parent

    def trial(self, name: str = SINGLE_TRIAL) -> Trial:
        return Trial(self.store / TRIALS / name)

    def trials(self) -> list[str]:
        return [t.name for t in (self.store / TRIALS).list()]

    @property
    def best(self) -> Store:
        return self.store / BEST

    @property
    def best_samples(self) -> Store:
        return self.best / BEST_SAMPLES

    @property
    def record(self) -> Store:
        return self.store / RECORD

    @property
    def spec_file(self) -> Store:
        return self.store / SPEC

    @property
    def sums(self) -> Store:
        return self.store / SUMS

    def leaderboard(self, suffix: str = "parquet") -> Store:
        return self.store / f"{LEADERBOARD}.{suffix}"

    @property
    def log(self) -> Store:
        return self.store / LOG

    @property
    def report_page(self) -> Store:
        return self.store / REPORT_PAGE

    def info(self) -> dict[str, Any] | None:
        """The run's record, None when there is none."""
        return self.record.read_json() if self.record.exists() else None


def trial_folder(store: Store) -> tuple[Run, str] | None:
    """The run and the trial id of a trial's folder (``<run>/trials/<id>``); None for any other folder."""
    if store.parent.name == TRIALS and (store.parent.parent / RECORD).exists():
        return Run(store.parent.parent), store.name
    return None
