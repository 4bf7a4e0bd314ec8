"""A run with its storage on a real S3 server (SeaweedFS on 127.0.0.1), browsed, pulled back with its
checksums verified, and sampled from the pulled folder; credentials never land in anything written."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import s3fs
import yaml
from click.testing import CliRunner

from rnnfarm.cli import cli

from .conftest import make_spec

STORAGE = "s3://rnnfarm-test/runs-on-s3"
RUN = f"{STORAGE}/runs/tiny"
RAY_TOKEN = secrets.token_hex(24)  # planted in the run's environment, as a user who also works with a cluster has it


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def trained(s3, ray_local, tmp_path_factory):
    """`rnnfarm run` of a tiny job whose spec holds the credentials; the endpoint comes from the environment,
    and a Ray token is there too.

    Yields the run's CLI output and everything printed to stderr by the driver and Ray's workers.
    """
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        env.setenv("RAY_AUTH_TOKEN", RAY_TOKEN)
        s3fs.S3FileSystem.clear_instance_cache()
        job = make_spec(STORAGE, storage_options={"key": s3.access_key, "secret": s3.secret_key})
        spec_file = tmp_path_factory.mktemp("spec") / "job.yaml"
        spec_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
        result = run_cli("run", str(spec_file))
    assert result.exit_code == 0, result.output
    yield result.output


@pytest.fixture
def s3_env(s3, monkeypatch):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return s3


def objects(s3) -> dict[str, bytes]:
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    return {path: fs.cat_file(path) for path in fs.find("rnnfarm-test/runs-on-s3")}


def test_a_run_trains_with_its_storage_on_s3(trained, s3):
    stored = objects(s3)
    run = "rnnfarm-test/runs-on-s3/runs/tiny"
    record = json.loads(stored[f"{run}/run.json"])
    assert record["status"] == "completed" and record["best"]["val_loss"] < 4.17
    assert f"{run}/trials/main/checkpoint-000030/model.safetensors" in stored
    assert any(p.startswith("rnnfarm-test/runs-on-s3/corpora/shakespeare/") for p in stored)
    meta = json.loads(stored[f"{run}/best/meta.json"])
    model = stored[f"{run}/best/model.safetensors"]
    assert meta["files"]["model.safetensors"] == {"sha256": hashlib.sha256(model).hexdigest(), "size": len(model)}
    sums = stored[f"{run}/SHA256SUMS"].decode()
    assert f"{meta['files']['model.safetensors']['sha256']}  best/model.safetensors" in sums
    assert "trials/main/samples/step-000015.json" in sums and "trials/main/samples/step-000030.json" in sums


def ray_logs() -> dict[str, bytes]:
    """Every log file of this session's Ray (the driver's, the workers', Ray Train's controller's...)."""
    import ray

    folder = Path(ray._private.worker._global_node.get_logs_dir_path())  # no public API names this folder
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_credentials_appear_in_no_stored_object_no_output_and_no_ray_log(trained, s3, capfd):
    stored = objects(s3)  # the corpus, run.json, spec.yaml, checkpoints' meta.json, samples, report.html, report/...
    assert "rnnfarm-test/runs-on-s3/runs/tiny/report.html" in stored
    assert any("/checkpoint-000030/meta.json" in path for path in stored)
    logs = ray_logs()
    assert any("worker" in path for path in logs)
    for secret in (s3.secret_key, s3.access_key, RAY_TOKEN):
        for path, data in {**stored, **logs}.items():
            assert secret.encode() not in data, path
    echoed = yaml.safe_load(stored["rnnfarm-test/runs-on-s3/runs/tiny/spec.yaml"])
    assert echoed["storage_options"] == {"key": "***", "secret": "***"}
    printed = trained + capfd.readouterr().err
    assert s3.secret_key not in printed and s3.access_key not in printed and RAY_TOKEN not in printed


def encodings(secret: str) -> set[bytes]:
    """The secret as bytes, hex (either case) and base64 (standard and URL-safe, at each of the three offsets
    it can have inside a longer encoded value: the characters that depend on its neighbours left out)."""
    raw = secret.encode()
    forms = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(bytes(offset) + raw)
            start = -(-offset * 4 // 3)  # the first character made of the secret's bits alone
            stop = (offset + len(raw)) // 3 * 4  # the last whole group
            forms.add(encoded[start + (1 if offset else 0) : stop])
    return forms


def short_dir() -> Path:
    """A folder with a short path: Ray's sockets live in its temp folder, and a socket's path is short."""
    return Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))


# Where the keys come from: the spec's storage_options, or the client's own chain (boto's AWS_* and fsspec's
# FSSPEC_S3_* variables at once: a leak through either shows as the same bytes).
SECRET_SOURCES = ["storage_options", "AWS_* and FSSPEC_S3_* variables"]


@pytest.mark.parametrize("source", SECRET_SOURCES)
def test_a_sweeps_credentials_are_in_no_stored_object_no_ray_file_no_output(s3, source, tmp_path):
    """`rnnfarm run` of a one-trial sweep to S3, with its own embedded Ray whose temp folder is this test's:
    neither key is in any object on S3 (Tune's tuner.pkl and experiment state included), any file of Ray's
    session folder, the output or the logs, as bytes, hex or base64."""
    prefix = f"rnnfarm-test/leak-{source.split()[0].split('_')[0].lower()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "RAY_"))}
    options = {"endpoint_url": s3.endpoint}
    if source == "storage_options":
        options |= {"key": s3.access_key, "secret": s3.secret_key}
    else:
        env |= {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        env |= {"FSSPEC_S3_KEY": s3.access_key, "FSSPEC_S3_SECRET": s3.secret_key}
    ray_tmp = short_dir()
    env |= {"RAY_TMPDIR": str(ray_tmp), "RNNFARM_LOG_FORMAT": "json"}
    job = make_spec(
        f"s3://{prefix}",
        name="leak",
        storage_options=options,
        train={"steps": 4, "eval_every": 2},
        tune={
            "space": {"model.hidden": {"choice": [8, 16]}},
            "samples": 1,
            "scheduler": {"kind": "none"},
            "concurrency": 1,
            "resources": {"workers": 1, "driver_cpus": 0},
        },
    )
    spec_file = tmp_path / "leak.yaml"
    spec_file.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    done = subprocess.run(
        [sys.executable, "-m", "rnnfarm", "run", str(spec_file)], env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:]

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    stored = {path: fs.cat_file(path) for path in fs.find(prefix)}
    assert any(path.endswith("/tune/tuner.pkl") for path in stored)
    assert any("/tune/experiment_state-" in path for path in stored)
    ray_files = {str(p): p.read_bytes() for p in ray_tmp.rglob("*") if p.is_file() and not p.is_symlink()}
    assert any("/session_" in p and "/logs/" in p for p in ray_files)
    everything = {**stored, **ray_files, "stdout": done.stdout, "stderr": done.stderr}
    for secret in (s3.secret_key, s3.access_key):
        for form in encodings(secret):
            leaked = [where for where, data in everything.items() if form in data]
            assert not leaked, (form, leaked)


def test_runs_list_and_show(trained, s3_env):
    listed = run_cli("runs", "list", STORAGE)
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.strip().splitlines()
    assert header.split()[:4] == ["RUN", "STATUS", "BEST", "VAL"]
    assert row.split()[:2] == ["tiny", "completed"] and row.split()[3] == "1"
    as_json = json.loads(run_cli("runs", "list", STORAGE, "--json").output)
    assert as_json[0]["name"] == "tiny" and as_json[0]["best_val_loss"] < 4.17 and as_json[0]["ended"]

    shown = run_cli("runs", "show", RUN)
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("run tiny: completed")
    assert "checksums: SHA256SUMS written" in shown.output
    assert "main" in shown.output and "step      30" in shown.output and "samples 2" in shown.output


def test_pull_verifies_then_sample_works_on_the_pulled_folder(trained, s3_env, tmp_path):
    dest = tmp_path / "pulled"
    result = run_cli("pull", RUN, "-o", str(dest))
    assert result.exit_code == 0, result.output
    assert "best/model.safetensors" in result.output and "sha256 ok" in result.output
    assert f"sample with: rnnfarm sample {dest} --temperature 0.8\n" in result.output  # the spec's prime: "\n"
    assert "no checksum" not in result.output
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "SHA256SUMS",
        "best/meta.json",
        "best/model.safetensors",
        "best/samples.json",
        "best/samples.jsonl",
        "best/samples.txt",
        "run.json",
        "trials/main/samples.jsonl",
        "trials/main/samples.txt",
        "trials/main/samples/step-000015.json",
        "trials/main/samples/step-000030.json",
    ]
    again = run_cli("pull", RUN, "--dest", str(dest))  # the earlier spelling of --out still works
    assert again.exit_code == 0 and again.output.count("unchanged") == 9

    sampled = run_cli("sample", str(dest), "--prime", "ROMEO:", "--length", "40", "--seed", "3")
    assert sampled.exit_code == 0, sampled.output
    remote = run_cli("sample", RUN, "--prime", "ROMEO:", "--length", "40", "--seed", "3")
    assert remote.exit_code == 0 and remote.output == sampled.output  # the same weights, pulled or not


def test_pull_best_only_or_one_trial_only(trained, s3_env, tmp_path):
    best = run_cli("pull", RUN, "--best", "--dest", str(tmp_path / "best"))
    assert best.exit_code == 0, best.output
    assert not (tmp_path / "best" / "trials").exists() and (tmp_path / "best" / "best" / "meta.json").exists()
    trial = run_cli("pull", RUN, "--samples", "--trial", "main", "--dest", str(tmp_path / "samples"))
    assert trial.exit_code == 0 and not (tmp_path / "samples" / "best").exists()
    missing = run_cli("pull", RUN, "--trial", "t7", "--dest", str(tmp_path / "x"))
    assert missing.exit_code == 2 and "no sample archives of trial 't7' (trials: main)" in missing.output


def copy_run(s3, name: str) -> tuple[s3fs.S3FileSystem, str]:
    """A copy of the trained run (its published files) under another name, to damage."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    source, target = "rnnfarm-test/runs-on-s3/runs/tiny", f"rnnfarm-test/runs-on-s3/runs/{name}"
    for path in fs.find(source):
        if "/checkpoint-" not in path:
            fs.pipe_file(target + path[len(source) :], fs.cat_file(path))
    return fs, target


def test_pull_refuses_a_corrupt_object_and_keeps_nothing_unverified(trained, s3_env, tmp_path):
    fs, run = copy_run(s3_env, "corrupt")
    fs.pipe_file(f"{run}/trials/main/samples/step-000030.json", b'{"step": 30, "samples": []}\n')
    result = run_cli("pull", f"s3://{run}", "--dest", str(tmp_path / "d"))
    assert result.exit_code == 2
    assert "step-000030.json: sha256" in result.output and "differs from the recorded" in result.output
    assert not (tmp_path / "d" / "trials" / "main" / "samples" / "step-000030.json").exists()
    assert not [p for p in (tmp_path / "d").rglob(".*")]  # no partial download left behind


def test_pull_refuses_keys_that_would_land_outside_the_destination(trained, s3_env, tmp_path):
    fs, run = copy_run(s3_env, "escape")
    line = f"{'0' * 64}  ../../outside.txt\n"
    fs.pipe_file(f"{run}/SHA256SUMS", fs.cat_file(f"{run}/SHA256SUMS") + line.encode())
    result = run_cli("pull", f"s3://{run}", "--dest", str(tmp_path / "d"))
    assert result.exit_code == 2
    assert "refusing to pull '../../outside.txt'" in result.output and "outside the destination" in result.output
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "d").exists()

    # A run still in progress (no SHA256SUMS yet): the names recorded in best/meta.json are checked the same way.
    fs.rm_file(f"{run}/SHA256SUMS")
    meta = json.loads(fs.cat_file(f"{run}/best/meta.json"))
    meta["files"]["/etc/passwd"] = meta["files"]["model.safetensors"]
    fs.pipe_file(f"{run}/best/meta.json", json.dumps(meta).encode())
    result = run_cli("pull", f"s3://{run}", "--dest", str(tmp_path / "d"))
    assert result.exit_code == 2 and "refusing to pull '/etc/passwd'" in result.output


def test_a_run_in_progress_pulls_its_samples_without_checksums_yet(trained, s3_env, tmp_path):
    fs, run = copy_run(s3_env, "unsealed")
    fs.rm_file(f"{run}/SHA256SUMS")
    result = run_cli("pull", f"s3://{run}", "--dest", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    assert lines["best/model.safetensors"].endswith("sha256 ok")  # checked against best/meta.json
    assert lines["trials/main/samples/step-000030.json"].endswith("no checksum yet")


def test_sample_refuses_weights_that_do_not_match_their_metadata(trained, s3_env, tmp_path):
    assert run_cli("pull", RUN, "--best", "--dest", str(tmp_path / "d")).exit_code == 0
    model = tmp_path / "d" / "best" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-8] + b"\x00" * 8)
    result = run_cli("sample", str(tmp_path / "d"), "--prime", "A")
    assert result.exit_code == 2 and "model.safetensors: sha256" in result.output


def test_a_pulled_run_can_be_shown_locally(trained, s3_env, tmp_path):
    assert run_cli("pull", RUN, "--dest", str(tmp_path / "tiny")).exit_code == 0
    shown = run_cli("runs", "show", str(tmp_path / "tiny"))
    assert shown.exit_code == 0 and shown.output.startswith("run tiny: completed")
    assert "checksums: SHA256SUMS written" in shown.output


def test_a_best_checkpoint_without_recorded_checksums_is_still_pulled_whole(trained, s3_env, tmp_path):
    fs, run = copy_run(s3_env, "older")
    fs.rm_file(f"{run}/SHA256SUMS")
    meta = json.loads(fs.cat_file(f"{run}/best/meta.json"))
    del meta["files"]
    fs.pipe_file(f"{run}/best/meta.json", json.dumps(meta).encode())
    result = run_cli("pull", f"s3://{run}", "--best", "--dest", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    assert "best/model.safetensors" in result.output and "best/samples.json" in result.output
    assert run_cli("sample", str(tmp_path / "d"), "--prime", "A", "--length", "5").exit_code == 0


def test_pull_does_not_follow_a_link_out_of_the_destination(trained, s3_env, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "best").symlink_to(tmp_path / "elsewhere")
    result = run_cli("pull", RUN, "--best", "--dest", str(tmp_path / "d"))
    assert result.exit_code == 2 and "resolves outside" in result.output
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_novelty_index_lies_beside_the_corpus_on_s3_and_meters_samples_there(
    trained, s3_env, tmp_path, monkeypatch
):
    """The driver built the index into the corpus folder on S3; the worker read it for the run's samples, and
    `rnnfarm sample --novelty` downloads it once into the local cache."""
    stored = objects(s3_env)
    index = {
        p.rsplit("/", 1)[1] for p in stored if p.startswith("rnnfarm-test/runs-on-s3/corpora/") and "/novelty/" in p
    }
    assert index == {"index.json", "train.utf8.npy", "train.sa.npy", "train.marks.npy"}
    drawn = json.loads(stored["rnnfarm-test/runs-on-s3/runs/tiny/trials/main/samples/step-000030.json"])["samples"]
    assert all(s["novelty"]["chars"] == len(s["text"]) for s in drawn)
    monkeypatch.setenv("RNNFARM_CACHE", str(tmp_path))
    result = run_cli("sample", RUN, "--novelty", "--seed", "1", "-l", "60")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("novelty: longest copied span ")
    (cached,) = (tmp_path / "novelty").iterdir()
    assert sorted(p.name for p in cached.iterdir()) == sorted(index)
