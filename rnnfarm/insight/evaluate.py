"""A checkpoint's loss on a split of its corpus, under the spec's fixed evaluation cut (``eval:``), and what a
cold start costs it: its loss at the first positions after a zero state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import spec as specs
from ..corpus import shards
from ..corpus.build import build
from ..corpus.vocab import Vocab
from ..engine import checkpoint
from ..engine.device import pick
from ..engine.loop import Capability, Job, autocast, evaluate_split, precision_policy
from ..engine.model import CharRNN
from ..engine.streams import Windows, load_tokens, split_tokens
from ..errors import UserError
from ..layout import Run
from ..storage import Store
from .sample import local_checkpoint


@dataclass(frozen=True)
class Scored:
    loss: float  # nats per char
    step: int
    cut: specs.EvalSpec


@contextlib.contextmanager
def checkpoint_job(
    target: str, *, trial: str | None, storage: str | None, cut: dict[str, Any] | None = None
) -> Iterator[tuple[Path, dict[str, Any], Job]]:
    """The checkpoint ``target`` names (a checkpoint folder, or a run: its best) as a local folder, its metadata,
    and the job that trained it with ``cut``'s settings over its ``eval`` section.

    The corpus is the one the checkpoint was trained on, found (or rebuilt) under the storage its spec names,
    or ``storage``; a corpus that is not the same text any more is refused.
    """
    with local_checkpoint(target, trial=trial) as folder:
        meta = checkpoint.load_meta(folder)
        job_spec = specs.parse(meta.get("spec"), f"{target}: the checkpoint's spec")
        if cut:
            changed = {**meta["spec"], "eval": {**job_spec.eval.model_dump(), **cut}}
            job_spec = specs.parse(changed, "the evaluation cut asked for")
        root = Store.at(storage or job_spec.storage)
        built = build(root, job_spec.corpus)
        if built.manifest["fingerprint"] != meta["corpus"]["fingerprint"]:
            raise UserError(
                f"{target}: the corpus under {root.url} is not the text this checkpoint was trained on "
                "(another fingerprint): pass --storage with the run's storage"
            )
        yield folder, meta, Job(job_spec, built.folder, Run.under(root, job_spec.name).trial())


def checkpoint_loss(
    target: str,
    *,
    split: str = "val",
    trial: str | None = None,
    storage: str | None = None,
    cut: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> Scored:
    """The loss of the checkpoint ``target`` names on ``split`` (or splits joined, ``val+test``), cut as its
    spec's ``eval`` says with ``cut``'s settings over it. ``device``: where the model runs (None: a GPU if this
    process has one)."""
    with checkpoint_job(target, trial=trial, storage=storage, cut=cut) as (folder, meta, job):
        loss = evaluate_split(job, folder, split, device)
    return Scored(loss, meta["step"], job.spec.eval)


@dataclass(frozen=True)
class ColdStart:
    """The mean loss (nats/char) at each of the first positions after a zero state (``cold``), and at the same
    targets read after ``context`` characters before them (``warm``), over ``windows`` random windows."""

    cold: list[float]
    warm: list[float]
    windows: int
    context: int
    seed: int
    step: int

    @property
    def cold_loss(self) -> float:
        return float(np.mean(self.cold))

    @property
    def warm_loss(self) -> float:
        return float(np.mean(self.warm))

    @property
    def cost(self) -> float:
        """What starting from a zero state costs over those positions, in nats/char."""
        return self.cold_loss - self.warm_loss

    def describe(self) -> str:
        """The cut in words, as `rnnfarm evaluate --cold-start` prints it."""
        return f"{self.windows} random windows, seed {self.seed}, at step {self.step}"


def position_losses(model: CharRNN, cut: Windows, *, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """The mean loss (nats) at each position of a cut's windows, each window read from a zero state."""
    sums = torch.zeros(cut.length, dtype=torch.float64, device=device)
    model.eval()
    with torch.no_grad(), autocast(device, dtype):
        for x, y, _ in cut.batches():
            logits, _ = model(x)
            sums += F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").double().sum(dim=0)
    return sums / len(cut.starts)


def cold_start(
    target: str,
    *,
    positions: int = 32,
    split: str = "val",
    windows: int = 4000,
    context: int = 256,
    seed: int = 0,
    trial: str | None = None,
    storage: str | None = None,
    device: str | torch.device | None = None,
) -> ColdStart:
    """What a cold start costs the checkpoint ``target`` names: its loss at each of the first ``positions``
    targets of ``windows`` random windows of ``split`` read from a zero state, beside its loss at the same
    targets read after the ``context`` characters before them (also from a zero state, far enough back that
    the state has built up). The starts are drawn with ``seed``, so two checkpoints are scored on the same text.
    ``device``: where the model runs (None: a GPU if this process has one)."""
    device = torch.device(device or pick())
    with checkpoint_job(target, trial=trial, storage=storage) as (folder, meta, job):
        manifest = shards.load_manifest(job.corpus)
        n = split_tokens(manifest, split)
        if n <= context + positions:
            raise UserError(
                f"--cold-start {positions} with --context {context}: the {split} split holds {n} tokens, too few "
                "for one window and its last target: lower them"
            )
        tokens = load_tokens(job.corpus, manifest, split, 0, n, Vocab.from_json(manifest["vocab"]))
        starts = np.random.default_rng(seed).integers(0, n - context - positions, size=windows)
        model = checkpoint.load_model(folder, device)[0]
        dtype = precision_policy(job.spec.train.precision, Capability.of(device)).autocast
        where = {"device": device, "dtype": dtype}
        cold = position_losses(model, Windows(tokens, starts + context, positions, device=device), **where)
        warm = position_losses(model, Windows(tokens, starts, context + positions, device=device), **where)
    return ColdStart(cold.tolist(), warm[context:].tolist(), windows, context, seed, meta["step"])
