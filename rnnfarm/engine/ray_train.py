"""Ray Train wiring: a Session over ``ray.train`` for the loop in loop.py, and the TorchTrainer."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from .. import credentials, log
from ..errors import Diverged, TrainingFailed
from ..layout import Trial
from . import checkpoint, placement
from .loop import Job, train


class RaySession:
    """The Session a Ray Train worker gives the loop: gradients averaged over gloo (CPU) or NCCL (GPU).

    Each worker uploads its checkpoint files itself, through rnnfarm's storage (``checkpoint.upload``):
    Ray's default upload (``pyarrow.fs.copy_files``) returns without an error when the store fails to
    close a file, so a checkpoint missing files could be registered as the one to resume from.
    """

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def average_gradients(self, model: torch.nn.Module) -> None:
        """The workers' mean gradient in every worker: one all-reduce of all gradients, flattened.

        This is what DistributedDataParallel computes, without its start-up cost (constructing it imports
        torch._dynamo: about a CPU-second per worker). Its overlap of the all-reduce with the backward pass
        gains little here: an RNN stack's gradients come out of one fused backward op, nearly all at once.
        """
        if self.world_size == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(mean.view_as(grad))

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(tensor)
        return tensor

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = ray.train.get_checkpoint()
        if found is None:
            yield None
            return
        with found.as_directory() as folder:
            yield Path(folder)

    def report(self, metrics: dict[str, Any], folder: Path, name: str) -> None:
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=name,
            checkpoint_upload_fn=self._upload,
        )

    def _upload(self, local: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        target = self.trial.checkpoint(name)
        checkpoint.upload(Path(local.path), target)
        filesystem, path = target.pyarrow()
        return ray.train.Checkpoint(path=path, filesystem=filesystem)


def worker_loop(config: dict[str, Any]) -> dict[str, Any]:
    log.configure(config["log_format"])
    job = config["job"]
    session = RaySession(job.trial)
    try:
        return train(job, session)
    except Diverged as exc:  # every rank stops at the same step: the decision reads all-reduced losses
        if session.rank == 0:
            job.trial.diverged.write_json({"error": str(exc)})
        return {}


def raise_if_diverged(trial: Trial) -> None:
    """The trial's divergence, as one line: the same spec would diverge the same way, so it is not trained again."""
    if trial.diverged.exists():
        raise TrainingFailed(trial.diverged.read_json()["error"])


def failure_reason(exc: ray.train.TrainingFailedError) -> str:
    """One line per failed worker: the last ``...Error: message`` line of its error, else its first line."""
    failures = getattr(exc, "worker_failures", None) or {-1: getattr(exc, "controller_failure", exc)}
    reasons = []
    for rank, error in sorted(failures.items()):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception)\b", line)]
        reason = raised[-1] if raised else lines[0]
        reasons.append(reason if rank < 0 else f"rank {rank}: {reason}")
    return "; ".join(reasons)


def fit(job: Job, log_format: str, callbacks: list | None = None, *, sweep: bool = False) -> ray.train.Result:
    """Run the job's training on Ray Train; checkpoints land in the job's trial folder on storage.

    Lost workers are restarted from the latest checkpoint up to ``train.max_failures`` times; past
    that, when the loss diverged past ``train.max_rollbacks``, or when the workers found no room within
    ``cluster.placement_timeout_s`` (a sweep's trial waits on for the sweep's other trials),
    :class:`TrainingFailed` says why. However it ends, it leaves no actor or placement group of its own in Ray.
    """
    spec = job.spec
    raise_if_diverged(job.trial)
    filesystem, trial_path = job.trial.store.pyarrow()
    parent, name = trial_path.rsplit("/", 1)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"job": job, "log_format": log_format},
        scaling_config=ScalingConfig(
            num_workers=spec.cluster.workers,
            use_gpu=spec.cluster.use_gpu,
            resources_per_worker={"CPU": spec.cluster.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=parent,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.train.keep_best,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            callbacks=callbacks,
        ),
    )
    credentials.deposit()  # the job's storage credentials, for its workers (none where this is a worker)
    waiting = placement.Waiting(
        workers=spec.cluster.workers,
        per_worker={"CPU": spec.cluster.cpus_per_worker, "GPU": 1.0 if spec.cluster.use_gpu else 0.0},
        timeout_s=spec.cluster.placement_timeout_s,
        can_grow=spec.cluster.autoscaling,
        patient=sweep,
        trial=job.trial.name,
    )
    try:
        result = placement.bounded(trainer.fit, waiting)
    except ray.train.TrainingFailedError as exc:
        raise TrainingFailed(f"training failed: {failure_reason(exc)}") from None
    raise_if_diverged(job.trial)
    return result
