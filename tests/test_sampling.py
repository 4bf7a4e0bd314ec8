"""`rnnfarm sample`: streamed output, several samples, and reproducible draws, from a real checkpoint."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.engine.model import CharRNN
from rnnfarm.insight.sample import characters, load

from .conftest import runs_out_of_device_memory


def sample(checkpoint, *args: str):
    result = CliRunner().invoke(cli, ["sample", str(checkpoint), "--prime", "ROMEO:", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_streamed_output_is_the_text_drawn_without_streaming(trained_checkpoint):
    whole = sample(trained_checkpoint, "--length", "120", "--seed", "7", "-t", "0.8")
    streamed = sample(trained_checkpoint, "--length", "120", "--seed", "7", "-t", "0.8", "--stream")
    assert streamed == whole and whole.startswith("ROMEO:") and len(whole) == len("ROMEO:") + 120 + 1


def test_stream_prints_characters_before_the_sample_is_finished(trained_checkpoint):
    # A sample far longer than the wait: its first characters must arrive while it is still being drawn.
    args = [sys.executable, "-m", "rnnfarm", "sample", str(trained_checkpoint), "--stream", "--length", "10000000"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        first, deadline = b"", time.monotonic() + 120
        while len(first) < 40 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1)[0]:
                first += os.read(proc.stdout.fileno(), 40)
        assert len(first) >= 40 and first.startswith(b"\n") and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_n_samples_are_drawn_in_turn_and_reproduced_by_the_seed(trained_checkpoint):
    three = sample(trained_checkpoint, "-n", "3", "--length", "80", "--seed", "3")
    assert three == sample(trained_checkpoint, "-n", "3", "--length", "80", "--seed", "3")
    blocks = three.split("--- sample ")[1:]
    assert [b.split(" ---")[0] for b in blocks] == ["1 of 3", "2 of 3", "3 of 3"]
    texts = [b.split("---\n", 1)[1].strip("\n") for b in blocks]
    assert len(set(texts)) == 3 and all(t.startswith("ROMEO:") for t in texts)
    assert texts[0] == sample(trained_checkpoint, "--length", "80", "--seed", "3").strip("\n")


def test_argmax_and_top_k_one_draw_the_same_likeliest_text(trained_checkpoint):
    argmax = sample(trained_checkpoint, "--argmax", "--length", "60", "-n", "2")
    top1 = sample(trained_checkpoint, "--top-k", "1", "--length", "60", "--seed", "5")
    one, two = (b.split("---\n", 1)[1].strip("\n") for b in argmax.split("--- sample ")[1:])
    assert one == two == top1.strip("\n")


def test_bad_sampling_options_are_one_line_errors(trained_checkpoint):
    for args, message in [
        (["--prime", ""], "--prime must not be empty"),
        (["-t", "0"], "--temperature must be > 0"),
        (["--prime", "ROMEO€"], "outside the model's vocabulary"),
        (["-n", "0"], "Invalid value for '-n'"),
    ]:
        result = CliRunner().invoke(cli, ["sample", str(trained_checkpoint), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_a_prime_file_starts_the_sample_from_the_files_text_newlines_included(trained_checkpoint, tmp_path):
    prime = "ROMEO:\nO, she doth teach the torches to burn bright!\n\nJULIET:\n"
    (tmp_path / "prime.txt").write_text(prime)
    from_file = CliRunner().invoke(
        cli, ["sample", str(trained_checkpoint), "--prime-file", str(tmp_path / "prime.txt"), "--seed", "2"]
    )
    given = CliRunner().invoke(cli, ["sample", str(trained_checkpoint), "--prime", prime, "--seed", "2"])
    assert from_file.exit_code == 0 and from_file.output == given.output and from_file.output.startswith(prime)
    for args, message in [
        (["--prime-file", str(tmp_path / "none.txt")], "no such file"),
        (["--prime-file", str(tmp_path / "prime.txt"), "--prime", "A"], "give --prime or --prime-file, not both"),
    ]:
        result = CliRunner().invoke(cli, ["sample", str(trained_checkpoint), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_sampling_leaves_torch_settings_as_they_were_between_and_after_steps(trained_checkpoint):
    model, vocab, _ = load(str(trained_checkpoint))
    drawn = characters(model, vocab, "ROMEO:", 5, generator=torch.Generator().manual_seed(1))
    seen = [torch.backends.mkldnn.enabled for _ in drawn]
    assert seen == [True] * 5 and torch.backends.mkldnn.enabled


def test_the_text_a_seed_draws_is_the_same_whichever_device_option_picks_this_machines_device(trained_checkpoint):
    default = sample(trained_checkpoint, "--length", "80", "--seed", "4", "-t", "0.9")
    for device in ("cpu", "auto"):
        assert sample(trained_checkpoint, "--length", "80", "--seed", "4", "-t", "0.9", "--device", device) == default


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for the CUDA device a machine without one lacks")
@pytest.mark.parametrize(
    "command",
    [
        ["sample"],
        ["evaluate"],
        ["viz", "predictions", "--text", "unread.txt"],
        ["viz", "neurons", "--text", "unread.txt", "--top", "3"],
    ],
)
def test_every_command_that_runs_a_model_refuses_a_device_torch_does_not_see_in_one_line(trained_checkpoint, command):
    for device, message in [
        ("cuda", f"--device cuda: torch {torch.__version__} sees no CUDA device here: use --device cpu or auto"),
        ("cuda:1", "--device cuda:1: torch"),
        ("gpu", "--device 'gpu' is not a device: give cpu, cuda, cuda:N or auto"),
    ]:
        result = CliRunner().invoke(cli, [*command, str(trained_checkpoint), "--device", device])
        assert result.exit_code == 2 and result.output.startswith(f"error: {message}"), result.output
        assert len(result.output.splitlines()) == 1


def test_running_out_of_device_memory_while_sampling_is_one_line_naming_the_batch_and_the_model_size(
    trained_checkpoint, monkeypatch
):
    # Simulated: no GPU here, so the model's forward raises what torch raises when a GPU's memory runs out.
    parameters = sum(p.numel() for p in load(str(trained_checkpoint))[0].parameters())
    monkeypatch.setattr(CharRNN, "forward", runs_out_of_device_memory)
    result = CliRunner().invoke(cli, ["sample", str(trained_checkpoint), "--prime", "ROMEO:", "--device", "cpu"])
    assert result.exit_code == 2
    assert result.output == (
        f"error: out of memory on cpu with a batch of one prime of 6 characters and a model of {parameters:,} "
        "parameters: lower the prime's length\n"
    )
