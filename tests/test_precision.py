"""What each train.precision runs on each device, and resuming across precisions: the scaler and the state."""

from __future__ import annotations

import json
from itertools import product

import pytest
import torch
from safetensors.torch import load_file

from rnnfarm.engine import loop
from rnnfarm.engine import model as network
from rnnfarm.engine.loop import Capability, Job, LocalSession, Precision, precision_policy, train
from rnnfarm.engine.model import CharRNN, recurrent_dtype
from rnnfarm.errors import UserError
from rnnfarm.layout import Run
from rnnfarm.spec import ModelSpec
from rnnfarm.storage import Store

from .conftest import PRECISIONS, make_spec
from .test_train import Interrupted, StopAfterCheckpoint, run_in_process, tensors

CPU_BF16 = Capability("cpu", native_bf16=True, bf16_lstm=True)  # AVX512-BF16 or AMX
CPU_OLD = Capability("cpu", native_bf16=False, bf16_lstm=False)  # no AVX-512: oneDNN has no bf16 LSTM
GPU_BF16 = Capability("cuda", native_bf16=True, bf16_lstm=False)  # A100, H100
GPU_OLD = Capability("cuda", native_bf16=False, bf16_lstm=False)  # V100, T4: bf16 only emulated
CAPABILITIES = [CPU_BF16, CPU_OLD, GPU_BF16, GPU_OLD]
REFUSED = {("bf16", CPU_OLD), ("bf16", GPU_OLD), ("fp16", CPU_BF16), ("fp16", CPU_OLD)}
BF16 = PRECISIONS[1:]  # bf16, skipped where this CPU has no bf16 kernels
SECTIONS = {
    "model": {"layers": 2, "hidden": 32, "dropout": 0.2},
    "train": {"steps": 16, "eval_every": 8, "warmup_steps": 2},
}


@pytest.mark.parametrize(
    ("asked", "capability", "runs"),
    [
        ("auto", CPU_BF16, "bf16 autocast"),
        ("auto", CPU_OLD, "fp32"),
        ("bf16", CPU_BF16, "bf16 autocast"),
        ("auto", GPU_BF16, "fp16 autocast with a gradient scaler"),
        ("auto", GPU_OLD, "fp16 autocast with a gradient scaler"),
        ("bf16", GPU_BF16, "bf16 autocast, recurrent layers fp32"),
        ("fp16", GPU_OLD, "fp16 autocast with a gradient scaler"),
        ("fp32", GPU_BF16, "fp32"),
    ],
)
def test_the_precision_policy_runs_what_the_device_computes_natively_and_the_log_line_says_it(asked, capability, runs):
    assert str(precision_policy(asked, capability)) == runs


def test_no_precision_on_any_device_runs_fp16_without_a_gradient_scaler():
    for asked, capability in product(["auto", "fp32", "bf16", "fp16"], CAPABILITIES):
        if (asked, capability) in REFUSED:
            with pytest.raises(UserError):
                precision_policy(asked, capability)
            continue
        precision = precision_policy(asked, capability)
        assert precision.scaler == (torch.float16 in (precision.autocast, precision.recurrent)), (asked, capability)


def test_under_gpu_autocast_bf16_leaves_the_recurrent_layers_in_fp32_because_cudnn_would_run_them_in_fp16():
    assert recurrent_dtype("cuda", torch.bfloat16) == torch.float32
    assert recurrent_dtype("cuda", torch.float16) == torch.float16
    assert recurrent_dtype("cpu", torch.bfloat16) == torch.bfloat16  # oneDNN's LSTM computes bf16


@pytest.mark.parametrize(
    ("asked", "capability", "message"),
    [
        ("bf16", GPU_OLD, "train.precision bf16: this GPU has no native bf16 (only emulated, slower than fp32): "),
        ("bf16", CPU_OLD, "train.precision bf16: this CPU has no bf16 kernel for the fused LSTM"),
        ("fp16", CPU_BF16, "train.precision fp16: only on a GPU (this CPU's oneDNN has no fp16 LSTM): "),
    ],
)
def test_a_precision_the_device_cannot_run_is_refused_in_one_line(asked, capability, message):
    with pytest.raises(UserError) as refused:
        precision_policy(asked, capability)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_a_gpus_bf16_counts_only_when_native_not_emulated(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not Capability.of(torch.device("cuda")).native_bf16


@pytest.mark.parametrize("between", [False, True], ids=["fused-stack", "layer-by-layer"])
def test_where_autocast_would_not_run_the_recurrent_layers_in_its_dtype_they_run_outside_it_in_fp32(
    monkeypatch, between
):
    monkeypatch.setattr(network, "recurrent_dtype", lambda device, dtype: torch.float32)  # as on a GPU under bf16
    torch.manual_seed(0)
    m = CharRNN(11, ModelSpec(layers=2, hidden=32, embedding=16, dropout=0.3 if between else 0.0))
    seen = []
    for module in [*m._layers, m.rnn]:
        module.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out[0].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = m(torch.randint(0, 11, (4, 12)))
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert logits.dtype == torch.bfloat16 and state[0].dtype == torch.float32  # the head still autocast


def resume_after_a_stop(shakespeare, tmp_path, first: dict, then: dict) -> LocalSession:
    """A run stopped after its first checkpoint with ``first``'s sections, resumed with ``then``'s."""

    def job(sections: dict) -> Job:
        job_spec = make_spec(str(tmp_path / "storage"), **sections)
        return Job(job_spec, shakespeare.folder, Run(Store.at(job_spec.storage) / "runs" / "t").trial())

    with pytest.raises(Interrupted):
        train(job(first), StopAfterCheckpoint(tmp_path / "stopped"))
    resumed = LocalSession(tmp_path / "stopped")
    train(job(then), resumed)
    return resumed


def test_an_fp16_runs_gradient_scaler_resumes_bitwise_from_its_checkpoint(shakespeare, tmp_path, monkeypatch):
    # oneDNN has no fp16 LSTM: an fp32 run given the scaler that fp16 runs with stands in for one (scaling by
    # a power of two is exact in fp32, so the weights stay those of an unscaled run)
    scaled = Precision(None, torch.float32, scaler=True)
    monkeypatch.setattr(loop, "precision_policy", lambda asked, capability: scaled)
    straight, _ = run_in_process(shakespeare, tmp_path / "straight", **SECTIONS)
    resumed = resume_after_a_stop(shakespeare, tmp_path, SECTIONS, SECTIONS)
    assert resumed.reports[-1]["resumed_from"] == 8

    a, b = tmp_path / "straight" / "checkpoints" / "checkpoint-000016", tmp_path / "stopped" / "checkpoint-000016"
    kept = [json.loads((folder / "trainer.json").read_text())["scaler"] for folder in (a, b)]
    assert kept[0] == kept[1] and kept[0]["_growth_tracker"] == 16  # every step counted, none lost at the stop
    for name in ("model.safetensors", "optimizer.safetensors", "worker-0.safetensors"):
        first, second = tensors(a, name), tensors(b, name)
        assert all(torch.equal(first[k], second[k]) for k in first), name


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_hidden_state_is_stored_in_fp32_whatever_the_precision(shakespeare, tmp_path, precision):
    run_in_process(shakespeare, tmp_path, **{**SECTIONS, "train": {**SECTIONS["train"], "precision": precision}})
    stored = load_file(str(tmp_path / "checkpoints" / "checkpoint-000016" / "worker-0.safetensors"))
    assert stored["h"].dtype == stored["c"].dtype == torch.float32


@pytest.mark.parametrize("first", BF16)
def test_a_bf16_run_resumed_in_fp32_goes_on_from_its_checkpoint(shakespeare, tmp_path, first):
    sections = {**SECTIONS, "train": {**SECTIONS["train"], "precision": first}}
    resumed = resume_after_a_stop(
        shakespeare, tmp_path, sections, {**SECTIONS, "train": {**SECTIONS["train"], "precision": "fp32"}}
    )
    assert resumed.reports[-1]["resumed_from"] == 8 and resumed.reports[-1]["step"] == 16
