"""The per-worker training loop: pure torch. Ray runs it in its workers; tests run it in-process.

Everything distributed goes through a ``Session`` (rank, world size, device placement, gradient averaging,
all-reduce, checkpoint restore and report), so this file reads top to bottom as one loop.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .. import log, redact
from ..corpus import novelty, shards
from ..corpus.novelty import Index
from ..corpus.vocab import Vocab
from ..errors import Diverged, UserError
from ..layout import CHECKPOINTS, Trial, checkpoint_name
from ..spec import JobSpec, TrainSpec
from ..storage import Store
from ..units import bits, now
from . import checkpoint
from .average import Average, applied, make_average
from .device import memory_named, pick
from .model import (
    CharRNN,
    State,
    detach,
    generate,
    recurrent_dtype,
    reset_rows,
    state_from_tensors,
    state_tensors,
)
from .parent import Parent, start_from
from .streams import ColdStarts, Streams, Windows, eval_cut, streams_for


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def average_gradients(self, model: torch.nn.Module) -> None: ...
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor: ...
    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]: ...
    def report(self, metrics: dict[str, Any], folder: Path, name: str) -> None: ...


@dataclass(frozen=True)
class Job:
    """What every worker needs: the spec, the built corpus folder, the trial folder on storage, and the parent
    checkpoint whose weights training starts from (``train.init_from``), if any."""

    spec: JobSpec
    corpus: Store
    trial: Trial
    parent: Parent | None = None


class LocalSession:
    """One in-process worker; checkpoints are copied to a local folder (tests, notebooks, benchmarks)."""

    rank, world_size = 0, 1

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        self.folder, self.device = Path(folder), torch.device(device)
        self.reports: list[dict[str, Any]] = []

    def average_gradients(self, model: torch.nn.Module) -> None:
        pass

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = sorted(self.folder.glob(CHECKPOINTS)) if self.folder.exists() else []
        yield found[-1] if found else None

    def report(self, metrics: dict[str, Any], folder: Path, name: str) -> None:
        import shutil

        shutil.copytree(folder, self.folder / name, dirs_exist_ok=True)
        self.reports.append(metrics)


def cpu_has_bf16_kernels() -> bool:
    """Whether this CPU runs oneDNN's bf16 kernels, the fused LSTM's among them (they need AVX-512)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Capability:
    """What a device computes natively: all the precision policy decides from, so tests can pass any device's."""

    device: str  # torch's device type: "cpu" or "cuda"
    native_bf16: bool  # bf16 in hardware: AVX512-BF16 or AMX on a CPU; on a GPU, emulation not counted
    bf16_lstm: bool  # a CPU's oneDNN has a bf16 fused LSTM (it needs AVX-512); cuDNN's has none under autocast

    @classmethod
    def of(cls, device: torch.device) -> Capability:
        if device.type == "cuda":
            return cls("cuda", torch.cuda.is_bf16_supported(including_emulation=False), bf16_lstm=False)
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return cls(device.type, native, bf16_lstm=cpu_has_bf16_kernels())


@dataclass(frozen=True)
class Precision:
    """What runs: autocast's dtype (None: fp32), the recurrent layers' dtype, and whether a gradient scaler
    keeps fp16's small gradients from underflowing."""

    autocast: torch.dtype | None
    recurrent: torch.dtype
    scaler: bool = False

    def __str__(self) -> str:
        """The log's precision line."""
        if self.autocast is None:
            return "fp32"
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        text = f"{name[self.autocast]} autocast"
        if self.recurrent != self.autocast:
            text += f", recurrent layers {name.get(self.recurrent, 'fp32')}"
        return text + (" with a gradient scaler" if self.scaler else "")


FP32 = Precision(None, torch.float32)


def precision_policy(asked: str, cap: Capability) -> Precision:
    """What ``train.precision`` runs on a device of capability ``cap``; a choice it cannot run is refused.

    bf16 runs where the device computes it natively; on a GPU the recurrent layers stay fp32 (cuDNN's RNN under
    autocast runs fp16). fp16 runs on a GPU only, always with a gradient scaler. ``auto``: the fastest that trains
    as fp32 does: fp16 with a scaler on a GPU (the only way cuDNN's RNN runs in half precision), bf16 on a CPU
    with native bf16, fp32 otherwise.
    """
    if asked == "fp32":
        return FP32
    fp16 = Precision(torch.float16, recurrent_dtype(cap.device, torch.float16), scaler=True)
    bf16 = Precision(torch.bfloat16, recurrent_dtype(cap.device, torch.bfloat16))
    if cap.device == "cuda":
        if asked == "bf16" and not cap.native_bf16:
            raise UserError(
                "train.precision bf16: this GPU has no native bf16 (only emulated, slower than fp32): "
                "set train.precision to auto (fp16 with a gradient scaler on this GPU), fp16 or fp32"
            )
        return bf16 if asked == "bf16" else fp16
    if asked == "fp16":
        raise UserError(
            "train.precision fp16: only on a GPU (this CPU's oneDNN has no fp16 LSTM): "
            f"set train.precision to auto ({'bf16' if cap.native_bf16 and cap.bf16_lstm else 'fp32'} on this CPU), "
            "bf16 or fp32"
        )
    if asked == "bf16" and not cap.bf16_lstm:
        raise UserError(
            "train.precision bf16: this CPU has no bf16 kernel for the fused LSTM (oneDNN's needs AVX-512): "
            "set train.precision to auto (fp32 on this CPU) or fp32"
        )
    return bf16 if asked == "bf16" or (cap.native_bf16 and cap.bf16_lstm) else FP32


def refuse_bf16_without_kernel(precision: str, device: torch.device) -> None:
    """A precision forced on a device that cannot run it (bf16 without its kernels, fp16 on a CPU): one line,
    before anything runs, not oneDNN's error mid-step."""
    precision_policy(precision, Capability.of(device))


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def lr_factor(step: int, t: TrainSpec) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio``, step decay by ``decay_rate``, or constant."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.decay == "step":
        return t.decay_rate ** ((step - t.warmup_steps) // t.decay_every)
    if t.decay == "cosine":
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def make_optimizer(model: torch.nn.Module, t: TrainSpec) -> torch.optim.Optimizer:
    params = list(model.parameters())
    fused = params[0].device.type == "cuda"  # Adam's one CUDA kernel for every tensor; on a CPU, the usual path
    if t.optimizer == "adamw":  # decay the matrices (embedding, recurrent, head); biases keep their values
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=t.lr, fused=fused or None)
    if t.optimizer == "sgd":  # plain: the update is the averaged gradient times the learning rate
        return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=t.lr, alpha=0.95, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    model: CharRNN, cut: Streams | Windows | None, *, warmup: int, device: torch.device, dtype: torch.dtype | None
) -> torch.Tensor:
    """Summed loss (nats) and count of the scored targets of an evaluation cut, state carried across a stream's
    windows and zero where a batch starts afresh (a random window); the first ``warmup`` targets after a fresh
    start only build up the state. Sums are kept per row in float64, so that a stream's share does not depend
    on which others it was evaluated with."""
    total = torch.zeros(2, dtype=torch.float64, device=device)
    if cut is None:  # a rank without evaluation streams adds nothing to the all-reduced sums
        return total
    model.eval()
    rows = torch.zeros((), dtype=torch.float64, device=device)
    state: State | None = None
    position = 0
    with torch.no_grad(), autocast(device, dtype):
        for x, y, fresh in cut.batches():
            if fresh:
                total[0] += rows.sum()
                rows, state, position = torch.zeros((), dtype=torch.float64, device=device), None, 0
            logits, state = model(x, state)
            losses = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
            scored = max(0, min(y.shape[1], warmup - position))  # warm-up targets of this window
            rows = rows + losses[:, scored:].double().sum(dim=1)
            total[1] += y[:, scored:].numel()
            position += y.shape[1]
    model.train()
    total[0] += rows.sum()
    return total


def evaluate_split(job: Job, folder: Path, split: str = "test", device: str | torch.device | None = None) -> float:
    """Loss in nats/char of a checkpoint on a whole split of the job's corpus, in this process.

    The split (or splits joined, ``val+test``) is cut by the spec's ``eval`` section, as training cuts val, so
    a test loss compares with the val losses the run reported. It runs on this process's GPU if it has one.
    """
    device = torch.device(device or pick())
    spec, t = job.spec, job.spec.train
    manifest = shards.load_manifest(job.corpus)
    vocab = Vocab.from_json(manifest["vocab"])
    where = {"rank": 0, "world": 1, "device": device}
    cut = eval_cut(job.corpus, manifest, split, vocab, spec=spec.eval, seq_len=t.seq_len, **where)
    model = checkpoint.load_model(folder, device)[0]
    dtype = precision_policy(t.precision, Capability.of(device)).autocast
    if isinstance(cut, Windows):
        batch, lower = f"{cut.batch} windows x {cut.length} characters", "--window"
    else:
        batch, lower = f"{spec.eval.streams} streams x {t.seq_len} characters", "--streams"
    with memory_named(device, batch=batch, model=model, lower=lower, device_option=True):
        total = evaluate(model, cut, warmup=spec.eval.warmup, device=device, dtype=dtype)
    return float(total[0] / total[1])


def samples(model: CharRNN, vocab: Vocab, job: Job, *, step: int, index: Index | None = None) -> list[dict[str, Any]]:
    """The spec's samples at an evaluation: one per temperature, each drawn with a CPU generator seeded by the
    step, from a CPU copy of the weights: a character at a time costs no device sync, and the text is what
    ``rnnfarm sample --seed <train.seed + step>`` draws from the checkpoint. With ``index``, each sample
    carries its novelty meter."""
    s = job.spec.samples
    with torch.device("meta"):  # no initialization: it would cost time and draw from the training RNG
        cpu = CharRNN(model.vocab_size, model.spec)
    cpu.load_state_dict({k: v.to("cpu", copy=True) for k, v in model.state_dict().items()}, assign=True)
    prime = torch.from_numpy(vocab.encode(s.prime).astype("int64"))
    out = []
    for temperature in s.temperatures:
        gen = torch.Generator().manual_seed(job.spec.train.seed + step)
        ids = list(generate(cpu, prime, length=s.length, temperature=temperature, generator=gen))
        text = vocab.decode(ids)
        meter = {"novelty": index.meter(text).to_json()} if index is not None else {}
        out.append({"temperature": temperature, "prime": s.prime, "text": text, **meter})
    return out


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators dropout draws from on this worker (the device's own one on a GPU)."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state.pop("rng"))
    if "cuda_rng" in state:
        torch.cuda.set_rng_state(state.pop("cuda_rng"), device)


def interval_loss(losses: torch.Tensor, session: Session) -> float:
    """The interval's mean train loss over every worker: not finite on every rank when one worker's step was not."""
    count = torch.tensor(float(losses.numel()), dtype=torch.float64, device=losses.device)
    total = session.all_reduce(torch.stack([losses.double().sum(), count]))
    return float(total[0] / total[1])


class Guard:
    """Divergence handling: the last good state, kept in memory, and the rollbacks to it.

    The copy is taken when a checkpoint is written, so it is exactly that checkpoint, without a read back
    from storage. Its decisions read only all-reduced losses, so every rank takes the same one.
    """

    def __init__(self, t: TrainSpec, vocab_size: int, trainer: dict[str, Any], logger: Any) -> None:
        self.t, self.logger = t, logger
        # The lowest interval train loss so far; at first a uniform guess's, which an untrained model is near
        self.reference = trainer.get("reference_loss", math.log(vocab_size))
        self.lr_scale, self.rollbacks = trainer.get("lr_scale", 1.0), trainer.get("rollbacks", 0)
        self.good: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"reference_loss": self.reference, "lr_scale": self.lr_scale, "rollbacks": self.rollbacks}

    def check(self, train_loss: float, val_loss: float) -> str | None:
        """Why the interval diverged (a loss not finite, or the train loss exploded); None if it did not."""
        if not math.isfinite(train_loss):
            return f"train loss {train_loss}"
        if train_loss > self.t.explode_factor * self.reference:
            return f"train loss {train_loss:.4g} > {self.t.explode_factor:g} x the lowest so far, {self.reference:.4g}"
        if not math.isfinite(val_loss):
            return f"val loss {val_loss}"
        return None

    def keep(
        self,
        train_loss: float,
        *,
        step: int,
        best: float,
        state: State | None,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        streams: Streams,
        device: torch.device,
        average: Average | None,
        cold: ColdStarts | None,
    ) -> None:
        """Take a good evaluation's state (or the starting one): what its checkpoint holds."""
        self.reference = min(self.reference, train_loss)
        self.good = copy.deepcopy(
            {
                "step": step,
                "best": best,
                "state": state,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "streams": streams.state_dict(),
                "rng": rng_state(device),
                "average": average.state_dict() if average is not None else None,
                "cold": cold.state_dict() if cold is not None else None,
            }
        )

    def roll_back(
        self,
        why: str,
        step: int,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        streams: Streams,
        device: torch.device,
        average: Average | None,
        cold: ColdStarts | None,
    ) -> tuple[int, float, State | None]:
        """Restore the last good state with the learning rate cut; past ``max_rollbacks``, stop the trial."""
        t, good = self.t, copy.deepcopy(self.good)  # the optimizer keeps the tensors it is given
        if self.rollbacks >= t.max_rollbacks:
            cut = f" to the last good checkpoint, the learning rate cut to {self.lr_scale:g} x train.lr"
            raise Diverged(
                f"training diverged at step {step} ({why}) after {self.rollbacks} rollback(s)"
                f"{cut if self.rollbacks else ''}: lower train.lr (now {t.lr:g})"
                f"{'' if t.grad_clip else ', set train.grad_clip'} or raise train.max_rollbacks"
            )
        self.rollbacks, self.lr_scale = self.rollbacks + 1, self.lr_scale * t.rollback_lr_factor
        model.load_state_dict(good["model"])
        optimizer.load_state_dict(good["optimizer"])
        scaler.load_state_dict(good["scaler"])
        streams.load_state_dict(good["streams"])
        set_rng_state(good["rng"], device)
        if average is not None:
            average.load_state_dict(good["average"])
        if cold is not None:
            cold.load_state_dict(good["cold"])
        self.logger.warning(
            "diverged: rolled back",
            step=step,
            reason=why,
            to_step=good["step"],
            rollback=self.rollbacks,
            lr_scale=self.lr_scale,
        )
        return good["step"], good["best"], good["state"]


@dataclass
class Worker:
    """What the loop trains with on this worker, set up once: the corpus's streams, the model, its optimizer."""

    job: Job
    session: Session
    manifest: dict[str, Any]
    vocab: Vocab
    train_streams: Streams
    val_cut: Streams | Windows | None  # None on a rank without evaluation streams or windows
    model: CharRNN
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled with fp16 only
    average: Average | None  # the averaged weights, with train.average
    cold: ColdStarts | None  # which streams start a batch from a zero state, with train.state_reset
    precision: Precision
    logger: Any
    novelty: Index | None = None  # rank 0's index of the train split, for the samples' novelty meter

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def rank(self) -> int:
        return self.session.rank


def set_up(job: Job, session: Session) -> Worker:
    """This worker's share of the corpus as streams, and the model (the same initial weights on every rank)."""
    spec, t = job.spec, job.spec.train
    logger = log.get("rnnfarm.train").bind(trial=job.trial.name, rank=session.rank)
    torch.set_num_threads(spec.cluster.threads_per_worker or max(1, int(spec.cluster.cpus_per_worker)))
    precision = precision_policy(t.precision, Capability.of(session.device))
    logger.info("precision", asked=t.precision, runs=str(precision), device=str(session.device))
    manifest = shards.load_manifest(job.corpus)
    vocab = Vocab.from_json(manifest["vocab"])
    # The streams live on the device in the vocabulary's compact dtype; batches are cut and widened there
    where = {"rank": session.rank, "world": session.world_size, "device": session.device}
    train_streams = streams_for(job.corpus, manifest, "train", vocab, batch=t.batch_size, seq_len=t.seq_len, **where)
    val_cut = eval_cut(job.corpus, manifest, "val", vocab, spec=spec.eval, seq_len=t.seq_len, **where)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = CharRNN(len(vocab), spec.model).to(session.device)
    if job.parent is not None:  # before the optimizer and the average are made from the weights
        start_from(model, vocab, job.parent)
    optimizer, average = make_optimizer(model, t), make_average(model, t.average)
    scaler = torch.amp.GradScaler(session.device.type, enabled=precision.scaler)
    torch.manual_seed(t.seed + 1 + session.rank)  # distinct dropout masks per rank
    # the driver built the index before training: rank 0 maps it from the corpus store
    index = novelty.open_index(job.corpus) if spec.samples.novelty and session.rank == 0 else None
    cold = None
    if t.state_reset:
        cold = ColdStarts(t.state_reset, seed=t.seed, batch=t.batch_size, rank=session.rank, world=session.world_size)
    parts = (manifest, vocab, train_streams, val_cut, model, optimizer, scaler, average, cold, precision, logger, index)
    return Worker(job, session, *parts)


def resume(w: Worker) -> tuple[int, float, State | None, dict[str, Any]]:
    """Where the latest checkpoint left off: its step, best val loss, hidden state and divergence record."""
    with w.session.latest_checkpoint() as folder:
        if folder is None:
            return 0, math.inf, None, {}
        trainer = checkpoint.load_optimizer(folder, w.optimizer)
        if trainer.get("scaler"):  # absent from checkpoints of runs without a scaler (or older than scalers)
            w.scaler.load_state_dict(trainer["scaler"])
        restore_weights(w, folder, trainer)
        w.train_streams.load_state_dict(trainer["streams"])
        worker = checkpoint.load_worker(folder, rank=w.rank)
        set_rng_state(worker, w.device)
        if w.cold is not None and "cold_rng" in worker:  # absent where the run trained without cold starts
            w.cold.load_state_dict(worker)
        state = state_from_tensors(worker, w.device)
        w.logger.info("resumed", step=trainer["step"], checkpoint=folder.name)
        # "divergence" is absent from checkpoints older than rollbacks
        return trainer["step"], trainer["best_val_loss"], state, trainer.get("divergence", {})


def restore_weights(w: Worker, folder: Path, trainer: dict[str, Any]) -> None:
    """The model's weights from a checkpoint; with averaging, the raw ones, and the average from the model file."""
    saved = checkpoint.load_model(folder, w.device)[0].state_dict()
    if w.average is None:
        w.model.load_state_dict(saved)
        return
    w.model.load_state_dict(checkpoint.load_raw(folder))
    w.average.load_state_dict({"steps": trainer["average"]["steps"], "params": saved})


class Interval:
    """The steps since the last evaluation: their losses and gradient norms, how many are logged, their times.

    The losses stay on the device: reading one waits for the device, so it is done only to log.
    """

    def __init__(self, size: int, device: torch.device) -> None:
        self.losses = torch.zeros(size, device=device)
        self.norms = torch.zeros_like(self.losses)  # each step's gradient norm before clipping (when it clips)
        self.restart()

    def restart(self) -> None:
        self.done, self.logged = 0, 0
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def add(self, loss: torch.Tensor, norm: torch.Tensor | None) -> None:
        self.losses[self.done] = loss
        if norm is not None:
            self.norms[self.done] = norm
        self.done += 1

    def unlogged_loss(self) -> float:
        """The mean loss of the steps not logged yet; they are logged now."""
        loss = float(self.losses[self.logged : self.done].mean())
        self.logged = self.done
        return loss

    def finish(self, session: Session) -> float:
        """The interval's mean train loss over every worker; reading it waits for the device, so the interval's
        wall and CPU seconds, taken then, are complete."""
        loss = interval_loss(self.losses[: self.done], session)
        self.wall_s, self.cpu_s = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return loss


def train_step(w: Worker, x: torch.Tensor, y: torch.Tensor, state: State | None, *, lr: float):
    """One optimizer step: forward, backward, the workers' mean gradient, clipped; the loss and the norm.

    With fp16 the loss is scaled before backward and the gradients unscaled after averaging: every rank then
    holds the same gradients, so every rank's scaler skips the same steps and keeps the same scale."""
    for group in w.optimizer.param_groups:
        group["lr"] = lr
    with autocast(w.device, w.precision.autocast):
        logits, state = w.model(x, state)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    state = detach(state)
    w.optimizer.zero_grad(set_to_none=True)
    w.scaler.scale(loss).backward()
    w.session.average_gradients(w.model)
    w.scaler.unscale_(w.optimizer)
    clip, norm = w.job.spec.train.grad_clip, None
    if clip:  # after averaging: the workers' mean gradient is what gets clipped
        norm = torch.nn.utils.clip_grad_norm_(w.model.parameters(), clip)
    w.scaler.step(w.optimizer)
    w.scaler.update()
    if w.average is not None:
        w.average.update(w.model)
    return loss.detach(), norm, state


def validate(w: Worker) -> float:
    """The val loss over every worker's streams, in nats/char, of the averaged weights with averaging."""
    with applied(w.average, w.model):
        dtype = w.precision.autocast
        total = evaluate(w.model, w.val_cut, warmup=w.job.spec.eval.warmup, device=w.device, dtype=dtype)
        total = w.session.all_reduce(total)
    return float(total[0] / total[1])


def evaluation_metrics(
    w: Worker, interval: Interval, *, step: int, train_loss: float, val_loss: float, best: float, **extra: Any
) -> dict[str, Any]:
    """What an evaluation records: losses, learning rate, and the interval's speed."""
    t, world = w.job.spec.train, w.session.world_size
    chars_per_step, done = world * t.batch_size * t.seq_len, interval.done
    return {
        "step": step,
        "epoch": w.train_streams.epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_bpc": bits(val_loss),
        "best_val_loss": best,
        "lr": w.optimizer.param_groups[0]["lr"],
        "grad_norm": float(interval.norms[:done].mean()) if t.grad_clip else None,  # mean over the interval, pre-clip
        "chars": step * chars_per_step,
        "chars_per_s": done * chars_per_step / interval.wall_s,
        "step_time_s": interval.wall_s / done,
        "step_cpu_s": interval.cpu_s / done,  # CPU seconds of this process: below step_time_s, it waited
        **extra,
    }


def store(w: Worker, metrics: dict[str, Any], *, best: float, state: State | None, trainer: dict[str, Any]) -> None:
    """An evaluation on storage: rank 0 writes its samples and metrics to the trial and the model to the
    checkpoint; every rank adds its own state, and the session reports the checkpoint (Ray uploads it)."""
    step, val_loss = metrics["step"], metrics["val_loss"]
    with tempfile.TemporaryDirectory(prefix="rnnfarm-ckpt-") as tmp:
        folder = Path(tmp)
        if w.rank == 0:
            save_weights(w, folder, step=step, val_loss=val_loss, metrics=metrics)
            streams = w.train_streams.state_dict()
            average = {"average": {"steps": w.average.steps}} if w.average is not None else {}
            scaler = {"scaler": w.scaler.state_dict()} if w.precision.scaler else {}
            checkpoint.save_optimizer(
                folder,
                w.optimizer,
                {"step": step, "best_val_loss": best, "streams": streams, **scaler, **average, **trainer},
            )
            w.logger.info("eval", **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
        cold = w.cold.state_dict() if w.cold is not None else {}
        checkpoint.save_worker(folder, {**rng_state(w.device), **state_tensors(state), **cold}, rank=w.rank)
        w.session.report(metrics, folder, checkpoint_name(step))
        if w.rank == 0:
            w.logger.info("checkpoint", step=step, name=checkpoint_name(step), val_loss=round(val_loss, 4))


def save_weights(w: Worker, folder: Path, *, step: int, val_loss: float, metrics: dict[str, Any]) -> None:
    """Rank 0's samples, metrics and model: the averaged one with averaging (the raw one beside it)."""
    job = w.job
    if w.average is not None:
        checkpoint.save_raw(folder, w.model)
    with applied(w.average, w.model):
        drawn = samples(w.model, w.vocab, job, step=step, index=w.novelty)
        job.trial.samples(step).write_json({"step": step, "val_loss": val_loss, "samples": drawn})
        job.trial.metrics(step).write_json(metrics)
        meta = {
            "step": step,
            "saved": now(),  # the date the model card shows as trained
            "val_loss": val_loss,
            "metrics": metrics,
            "corpus": {"name": w.manifest["corpus"], "fingerprint": w.manifest["fingerprint"]},
            "spec": redact.redact(job.spec.model_dump(mode="json", exclude={"storage_options"})),
            **({"parent": job.parent.lineage} if job.parent is not None else {}),
        }
        checkpoint.save_model(folder, w.model, w.vocab, meta)


def train(job: Job, session: Session) -> dict[str, Any]:
    """Train the spec's model on this worker's share of the corpus; returns the last metrics.

    Running out of the device's memory stops it in one line (a UserError) that names the batch and the
    model's size: the run's failure line."""
    t = job.spec.train
    w = set_up(job, session)
    batch = f"{t.batch_size} x {t.seq_len} characters per worker"
    lower = "train.batch_size or train.seq_len, or the model's size (model.hidden, model.layers)"
    with memory_named(w.device, batch=batch, model=w.model, lower=lower):
        return steps(w)


def steps(w: Worker) -> dict[str, Any]:
    """The loop: train, evaluate and store until ``train.steps``, from where the latest checkpoint left off."""
    t = w.job.spec.train
    step, best, state, divergence = resume(w)
    resumed_from = step
    guard = Guard(t, len(w.vocab), divergence, w.logger)
    kept = {"model": w.model, "optimizer": w.optimizer, "scaler": w.scaler, "streams": w.train_streams}
    kept |= {"device": w.device, "average": w.average, "cold": w.cold}
    guard.keep(guard.reference, step=step, best=best, state=state, **kept)
    started = time.perf_counter()
    interval = Interval(min(t.eval_every, t.steps), w.device)
    metrics: dict[str, Any] = {}
    while step < t.steps:
        # One step on the next batch; a new epoch of the streams starts from a zero hidden state, and with
        # cold starts some streams start this batch from one too (drawn whatever the state, so resume is exact).
        x, y, epoch_start = w.train_streams.next()
        if epoch_start:
            state = None
        if w.cold is not None:
            cold = w.cold.draw()
            state = reset_rows(state, cold) if state is not None else None
        loss, norm, state = train_step(w, x, y, state, lr=t.lr * guard.lr_scale * lr_factor(step, t))
        interval.add(loss, norm)
        step += 1
        if step == resumed_from + 1:
            synchronize(w.device)  # a GPU step is only queued when train_step returns
            w.logger.info("first step", step=step, seconds=round(time.perf_counter() - started, 3))
        if step % t.log_every == 0 and step % t.eval_every and w.rank == 0:
            w.logger.info("step", step=step, loss=round(interval.unlogged_loss(), 4))
        if step % t.eval_every and step != t.steps:
            continue

        # Evaluate. The interval's loss over every worker is the same on every rank: all of them evaluate, or none.
        train_loss = interval.finish(w.session)
        val_loss = validate(w) if math.isfinite(train_loss) else math.nan
        if why := guard.check(train_loss, val_loss):  # nothing of a diverged interval is stored
            step, best, state = guard.roll_back(why, step, **kept)
            interval.restart()
            continue
        best = min(best, val_loss)
        guard.keep(train_loss, step=step, best=best, state=state, **kept)

        # Store the evaluation and its checkpoint, then start the next interval.
        extra = {"elapsed_s": time.perf_counter() - started, "resumed_from": resumed_from, "rollbacks": guard.rollbacks}
        metrics = evaluation_metrics(
            w, interval, step=step, train_loss=train_loss, val_loss=val_loss, best=best, **extra
        )
        store(w, metrics, best=best, state=state, trainer={"divergence": guard.state_dict()})
        interval.restart()
    return metrics
