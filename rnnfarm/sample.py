"""Sampling text from a stored checkpoint: a checkpoint folder, or a run (its best checkpoint)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from . import checkpoint, redact
from .errors import UserError
from .model import generate
from .storage import Store, is_local, verify_sha256


def verified(folder: Path) -> Path:
    """``folder`` after checking the weights against the sha256 its ``meta.json`` records, if it does."""
    recorded = checkpoint.load_meta(folder).get("files", {})
    if checkpoint.MODEL in recorded:
        verify_sha256(folder / checkpoint.MODEL, recorded[checkpoint.MODEL]["sha256"], str(folder / checkpoint.MODEL))
    return folder


@contextlib.contextmanager
def local_checkpoint(target: str, options: dict | None = None) -> Iterator[Path]:
    """A local folder holding the checkpoint that ``target`` names, verified (downloaded when remote).

    ``target`` is a checkpoint folder, or a run or a pulled run (its ``best/``), at any storage URL.
    """
    store = Store.at(target, options)
    store.check()
    for candidate in (store, store / "best"):
        if (candidate / checkpoint.META).exists():
            if is_local(candidate.url):
                yield verified(Path(candidate.url))
                return
            with tempfile.TemporaryDirectory(prefix="rnnfarm-sample-") as tmp:
                for name in (checkpoint.META, checkpoint.MODEL):
                    (candidate / name).download(Path(tmp) / name)
                yield verified(Path(tmp))
            return
    raise UserError(
        f"{redact.scrub(target)}: neither a checkpoint nor a run with a best checkpoint (no {checkpoint.META} found)"
    )


def sample(
    target: str,
    prime: str = "\n",
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    argmax: bool = False,
    seed: int | None = None,
    options: dict | None = None,
) -> Iterator[str]:
    """Yield generated characters one by one (the prime itself is not repeated)."""
    if not prime:
        raise UserError("--prime must not be empty: the model needs at least one character to start from")
    if temperature <= 0:
        raise UserError("--temperature must be > 0 (use --argmax for the most likely character)")
    with local_checkpoint(target, options) as folder:
        model, vocab, _ = checkpoint.load_model(folder)
    ids = torch.from_numpy(vocab.encode(prime, strict=True).astype("int64"))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    decode = vocab.decoder()  # a byte-level model's bytes become characters once a UTF-8 sequence completes
    for token in generate(model, ids, length, temperature=temperature, top_k=top_k, argmax=argmax, generator=gen):
        if text := decode(token):
            yield text
