"""Sampling text from a stored checkpoint: a checkpoint folder, a run (its best checkpoint), or a run's trial."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .. import redact
from ..corpus.vocab import Vocab
from ..engine import checkpoint
from ..engine.model import CharRNN, generate
from ..errors import UserError
from ..layout import Run, trial_folder
from ..runs.leaderboard import best_checkpoint
from ..runs.record import require
from ..storage import Store, is_local, text_file, verify_sha256


def verified(folder: Path) -> Path:
    """``folder`` after checking the weights against the sha256 its ``meta.json`` records, if it does."""
    recorded = checkpoint.load_meta(folder).get("files", {})
    if checkpoint.MODEL in recorded:
        verify_sha256(folder / checkpoint.MODEL, recorded[checkpoint.MODEL]["sha256"], str(folder / checkpoint.MODEL))
    return folder


def trial_checkpoint(target: str, trial: str, options: dict | None = None) -> Store:
    """The best kept checkpoint of one trial of the run at ``target``."""
    run = Run(Store.at(target, options))
    require(run)
    kept = best_checkpoint(run.trial(trial))
    if kept is None:
        known = ", ".join(run.trials()) or "none"
        raise UserError(
            f"trial {trial!r} of run {run.name} has no kept checkpoint (trials: {known}); "
            "a pulled run holds only best/: sample the run on its storage, or drop --trial"
        )
    return run.trial(trial).checkpoint(kept[0])


def checkpoint_store(target: str, options: dict | None = None, trial: str | None = None) -> Store:
    """The checkpoint folder ``target`` names, on its storage: a checkpoint folder; a run or a pulled run (its
    ``best/``); a trial's folder (``RUN/trials/ID``: its best kept checkpoint); with ``trial``, the run's
    trial of that id. Any storage URL."""
    if trial is not None:
        return trial_checkpoint(target, trial, options)
    store = Store.at(target, options)
    store.check()
    if (store / checkpoint.META).exists():
        return store
    if (Run(store).best / checkpoint.META).exists():
        return Run(store).best
    if (found := trial_folder(store)) is not None:
        run, name = found
        return trial_checkpoint(run.store.url, name, options)
    raise UserError(
        f"{redact.scrub(target)}: neither a checkpoint nor a run with a best checkpoint, nor a run's trial folder "
        f"(no {checkpoint.META} found)"
    )


@contextlib.contextmanager
def local_checkpoint(target: str, options: dict | None = None, trial: str | None = None) -> Iterator[Path]:
    """A local folder holding the checkpoint that ``target`` names (see ``checkpoint_store``), verified
    (downloaded when remote)."""
    found = checkpoint_store(target, options, trial)
    if is_local(found.url):
        yield verified(Path(found.url))
        return
    with tempfile.TemporaryDirectory(prefix="rnnfarm-sample-") as tmp:
        for name in (checkpoint.META, checkpoint.MODEL):
            (found / name).download(Path(tmp) / name)
        yield verified(Path(tmp))


def load(
    target: str, options: dict | None = None, trial: str | None = None, device: str | torch.device = "cpu"
) -> tuple[CharRNN, Vocab, dict]:
    """The model (on ``device``), vocabulary and metadata of the checkpoint ``target`` names (see
    ``local_checkpoint``)."""
    with local_checkpoint(target, options, trial) as folder:
        return checkpoint.load_model(folder, device)


def read_prime(source: str) -> str:
    """The text of a prime file (a path or any storage URL), as it is: a long or multi-line prime needs no quoting."""
    text = text_file(source, "--prime-file")
    if not text:
        raise UserError(f"--prime-file {source}: the file is empty: give the text to start from")
    return text


def check(prime: str, temperature: float) -> None:
    if not prime:
        raise UserError("--prime must not be empty: the model needs at least one character to start from")
    if temperature <= 0:
        raise UserError("--temperature must be > 0 (use --argmax for the most likely character)")


def characters(
    model: CharRNN,
    vocab: Vocab,
    prime: str = "\n",
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    argmax: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """The generated characters, one by one as the model produces them (the prime is not repeated).

    The prime and temperature are checked at once, before the first character is asked for.
    """
    check(prime, temperature)
    ids = torch.from_numpy(vocab.encode(prime, strict=True).astype("int64"))
    tokens = generate(
        model, ids, length=length, temperature=temperature, top_k=top_k, argmax=argmax, generator=generator
    )

    decode = vocab.decoder()  # a byte-level model's bytes become characters once a UTF-8 sequence completes

    def drawn() -> Iterator[str]:
        for token in tokens:
            if text := decode(token):
                yield text

    return drawn()


def sample(
    target: str,
    prime: str = "\n",
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    argmax: bool = False,
    seed: int | None = None,
    options: dict | None = None,
    trial: str | None = None,
) -> Iterator[str]:
    """Yield generated characters one by one (the prime itself is not repeated)."""
    check(prime, temperature)
    model, vocab, _ = load(target, options, trial)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    yield from characters(model, vocab, prime, length, temperature, top_k, argmax, gen)
