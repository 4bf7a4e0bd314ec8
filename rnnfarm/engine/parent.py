"""Fine-tuning: training that starts from a parent model's weights (``train.init_from``).

The driver finds the parent's checkpoint (a run's best, a trial's best kept, or a checkpoint folder), checks
that its shape is the spec's, and records its lineage with the sha256 of its weights; each worker reads the
weights from storage here, checks them against that sha256, and copies them into its new model. The child's
vocabulary is the parent's with any symbols it adds appended (``corpus.normalize.inherit_vocab``): the parent's
rows keep their ids, and the rows of the added symbols start from the parent's (a mean embedding, a mean
head row and the lowest head bias: an added symbol starts as a rare one). The optimizer, the step and the
schedule start fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from ..corpus.vocab import Vocab
from ..errors import UserError
from ..redact import scrub
from ..spec import SHAPE, ModelSpec
from ..storage import Store, sha256_bytes
from . import checkpoint
from .model import CharRNN


@dataclass(frozen=True)
class Parent:
    """The parent checkpoint folder on storage, and what the child records of it."""

    store: Store
    lineage: dict[str, Any]  # url, checkpoint, corpus, fingerprint, sha256, step, val_loss, model
    vocab: Vocab


def describe(model: dict[str, Any]) -> str:
    """A model's shape in words: ``2x256 lstm, embedding 64``."""
    return f"{model['layers']}x{model['hidden']} {model['cell']}, embedding {model['embedding']}"


def check_shape(parent: dict[str, Any], child: ModelSpec, url: str) -> None:
    """Refuse, in one line naming both shapes, a spec whose model the parent's weights do not fit."""
    mine = child.model_dump()
    if any(parent.get(key) != mine[key] for key in SHAPE):
        raise UserError(
            f"train.init_from {scrub(url)}: the parent is a {describe(parent)}, the spec's model a {describe(mine)}: "
            "set model.cell, model.layers, model.hidden and model.embedding to the parent's"
        )


def read(folder: Store, url: str) -> tuple[dict[str, Any], bytes]:
    """A parent checkpoint's metadata and the bytes of its weights, checked against the sha256 it records."""
    meta = (folder / checkpoint.META).read_json()
    if not isinstance(meta, dict) or "model" not in meta or "vocab" not in meta:
        raise UserError(f"train.init_from {scrub(url)}: {checkpoint.META} is not an rnnfarm checkpoint's metadata")
    data = (folder / checkpoint.MODEL).read_bytes()
    recorded = meta.get("files", {}).get(checkpoint.MODEL, {}).get("sha256")
    if recorded is not None and recorded != sha256_bytes(data):
        raise UserError(
            f"train.init_from {scrub(url)}: {checkpoint.MODEL} differs from the sha256 its {checkpoint.META} "
            "records: the checkpoint is corrupt or was replaced; point at an intact one"
        )
    return meta, data


def lineage(url: str, folder: Store, meta: dict[str, Any], data: bytes) -> dict[str, Any]:
    """What a child records of its parent (no credentials: URLs are scrubbed)."""
    corpus = meta.get("corpus") or {}
    return {
        "url": scrub(url),
        "checkpoint": scrub(folder.url),
        "corpus": corpus.get("name"),
        "fingerprint": corpus.get("fingerprint"),
        "sha256": sha256_bytes(data),
        "step": meta.get("step"),
        "val_loss": meta.get("val_loss"),
        "model": describe(meta["model"]),
    }


def weights(parent: Parent) -> tuple[dict[str, torch.Tensor], Vocab]:
    """The parent's weights and vocabulary, read from storage and checked against the recorded sha256."""
    meta, data = read(parent.store, parent.lineage["url"])
    if sha256_bytes(data) != parent.lineage["sha256"]:
        raise UserError(
            f"train.init_from {parent.lineage['url']}: its weights changed after the run started "
            f"(sha256 {sha256_bytes(data)[:12]}..., recorded {parent.lineage['sha256'][:12]}...): start the run again"
        )
    try:
        return load(data), Vocab.from_json(meta["vocab"])
    except SafetensorError as exc:
        raise UserError(f"train.init_from {parent.lineage['url']}: not a safetensors file ({exc})") from None


def check_vocab(vocab: Vocab, parent: Parent) -> None:
    """Refuse a corpus vocabulary that does not start with the parent's (a ``corpus.vocab_from`` elsewhere)."""
    n = len(parent.vocab)
    if vocab.symbols[:n] != parent.vocab.symbols or vocab.level != parent.vocab.level:
        raise UserError(
            f"train.init_from {parent.lineage['url']}: the corpus is not encoded with this parent's vocabulary: "
            "leave corpus.vocab_from out (init_from implies it), or point it at the same parent"
        )


@torch.no_grad()
def start_from(model: CharRNN, vocab: Vocab, parent: Parent) -> None:
    """Copy the parent's weights into ``model``, whose vocabulary starts with the parent's; the rows of symbols
    the parent lacks start from the parent's rows (mean embedding, mean head row, lowest head bias)."""
    tensors, theirs = weights(parent)
    check_vocab(vocab, Parent(parent.store, parent.lineage, theirs))
    n = len(theirs)
    grown = dict(tensors)
    for name, table in (("embed.weight", tensors["embed.weight"]), ("head.weight", tensors["head.weight"])):
        grown[name] = torch.cat([table, table.mean(dim=0, keepdim=True).expand(len(vocab) - n, -1)])
    bias = tensors["head.bias"]
    grown["head.bias"] = torch.cat([bias, bias.min().expand(len(vocab) - n)])
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in grown.items()})
