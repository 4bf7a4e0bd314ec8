"""Ray Train wiring: a Session over ``ray.train`` for the loop in loop.py, and the TorchTrainer."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .. import credentials, log
from ..errors import Diverged, TrainingFailed
from ..layout import Trial
from ..spec import ClusterSpec
from . import checkpoint, placement
from .device import cuda_count
from .loop import Job, train


class RaySession:
    """The Session a Ray Train worker gives the loop: gradients averaged over gloo (CPU) or NCCL (GPU).

    Each worker uploads its checkpoint files itself, through rnnfarm's storage (``checkpoint.upload``):
    Ray's default upload (``pyarrow.fs.copy_files``) returns without an error when the store fails to
    close a file, so a checkpoint missing files could be registered as the one to resume from.
    """

    def __init__(self, trial: Trial, device: str) -> None:
        self.trial = trial
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        # Ray names this worker's GPU (cuda:N among the node's workers' GPUs) whether or not torch can use it
        self.device = ray.train.torch.get_device() if device == "cuda" else torch.device("cpu")

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
    session = RaySession(job.trial, config["device"])
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


@dataclass(frozen=True)
class Devices:
    """Where a run's workers compute and how their gradients travel."""

    device: str  # torch's device type: "cuda" or "cpu"
    backend: str  # torch.distributed's: "nccl" or "gloo"
    cuda_devices: int  # CUDA devices torch sees on a worker (0 where none, or where no GPU is asked for)


def devices_for(cuda_devices: int) -> Devices:
    """CUDA over NCCL where torch on a worker sees a CUDA device; otherwise the CPU over gloo, GPUs asked for
    or not (Ray's logical GPUs on a machine without CUDA, or a CPU-only torch)."""
    return Devices("cuda", "nccl", cuda_devices) if cuda_devices else Devices("cpu", "gloo", 0)


def probe(cluster: ClusterSpec, waiting: placement.Waiting) -> Devices:
    """What torch sees where the run's workers will run: a task that holds one worker's GPUs (none of its CPUs,
    which a sweep's workers may hold) asks torch there, so a head without a GPU finds its GPU workers' CUDA.

    Ray's TorchTrainer fixes the backend when it starts (NCCL where the workers hold GPUs) and
    ``ray.train.torch.get_device()`` names ``cuda:N`` for logical GPUs too: both are chosen from this answer
    instead. The task waits for its GPU as the workers would (``placement.result_of``)."""
    if not cluster.gpus_per_worker:
        return devices_for(0)
    outside = PlacementGroupSchedulingStrategy(placement_group=None)  # not in a sweep trial's own group
    task = ray.remote(cuda_count).options(num_cpus=0, num_gpus=cluster.gpus_per_worker, scheduling_strategy=outside)
    return devices_for(placement.result_of(task.remote(), waiting))


def fit(job: Job, log_format: str, callbacks: list | None = None, *, sweep: bool = False) -> ray.train.Result:
    """Run the job's training on Ray Train; checkpoints land in the job's trial folder on storage. The workers
    train on CUDA over NCCL where torch on a worker's node sees it, on the CPU over gloo otherwise (``probe``).

    Lost workers are restarted from the latest checkpoint up to ``train.max_failures`` times; past
    that, when the loss diverged past ``train.max_rollbacks``, or when the workers found no room within
    ``cluster.placement_timeout_s`` (a sweep's trial waits on for the sweep's other trials),
    :class:`TrainingFailed` says why. However it ends, it leaves no actor or placement group of its own in Ray.
    """
    spec, cluster = job.spec, job.spec.cluster
    raise_if_diverged(job.trial)
    per_worker = {"CPU": cluster.cpus_per_worker, "GPU": cluster.gpus_per_worker}
    waiting = placement.Waiting(
        workers=cluster.workers,
        per_worker=per_worker,
        timeout_s=cluster.placement_timeout_s,
        can_grow=cluster.autoscaling,
        patient=sweep,
        trial=job.trial.name,
    )
    devices = probe(cluster, waiting)
    chosen = {"trial": job.trial.name, "device": devices.device, "backend": devices.backend}
    if cluster.gpus_per_worker and not devices.cuda_devices:  # logical GPUs, or a torch built without CUDA
        log.get("rnnfarm.train").warning("GPUs asked for, but torch sees none on a worker: training on CPUs", **chosen)
    else:
        log.get("rnnfarm.train").info("devices", **chosen, cuda_devices=devices.cuda_devices)
    filesystem, trial_path = job.trial.store.pyarrow()
    parent, name = trial_path.rsplit("/", 1)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"job": job, "log_format": log_format, "device": devices.device},
        torch_config=TorchConfig(backend=devices.backend),
        scaling_config=ScalingConfig(
            num_workers=cluster.workers,
            use_gpu=cluster.use_gpu,
            resources_per_worker={k: v for k, v in per_worker.items() if v},
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
    try:
        result = placement.bounded(trainer.fit, waiting)
    except ray.train.TrainingFailedError as exc:
        raise TrainingFailed(f"training failed: {failure_reason(exc)}") from None
    raise_if_diverged(job.trial)
    return result
