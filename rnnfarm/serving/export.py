"""``rnnfarm export --format onnx``: the network as one ONNX graph, with its vocabulary and card beside it.

The graph takes token ids (batch, time) and the recurrent state and returns logits and the new state, with
dynamic batch and time axes, so one graph runs a prime of any length and then one character at a time with
the state carried, as ``rnnfarm.model.generate`` does. It is exported in fp32 in eval mode (dropout off)
whatever precision the checkpoint was trained in, and checked against PyTorch before it is written.

A folder written by ``export`` holds:
    model.onnx    the graph, with the weights inside
    vocab.json    the vocabulary (``Vocab.to_json``): symbol i is token id i
    model.json    the card: cell, sizes, corpus and its fingerprint, val loss, when trained, rnnfarm version,
                  the graph's inputs and outputs and the sha256 of model.onnx (written last)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..corpus.vocab import Vocab
from ..engine import checkpoint
from ..engine.model import CharRNN
from ..errors import UserError
from ..insight.sample import local_checkpoint
from ..layout import Run
from ..runs import pull
from ..storage import Store, is_local, sha256_file

FORMAT = 1
ONNX, VOCAB, CARD = "model.onnx", "vocab.json", "model.json"
OPSET = 17  # ONNX Runtime 1.20+ and ONNX Runtime Web run it; LSTM, GRU and RNN are native ops there
TOLERANCE = 1e-4  # the largest difference from PyTorch's logits an exported graph may show (fp32)


class Graph(nn.Module):
    """CharRNN with its state as separate tensors in and out (h; h and c for an LSTM): ONNX has no tuples."""

    def __init__(self, model: CharRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, ...]:
        logits, state = self.model(tokens, h if c is None else (h, c))
        return (logits, *state) if isinstance(state, tuple) else (logits, state)


def names(cell: str) -> tuple[list[str], list[str]]:
    """The graph's input and output names: the state is ``h`` (and ``c`` for an LSTM), returned as ``*_out``."""
    state = ["h", "c"] if cell == "lstm" else ["h"]
    return ["tokens", *state], ["logits", *(f"{s}_out" for s in state)]


def zero_state(model: CharRNN, batch: int) -> list[Tensor]:
    spec = model.spec
    return [torch.zeros(spec.layers, batch, spec.hidden) for _ in names(spec.cell)[0][1:]]


def to_onnx(model: CharRNN, path: Path) -> None:
    """Write the fp32, eval-mode graph of ``model`` to ``path``.

    This uses the TorchScript exporter (``dynamo=False``). Both exporters turn nn.LSTM/GRU/RNN into ONNX's own
    LSTM/GRU/RNN ops, which match PyTorch to ~1e-7, but torch 2.13's default exporter (torch.export, which
    also needs onnxscript) fixes the logits' time axis at the example's length, while the TorchScript
    exporter keeps the batch and time axes named here dynamic, so one graph serves a prime and single steps.
    """
    graph = Graph(model.float()).eval()
    inputs, outputs = names(model.spec.cell)
    dynamic = {"tokens": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
    dynamic |= {name: {1: "batch"} for name in inputs[1:] + outputs[1:]}
    example = (torch.zeros(2, 3, dtype=torch.int64), *zero_state(model, 2))  # batch 2: no batch-1 special case
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that nn.RNN's Python checks were traced as
        # constants (they hold for every input shape the dynamic axes allow); neither concerns this graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            example,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


def check(model: CharRNN, path: Path) -> float:
    """The largest difference between the graph's logits and PyTorch's on a probe: a 3x64 prime, then a step
    with the state carried; a UserError past ``TOLERANCE``, so no wrong graph is published."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, _ = names(model.spec.cell)
    generator = torch.Generator().manual_seed(0)
    prime = torch.randint(0, model.vocab_size, (3, 64), generator=generator)
    step = torch.randint(0, model.vocab_size, (3, 1), generator=generator)
    worst = 0.0
    state, ours = zero_state(model, 3), None  # each side carries its own state
    with torch.no_grad():
        for tokens in (prime, step):
            theirs = session.run(None, dict(zip(inputs, [t.numpy() for t in (tokens, *state)], strict=True)))
            logits, ours = model(tokens, ours)
            worst = max(worst, float(np.abs(theirs[0] - logits.numpy()).max()))
            state = [torch.from_numpy(s) for s in theirs[1:]]
    if not worst <= TOLERANCE:
        raise UserError(
            f"the exported graph's logits differ from PyTorch's by {worst:.2e} (> {TOLERANCE}): not written"
        )
    return worst


def card(model: CharRNN, vocab: Vocab, meta: dict[str, Any], onnx_sha256: str) -> dict[str, Any]:
    spec = model.spec
    inputs, outputs = names(spec.cell)
    return {
        "format": FORMAT,
        "cell": spec.cell,
        "layers": spec.layers,
        "hidden": spec.hidden,
        "embedding": spec.embedding,
        "vocab_size": len(vocab),
        "vocab_level": vocab.level,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": meta.get("corpus"),
        "val_loss": meta.get("val_loss"),
        "step": meta.get("step"),
        "trained": meta.get("saved"),  # when the checkpoint was saved (UTC); None for checkpoints older than that
        "rnnfarm_version": __version__,
        "onnx": {
            "file": ONNX,
            "sha256": onnx_sha256,
            "opset": OPSET,
            "dtype": "float32",
            "inputs": inputs,
            "outputs": outputs,
            "state_shape": ["layers", "batch", "hidden"],
        },
    }


@contextlib.contextmanager
def checkpoint_folder(target: str, options: dict | None = None, trial: str | None = None) -> Iterator[Path]:
    """A local, verified copy of the checkpoint ``target`` names: a run on remote storage comes through
    ``pull`` (each file checked against the run's checksums); anything else as ``rnnfarm sample`` finds it."""
    if is_local(target) or trial is not None:
        with local_checkpoint(target, options, trial) as folder:
            yield folder
        return
    run = Run(Store.at(target, options))
    run.store.check()
    if run.info() is None:  # a checkpoint folder, not a run
        with local_checkpoint(target, options) as folder:
            yield folder
        return
    with tempfile.TemporaryDirectory(prefix="rnnfarm-export-") as tmp:
        pull.pull(target, tmp, best=True, samples=False, options=options)
        yield Path(Run(Store.at(tmp)).best.url)  # the pulled copy has the run's layout


@dataclass(frozen=True)
class Exported:
    folder: Path
    card: dict[str, Any]
    difference: float  # the largest difference from PyTorch's logits on the probe


def write(model: CharRNN, vocab: Vocab, meta: dict[str, Any], out: Path) -> Exported:
    """Export to ``out``: staged beside it, then each file moved in, ``model.json`` last, so a folder whose
    card is there is whole."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give -o a folder to write the export into")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        to_onnx(model, stage / ONNX)
        difference = check(model, stage / ONNX)
        described = card(model, vocab, meta, sha256_file(stage / ONNX))
        (stage / VOCAB).write_text(json.dumps(vocab.to_json(), ensure_ascii=False) + "\n", encoding="utf-8")
        (stage / CARD).write_text(json.dumps(described, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.mkdir(exist_ok=True)
        (out / CARD).unlink(missing_ok=True)
        for name in (ONNX, VOCAB, CARD):
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Exported(out, described, difference)


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx relies on it)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("export needs onnx and onnxruntime: pip install 'rnnfarm[export]'") from None


def export(target: str, out: str | Path, *, options: dict | None = None, trial: str | None = None) -> Exported:
    """Export the checkpoint ``target`` names (a checkpoint folder, a run or a pulled run, at any storage URL;
    with ``trial``, that trial's best kept checkpoint) as ONNX into the folder ``out``."""
    require_onnx()
    with checkpoint_folder(target, options, trial) as folder:
        model, vocab, meta = checkpoint.load_model(folder)
    return write(model, vocab, meta, Path(out))
