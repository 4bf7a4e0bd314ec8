"""A checkpoint's loss on a split of its corpus, under the spec's fixed evaluation cut (``eval:``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import spec as specs
from ..corpus.build import build
from ..engine import checkpoint
from ..engine.loop import Job, evaluate_split
from ..errors import UserError
from ..layout import Run
from ..storage import Store
from .sample import local_checkpoint


@dataclass(frozen=True)
class Scored:
    loss: float  # nats per char
    step: int
    cut: specs.EvalSpec


def checkpoint_loss(
    target: str,
    *,
    split: str = "val",
    trial: str | None = None,
    storage: str | None = None,
    cut: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> Scored:
    """The loss of the checkpoint ``target`` names (a checkpoint folder, or a run: its best) on ``split`` (or
    splits joined, ``val+test``), cut as its spec's ``eval`` says with ``cut``'s settings over it.

    The corpus is the one the checkpoint was trained on, found (or rebuilt) under the storage its spec names,
    or ``storage``; a corpus that is not the same text any more is refused. ``device``: where the model
    runs (None: a GPU if this process has one).
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
        job = Job(job_spec, built.folder, Run.under(root, job_spec.name).trial())
        loss = evaluate_split(job, folder, split, device)
    return Scored(loss, meta["step"], job_spec.eval)
