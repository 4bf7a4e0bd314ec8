"""Checkpoints: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

A checkpoint folder holds:
    model.safetensors   weights: the averaged ones with train.average (written by rank 0)
    meta.json           model shape, vocabulary, step, val loss, metrics, corpus fingerprint, spec
    optimizer.safetensors + trainer.json                optimizer state, stream position, schedule
    worker-<rank>.safetensors                           that rank's hidden state and RNG states (CPU; GPU too)
    raw.safetensors     with train.average: the weights training goes on from (not averaged)
The first two are all that sampling needs (the ``best/`` folder of a run holds just those).
On storage each file is written whole and ``meta.json`` last (``upload``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..corpus.vocab import Vocab
from ..errors import UserError
from ..spec import ModelSpec
from ..storage import Store
from .model import CharRNN

FORMAT = 1
MODEL, META, RAW = "model.safetensors", "meta.json", "raw.safetensors"
OPTIMIZER, TRAINER = "optimizer.safetensors", "trainer.json"
TRAINER_KEYS = ("param_groups", "scalars", "step", "best_val_loss", "streams")  # what a resume reads


def save_model(folder: Path, model: CharRNN, vocab: Vocab, meta: dict[str, Any]) -> None:
    save_file(_cpu(model.state_dict()), str(folder / MODEL))
    Store.at(str(folder / META)).write_json(
        {"format": FORMAT, "model": model.spec.model_dump(), "vocab": vocab.to_json(), **meta},
    )


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_raw(folder: Path, model: CharRNN) -> None:
    """The weights training goes on from, where ``model.safetensors`` holds averaged ones."""
    save_file(_cpu(model.state_dict()), str(folder / RAW))


def load_raw(folder: Path) -> dict[str, torch.Tensor]:
    return _load_tensors(folder / RAW)


def upload(folder: Path, target: Store) -> None:
    """Copy a local checkpoint folder to ``target`` on storage: each file whole, ``meta.json`` last; then
    check that the store lists every file at its size, so that a checkpoint reported as saved is whole."""
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: (p.name == META, p.name))
    for path in files:
        (target / path.name).upload(path)
    stored = target.sizes()
    missing = [p.name for p in files if stored.get(p.name) != p.stat().st_size]
    if missing:
        raise OSError(f"{target.url}: {', '.join(missing)} did not reach storage whole")


def load_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder}: not an rnnfarm checkpoint (no {META})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{folder}/{META}: not valid JSON, so not an rnnfarm checkpoint") from None
    if not isinstance(meta, dict) or "model" not in meta or "vocab" not in meta:
        raise UserError(f"{folder}/{META}: not an rnnfarm checkpoint's metadata")
    if meta.get("format", 0) > FORMAT:
        raise UserError(f"{folder}: checkpoint format {meta['format']} is newer than this rnnfarm reads; upgrade it")
    return meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: missing from the checkpoint") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a safetensors file ({exc})") from None


def load_model(folder: Path, device: str | torch.device = "cpu") -> tuple[CharRNN, Vocab, dict[str, Any]]:
    meta = load_meta(folder)
    vocab = Vocab.from_json(meta["vocab"])
    model = CharRNN(len(vocab), ModelSpec.model_validate(meta["model"]))
    try:
        model.load_state_dict(_load_tensors(folder / MODEL))
    except RuntimeError as exc:
        raise UserError(f"{folder}: weights do not fit the model in {META} ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), vocab, meta


def save_optimizer(folder: Path, optimizer: torch.optim.Optimizer, trainer: dict[str, Any]) -> None:
    """Optimizer tensors flattened to ``state.<param>.<key>``; param groups and the rest as JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entries in sd["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors, str(folder / OPTIMIZER))
    Store.at(str(folder / TRAINER)).write_json({"param_groups": sd["param_groups"], "scalars": scalars, **trainer})


def _load_trainer(path: Path) -> dict[str, Any]:
    try:
        trainer = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing from the checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON, so not an rnnfarm checkpoint's trainer state") from None
    if not isinstance(trainer, dict) or not all(k in trainer for k in TRAINER_KEYS):
        raise UserError(f"{path}: not an rnnfarm checkpoint's trainer state (it needs {', '.join(TRAINER_KEYS)})")
    return trainer


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    trainer = _load_trainer(folder / TRAINER)
    state: dict[int, dict[str, Any]] = {}
    for name, value in _load_tensors(folder / OPTIMIZER).items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in trainer.pop("scalars").items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": trainer.pop("param_groups")})
    return trainer


def save_worker(folder: Path, tensors: dict[str, torch.Tensor], *, rank: int) -> None:
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / f"worker-{rank}.safetensors")
    )


def load_worker(folder: Path, *, rank: int) -> dict[str, torch.Tensor]:
    return _load_tensors(folder / f"worker-{rank}.safetensors")
