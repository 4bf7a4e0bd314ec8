"""`rnnfarm export --format onnx`: the graph run by onnxruntime matches PyTorch on a long prime and on single
steps with the state carried, for every cell; argmax generation from it is `rnnfarm sample --argmax`'s text;
a run on a real S3 server (SeaweedFS on 127.0.0.1) exports through pull's verified download."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import s3fs
import torch
import yaml
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine import checkpoint
from rnnfarm.engine.model import CharRNN
from rnnfarm.spec import ModelSpec
from rnnfarm.storage import sha256_file

from .conftest import make_spec

STORAGE = "s3://rnnfarm-test/exports"


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def checkpoints(trained_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The trained 2x32 LSTM, and a 2-layer GRU and RNN with dropout 0.5 (random weights, tiny Shakespeare's
    vocabulary) saved as checkpoints: dropout between and after the layers must be off in the graph."""
    found = {"lstm": trained_checkpoint}
    _, vocab, meta = checkpoint.load_model(trained_checkpoint)
    torch.manual_seed(0)
    for cell in ("gru", "rnn"):
        folder = tmp_path_factory.mktemp(cell)
        model = CharRNN(len(vocab), ModelSpec(cell=cell, layers=2, hidden=24, embedding=8, dropout=0.5))
        checkpoint.save_model(folder, model, vocab, {k: meta[k] for k in ("step", "val_loss", "corpus", "saved")})
        found[cell] = folder
    return found


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for cell, folder in checkpoints.items():
        out[cell] = tmp_path_factory.mktemp(f"onnx-{cell}")
        result = run_cli("export", str(folder), "--format", "onnx", "-o", str(out[cell]))
        assert result.exit_code == 0, result.output
    return out


class Onnx:
    """The exported folder run the way any consumer would: model.json names the inputs, vocab.json the ids."""

    def __init__(self, folder: Path) -> None:
        self.card = json.loads((folder / "model.json").read_text())
        self.vocab = Vocab.from_json(json.loads((folder / "vocab.json").read_text()))
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        self.inputs = self.card["onnx"]["inputs"]

    def zero_state(self, batch: int = 1) -> list[np.ndarray]:
        shape = (self.card["layers"], batch, self.card["hidden"])
        return [np.zeros(shape, np.float32) for _ in self.inputs[1:]]

    def __call__(self, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        logits, *state = self.session.run(None, dict(zip(self.inputs, [tokens.astype(np.int64), *state], strict=True)))
        return logits, state

    def argmax_text(self, prime: str, length: int) -> str:
        logits, state = self(self.vocab.encode(prime, strict=True)[None], self.zero_state())
        drawn = []
        for _ in range(length):
            drawn.append(int(logits[0, -1].argmax()))
            logits, state = self(np.array([[drawn[-1]]]), state)
        return self.vocab.decode(drawn)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_onnx_logits_match_pytorch_on_a_500_char_prime_and_200_single_steps_with_the_state_carried(
    cell, checkpoints, exported
):
    model, vocab, _ = checkpoint.load_model(checkpoints[cell])
    graph = Onnx(exported[cell])
    prime = torch.randint(0, len(vocab), (1, 500), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, ours = model(prime)
        logits, state = graph(prime.numpy(), graph.zero_state())
        assert logits.shape == (1, 500, len(vocab))
        assert np.abs(logits - expected.numpy()).max() < 1e-4
        for step in range(200):
            token = torch.tensor([[(step * 7) % len(vocab)]])
            expected, ours = model(token, ours)
            logits, state = graph(token.numpy(), state)
            assert np.abs(logits - expected.numpy()).max() < 1e-4, f"step {step}"


def test_one_graph_runs_any_batch_size(checkpoints, exported):
    model, vocab, _ = checkpoint.load_model(checkpoints["lstm"])
    graph = Onnx(exported["lstm"])
    tokens = torch.randint(0, len(vocab), (3, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, _ = model(tokens)
    assert np.abs(graph(tokens.numpy(), graph.zero_state(3))[0] - expected.numpy()).max() < 1e-4


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_argmax_generation_from_onnx_is_rnnfarm_sample_argmax_character_for_character(cell, checkpoints, exported):
    prime = "ROMEO:\nBut soft, what light"
    sampled = run_cli("sample", str(checkpoints[cell]), "--argmax", "--prime", prime, "--length", "300")
    assert sampled.exit_code == 0, sampled.output
    assert sampled.output == prime + Onnx(exported[cell]).argmax_text(prime, 300) + "\n"


def test_the_card_describes_the_model_and_records_the_graphs_sha256(checkpoints, exported):
    _, vocab, meta = checkpoint.load_model(checkpoints["lstm"])
    folder = exported["lstm"]
    card = json.loads((folder / "model.json").read_text())
    assert card["onnx"]["sha256"] == sha256_file(folder / "model.onnx")
    assert (card["cell"], card["layers"], card["hidden"], card["embedding"]) == ("lstm", 2, 32, 16)
    assert card["corpus"] == meta["corpus"] and card["corpus"]["fingerprint"]
    assert card["val_loss"] == meta["val_loss"] and card["trained"] == meta["saved"]
    assert card["onnx"]["inputs"] == ["tokens", "h", "c"] and card["onnx"]["outputs"] == ["logits", "h_out", "c_out"]
    assert Vocab.from_json(json.loads((folder / "vocab.json").read_text())) == vocab
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", "vocab.json"]


def test_export_of_something_that_is_no_checkpoint_says_so_in_one_line(tmp_path):
    result = run_cli("export", str(tmp_path), "--format", "onnx", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "neither a checkpoint nor a run" in result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def run_on_s3(s3, ray_local, tmp_path_factory):
    """A tiny run trained by `rnnfarm run` with its storage on the S3 server (credentials in the spec for the
    workers and in the environment for the commands that read the run): its URL."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3.env().items():
            env.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        spec_file = tmp_path_factory.mktemp("spec") / "job.yaml"
        job = make_spec(STORAGE, storage_options={"key": s3.access_key, "secret": s3.secret_key})
        spec_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
        result = run_cli("run", str(spec_file))
        assert result.exit_code == 0, result.output
        yield f"{STORAGE}/runs/tiny"


def test_export_from_a_run_on_s3_matches_the_pulled_checkpoint(run_on_s3, s3, tmp_path):
    url = run_on_s3
    result = run_cli("export", url, "--format", "onnx", "-o", str(tmp_path / "onnx"))
    assert result.exit_code == 0, result.output
    pulled = run_cli("pull", url, "--best", "--dest", str(tmp_path / "pulled"))
    assert pulled.exit_code == 0, pulled.output
    prime = "ROMEO:"
    sampled = run_cli("sample", str(tmp_path / "pulled"), "--argmax", "--prime", prime, "--length", "120")
    assert sampled.output == prime + Onnx(tmp_path / "onnx").argmax_text(prime, 120) + "\n"


def test_export_from_s3_refuses_weights_that_differ_from_the_runs_checksums(run_on_s3, s3, tmp_path):
    url = run_on_s3
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    weights = f"{url.removeprefix('s3://')}/best/model.safetensors"
    original = fs.cat_file(weights)
    fs.pipe_file(weights, original[:-1] + bytes([original[-1] ^ 1]))
    try:
        result = run_cli("export", url, "--format", "onnx", "-o", str(tmp_path / "onnx"))
    finally:
        fs.pipe_file(weights, original)
    assert result.exit_code == 2 and "differs from the recorded" in result.output, result.output
    assert not (tmp_path / "onnx").exists()
