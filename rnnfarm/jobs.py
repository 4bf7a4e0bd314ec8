"""Running a job: build its corpus, train on Ray, promote the best checkpoint, record the run."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import log
from .corpus.build import build
from .errors import UserError
from .runs import SINGLE_TRIAL, Run
from .spec import JobSpec
from .storage import Store
from .train import Job, evaluate_split
from .vocab import Vocab

# Defaults for an embedded Ray (the environment overrides each).
LOCAL_RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",  # the controller polls workers' reports this often
    "RAY_AUTH_MODE": "disabled",  # a private instance on this machine: no token to pass around
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # nothing preempts a laptop's processes
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",  # workers' lines reach the terminal once
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
}


@dataclass(frozen=True)
class Outcome:
    run: Run
    record: dict[str, Any]

    @property
    def best(self) -> dict[str, Any]:
        return self.record["best"]


def start_local_ray(num_cpus: int | None = None) -> None:
    """Start an embedded Ray in this process (once); Ray's own chatter is kept to warnings."""
    import ray

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=True,  # the state API behind it lets Ray Train clean up quietly
            logging_level="WARNING",
            logging_config=ray.LoggingConfig(log_level="WARNING"),
        )


def ensure_ray(spec: JobSpec) -> None:
    """Start an embedded Ray for ``cluster.address: local`` and check the job fits in it."""
    import ray

    if spec.cluster.address != "local":
        raise UserError(
            f"cluster.address {spec.cluster.address!r}: submitting to a cluster is not supported yet; "
            "use `address: local`"
        )
    start_local_ray()
    have = ray.cluster_resources().get("CPU", 0)
    need = spec.cluster.workers * spec.cluster.cpus_per_worker
    if need > have:
        raise UserError(
            f"cluster: {spec.cluster.workers} workers x {spec.cluster.cpus_per_worker} CPU need {need:g} CPUs, "
            f"this Ray has {have:g}: lower cluster.workers or cluster.cpus_per_worker"
        )
    gpus = ray.cluster_resources().get("GPU", 0)
    if spec.cluster.use_gpu and spec.cluster.workers > gpus:
        raise UserError(
            f"cluster.use_gpu: {spec.cluster.workers} worker(s) need a GPU each, this Ray has {gpus:g}: "
            "set use_gpu: false or lower cluster.workers"
        )


def run(spec: JobSpec, name: str | None = None) -> Outcome:
    logger = log.get("rnnfarm.run")
    storage = Store.at(spec.storage, spec.storage_options)
    built = build(storage, spec.corpus)
    vocab = Vocab.from_json(built.manifest["vocab"])
    vocab.encode(spec.samples.prime, strict=True)

    the_run = Run(storage / "runs" / (name or spec.name))
    corpus = {"name": spec.corpus.name, "fingerprint": built.fingerprint, "url": built.folder.url}
    earlier = the_run.begin(spec, corpus)
    if earlier is not None and earlier.get("status") == "completed":
        logger.info("run already completed", run=the_run.name, url=the_run.store.url)
        return Outcome(the_run, earlier)

    ensure_ray(spec)
    from .distributed import fit

    logger.info("training", run=the_run.name, workers=spec.cluster.workers, steps=spec.train.steps)
    job = Job(spec=spec, corpus=built.folder, trial=the_run.trial(SINGLE_TRIAL))
    try:
        result = fit(job, log.log_format())
    except TrainingFailed as exc:
        the_run.end("failed", error=str(exc))
        raise
    best_ckpt = result.get_best_checkpoint(metric="val_loss", mode="min") or result.checkpoint
    if best_ckpt is None:
        the_run.end("failed", error="no checkpoint was reported")
        raise TrainingFailed("training reported no checkpoint")
    best = the_run.promote(SINGLE_TRIAL, best_ckpt.path.rstrip("/").rsplit("/", 1)[-1])
    best["val_bpc"] = best["val_loss"] / math.log(2)
    if "test" in built.manifest["splits"]:  # the corpus has a test split (`corpus.test` > 0)
        with best_ckpt.as_directory() as folder:
            best["test_loss"] = evaluate_split(job, Path(folder), "test")
        best["test_bpc"] = best["test_loss"] / math.log(2)
    record = the_run.end("completed", best)
    logger.info("run completed", run=the_run.name, val_loss=round(best["val_loss"], 4), best=best["url"])
    return Outcome(the_run, record)


class TrainingFailed(Exception):
    """Training itself failed (after retries): not a user error, exit code 1."""
