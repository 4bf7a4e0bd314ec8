"""`rnnfarm run` end to end on the shared local Ray: 2 workers averaging gradients over gloo, a best checkpoint."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from rnnfarm.cli import cli

from .conftest import make_spec


def write_spec(tmp_path, **sections) -> str:
    job = make_spec(str(tmp_path / "storage"), **sections)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    return str(path)


def test_run_trains_on_two_workers_and_keeps_the_best(ray_local, tmp_path):
    spec_file = write_spec(tmp_path, cluster={"workers": 2}, corpus={"test": 0.05})
    result = CliRunner().invoke(cli, ["run", spec_file])
    assert result.exit_code == 0, result.output
    assert "best val loss" in result.output and "nats/char" in result.output

    run = tmp_path / "storage" / "runs" / "tiny"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["best"]["val_loss"] < 4.17  # better than a uniform guess over 65 symbols
    # The corpus has a test split: the best checkpoint was scored on it at the end.
    assert 0 < record["best"]["test_loss"] < 4.17
    assert f"test loss {record['best']['test_loss']:.4f} nats/char" in result.output
    meta = json.loads((run / "best" / "meta.json").read_text())
    assert meta["step"] == record["best"]["step"] and meta["spec"]["cluster"]["workers"] == 2
    assert (run / "best" / "model.safetensors").stat().st_size > 0
    checkpoints = sorted(p.name for p in (run / "trials" / "main").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-000015", "checkpoint-000030"]
    # Each rank kept its own hidden state and RNG state, for an exact resume.
    assert (run / "trials" / "main" / "checkpoint-000030" / "worker-1.safetensors").exists()

    sampled = CliRunner().invoke(cli, ["sample", str(run), "--prime", "ROMEO:", "--length", "50", "--seed", "1"])
    assert sampled.exit_code == 0, sampled.output
    assert sampled.output.startswith("ROMEO:") and len(sampled.output) == len("ROMEO:") + 50 + 1

    again = CliRunner().invoke(cli, ["run", spec_file])
    assert again.exit_code == 0 and "completed" in again.output

    changed = write_spec(tmp_path, cluster={"workers": 2}, model={"hidden": 48})
    refused = CliRunner().invoke(cli, ["run", changed])
    assert refused.exit_code == 2 and "already exists" in refused.output and "different spec" in refused.output


def test_more_workers_than_cpus_is_refused_before_training(ray_local, tmp_path):
    result = CliRunner().invoke(cli, ["run", write_spec(tmp_path, cluster={"workers": 3})])
    assert result.exit_code == 2
    assert "cluster: one trial needs 3 CPUs (workers x cpus_per_worker), this Ray has 2" in result.output


def test_sampling_something_that_is_not_a_checkpoint(tmp_path):
    result = CliRunner().invoke(cli, ["sample", str(tmp_path), "--prime", "x"])
    assert result.exit_code == 2 and "neither a checkpoint nor a run" in result.output


def test_asking_for_gpus_this_ray_does_not_have_is_refused_before_training(ray_local, tmp_path):
    result = CliRunner().invoke(cli, ["run", write_spec(tmp_path, cluster={"workers": 2, "use_gpu": True})])
    assert result.exit_code == 2
    assert "cluster.use_gpu: 2 worker(s) need a GPU each, this Ray has 1" in result.output
