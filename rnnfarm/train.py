"""The per-worker training loop: pure torch. Ray runs it in its workers; tests run it in-process.

Everything distributed goes through a ``Session`` (rank, world size, gradient averaging by wrapping
the model, all-reduce, checkpoint restore and report), so this file reads top to bottom as one loop.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from . import checkpoint, log
from .corpus import shards
from .data import Streams, streams_for
from .model import CharRNN, State, detach, generate, state_from_tensors, state_tensors
from .spec import JobSpec, TrainSpec
from .storage import Store
from .vocab import Vocab

LN2 = math.log(2)


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor: ...
    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]: ...
    def report(self, metrics: dict[str, Any], folder: Path, name: str) -> None: ...


@dataclass(frozen=True)
class Job:
    """What every worker needs: the spec, the built corpus folder, and the trial folder on storage."""

    spec: JobSpec
    corpus: Store
    trial: Store


class LocalSession:
    """One in-process worker; checkpoints are copied to a local folder (tests, notebooks, benchmarks)."""

    rank, world_size = 0, 1

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        self.folder, self.device = Path(folder), torch.device(device)
        self.reports: list[dict[str, Any]] = []

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = sorted(self.folder.glob("checkpoint-*")) if self.folder.exists() else []
        yield found[-1] if found else None

    def report(self, metrics: dict[str, Any], folder: Path, name: str) -> None:
        import shutil

        shutil.copytree(folder, self.folder / name, dirs_exist_ok=True)
        self.reports.append(metrics)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if precision == "bf16" or supported:
        return torch.bfloat16
    return None


def lr_factor(step: int, t: TrainSpec) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` (or constant)."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.decay == "none":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: torch.nn.Module, t: TrainSpec) -> torch.optim.Optimizer:
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=t.lr, alpha=0.95, weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def evaluate(model: CharRNN, streams: Streams, session: Session, dtype: torch.dtype | None) -> float:
    """Mean loss in nats/char over the whole split, state carried across windows, summed over ranks."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=session.device)
    state: State | None = None
    with torch.no_grad(), torch.autocast(session.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for x, y in streams.windows_for_eval():
            x, y = x.to(session.device), y.to(session.device)
            logits, state = model(x, state)
            total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
            total[1] += y.numel()
    model.train()
    total = session.all_reduce(total)
    return float(total[0] / total[1])


def samples(model: CharRNN, vocab: Vocab, job: Job, step: int, device: torch.device) -> list[dict[str, Any]]:
    s = job.spec.samples
    prime = torch.from_numpy(vocab.encode(s.prime).astype("int64")).to(device)
    out = []
    for temperature in s.temperatures:
        gen = torch.Generator(device=device).manual_seed(job.spec.train.seed + step)
        ids = list(generate(model, prime, s.length, temperature=temperature, generator=gen))
        out.append({"temperature": temperature, "prime": s.prime, "text": vocab.decode(ids)})
    return out


def train(job: Job, session: Session) -> dict[str, Any]:
    """Train the spec's model on this worker's share of the corpus; returns the last metrics."""
    spec, t = job.spec, job.spec.train
    logger = log.get("rnnfarm.train").bind(trial=job.trial.name, rank=session.rank)
    threads = spec.cluster.threads_per_worker or max(1, int(spec.cluster.cpus_per_worker))
    torch.set_num_threads(threads)
    dtype = autocast_dtype(t.precision, session.device)

    manifest = shards.load_manifest(job.corpus)
    vocab = Vocab.from_json(manifest["vocab"])
    rank, world = session.rank, session.world_size
    train_streams = streams_for(job.corpus, manifest, "train", vocab, t.batch_size, t.seq_len, rank, world)
    n_val = manifest["splits"]["val"]["chars"]
    val_batch = max(1, min(t.batch_size, (n_val - 1) // (world * t.seq_len)))
    val_streams = streams_for(job.corpus, manifest, "val", vocab, val_batch, 1, rank, world)
    val_streams.seq_len = t.seq_len

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    raw = CharRNN(len(vocab), spec.model).to(session.device)
    model = session.wrap(raw)
    optimizer = make_optimizer(raw, t)
    torch.manual_seed(t.seed + 1 + rank)  # distinct dropout masks per rank
    step, best, state = 0, math.inf, None

    with session.latest_checkpoint() as folder:
        if folder is not None:
            raw.load_state_dict(checkpoint.load_model(folder, session.device)[0].state_dict())
            trainer = checkpoint.load_optimizer(folder, optimizer)
            step, best = trainer["step"], trainer["best_val_loss"]
            train_streams.load_state_dict(trainer["streams"])
            worker = checkpoint.load_worker(folder, rank)
            torch.set_rng_state(worker.pop("rng"))
            state = state_from_tensors({k: v.to(session.device) for k, v in worker.items()})
            logger.info("resumed", step=step, checkpoint=folder.name)

    chars_per_step = world * t.batch_size * t.seq_len
    started, train_time, losses = time.perf_counter(), 0.0, []
    metrics: dict[str, Any] = {}
    while step < t.steps:
        tick = time.perf_counter()
        x, y, epoch_start = train_streams.next()
        if epoch_start:
            state = None
        x, y = x.to(session.device), y.to(session.device)
        for group in optimizer.param_groups:
            group["lr"] = t.lr * lr_factor(step, t)
        with torch.autocast(session.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        state = detach(state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), t.grad_clip)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        train_time += time.perf_counter() - tick

        if step % t.log_every == 0 and step % t.eval_every and rank == 0:
            logger.info("step", step=step, loss=round(sum(losses[-t.log_every :]) / len(losses[-t.log_every :]), 4))
        if step % t.eval_every and step != t.steps:
            continue

        val_loss = evaluate(raw, val_streams, session, dtype)
        best = min(best, val_loss)
        metrics = {
            "step": step,
            "epoch": train_streams.epoch,
            "train_loss": sum(losses) / max(1, len(losses)),
            "val_loss": val_loss,
            "val_bpc": val_loss / LN2,
            "best_val_loss": best,
            "lr": optimizer.param_groups[0]["lr"],
            "chars": step * chars_per_step,
            "chars_per_s": len(losses) * chars_per_step / max(train_time, 1e-9),
            "step_time_s": train_time / max(1, len(losses)),
            "elapsed_s": time.perf_counter() - started,
        }
        losses, train_time = [], 0.0
        with tempfile.TemporaryDirectory(prefix="rnnfarm-ckpt-") as tmp:
            folder = Path(tmp)
            if rank == 0:
                drawn = samples(raw, vocab, job, step, session.device)
                (job.trial / "samples" / f"step-{step:06d}.json").write_json(
                    {"step": step, "val_loss": val_loss, "samples": drawn}
                )
                (job.trial / "metrics" / f"step-{step:06d}.json").write_json(metrics)
                meta = {
                    "step": step,
                    "val_loss": val_loss,
                    "corpus": {"name": manifest["corpus"], "fingerprint": manifest["fingerprint"]},
                    "spec": spec.model_dump(mode="json", exclude={"storage_options"}),
                }
                checkpoint.save_model(folder, raw, vocab, meta)
                checkpoint.save_optimizer(
                    folder, optimizer, {"step": step, "best_val_loss": best, "streams": train_streams.state_dict()}
                )
                logger.info("eval", **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
            checkpoint.save_worker(folder, rank, {"rng": torch.get_rng_state(), **state_tensors(state)})
            session.report(metrics, folder, f"checkpoint-{step:06d}")
            if rank == 0:
                logger.info("checkpoint", step=step, name=f"checkpoint-{step:06d}", val_loss=round(val_loss, 4))
    return metrics
