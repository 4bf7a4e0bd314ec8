"""Reliability and security, proved: faults injected into real runs, hostile input, safe loading.

Faults: an S3 server (a SeaweedFS of the test's own) frozen or stopped in the middle of a checkpoint
upload, a corpus build killed while it writes shards, storage that is read-only, full, or under a file.
Hostile input: bad specs, corpora and checkpoints, each one line with exit code 2 and nothing written.
Security: planted pickles never run, tarball members never land on disk, names and options never write
outside their folders, credentials never reach what a run stores.

RELIABILITY.md tabulates each case: what was tried, what held, what was lost, and the test that shows it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import s3fs
import torch
import yaml
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.corpus import hookimpl, registry, shards
from rnnfarm.corpus.build import build
from rnnfarm.corpus.sources import cache_dir
from rnnfarm.engine import loop
from rnnfarm.engine.loop import Job, LocalSession, train
from rnnfarm.errors import UserError
from rnnfarm.layout import RAY_SNAPSHOT, Run, Trial
from rnnfarm.runs import leaderboard, record
from rnnfarm.storage import Store
from rnnfarm_plugins import latex
from rnnfarm_plugins.shakespeare import TINY_SHA256, Shakespeare
from tests import s3local

from .conftest import make_spec

CHECKPOINT_FILES = {"meta.json", "model.safetensors", "optimizer.safetensors", "trainer.json", "worker-0.safetensors"}


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(result, expected: str) -> str:
    """The one error line of a command that refused its input (exit code 2); log lines (JSON) aside."""
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("{")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert "Traceback" not in result.output
    return lines[0]


def tree(folder: Path) -> dict[str, str]:
    """Every file under a folder, hidden ones too, with the sha256 of its bytes."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tiny_text_file() -> Path:
    """tiny Shakespeare as the shakespeare plugin fetched it (sha256-checked), from its cache."""
    return next((cache_dir() / "by-sha256" / TINY_SHA256).glob("*"))


def write_spec(path: Path, job) -> Path:
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    return path


# Faults: the S3 server goes away in the middle of a checkpoint upload


class OwnS3:
    """A SeaweedFS of this test's own (the shared one must stay up): frozen, stopped and started again on
    the same port with the same data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server = s3local.start(folder)
        self.port = int(self.server.endpoint.rsplit(":", 1)[1])
        self.server.create_bucket("outage")

    def fs(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **self.server.options())

    def freeze(self) -> None:
        os.kill(self.server.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.server.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.server.stop()

    def start_again(self) -> None:
        self.server = s3local.start(self.folder, port=self.port)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.thaw()
        self.server.stop()


@pytest.fixture
def own_s3(tmp_path):
    server = OwnS3(tmp_path / "s3")
    yield server
    server.close()


STORE = "s3://outage/store"
TRIAL = "outage/store/runs/tiny/trials/main"


def outage_spec(tmp_path: Path, s3: OwnS3, **train_options) -> Path:
    """45 steps, a checkpoint every 15; a 2x256 LSTM, whose checkpoints (11 MB) take a while to upload."""
    options = {"steps": 45, "eval_every": 15, "keep_best": 1, **train_options}
    job = make_spec(STORE, storage_options=s3.server.options(), model={"layers": 2, "hidden": 256}, train=options)
    return write_spec(tmp_path / "job.yaml", job)


class CutMidUpload(threading.Thread):
    """Watches the store from outside and, once ``checkpoint`` has some files but not yet ``meta.json``
    (uploaded last), runs ``cut``: the server goes away in the middle of that checkpoint's upload."""

    def __init__(self, s3: OwnS3, checkpoint_name: str, cut) -> None:
        super().__init__(daemon=True)
        self.s3, self.folder, self.cut = s3, f"{TRIAL}/{checkpoint_name}", cut
        self.seen: list[str] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fs, deadline = self.s3.fs(), time.monotonic() + 300
            while time.monotonic() < deadline:
                names = sorted(p.rsplit("/", 1)[1] for p in fs.find(self.folder))
                if names and "meta.json" not in names:
                    self.cut()
                    self.seen = names
                    return
                assert "meta.json" not in names, f"{self.folder} was uploaded whole between two looks"
                time.sleep(0.002)
        except BaseException as exc:  # handed to the test's thread
            self.error = exc

    def result(self) -> list[str]:
        self.join(timeout=300)
        if self.error:
            raise self.error
        assert self.seen is not None, "the upload was never caught in progress"
        return self.seen


def registered(s3: OwnS3) -> dict[str, set[str]]:
    """The trial's checkpoints Ray registered, with the files the store holds for each."""
    fs = s3.fs()
    snapshot = json.loads(fs.cat_file(f"{TRIAL}/{RAY_SNAPSHOT}"))
    names = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
    return {name: {p.rsplit("/", 1)[1] for p in fs.find(f"{TRIAL}/{name}")} for name in names}


def last_metrics(s3: OwnS3) -> dict:
    return json.loads(s3.fs().cat_file(f"{TRIAL}/metrics/step-000045.json"))


def best_is_whole(s3: OwnS3) -> dict:
    """best/ holds the weights best/meta.json records, and they come from a checkpoint Ray registered."""
    fs = s3.fs()
    meta = json.loads(fs.cat_file("outage/store/runs/tiny/best/meta.json"))
    weights = fs.cat_file("outage/store/runs/tiny/best/model.safetensors")
    assert meta["files"]["model.safetensors"]["sha256"] == hashlib.sha256(weights).hexdigest()
    return meta


def test_an_s3_server_frozen_during_a_checkpoint_upload_holds_the_run_until_it_answers_again(
    ray_local, own_s3, tmp_path
):
    def freeze_for_a_while() -> None:
        own_s3.freeze()
        threading.Timer(6, own_s3.thaw).start()

    cut = CutMidUpload(own_s3, "checkpoint-000030", freeze_for_a_while)
    cut.start()
    result = invoke("run", outage_spec(tmp_path, own_s3))
    assert "meta.json" not in cut.result()  # frozen with the checkpoint half uploaded
    assert result.exit_code == 0, result.output

    final = last_metrics(own_s3)
    assert final["step"] == 45 and final["resumed_from"] == 0  # nothing was lost or done twice
    kept = registered(own_s3)
    assert "checkpoint-000045" in kept and all(files == CHECKPOINT_FILES for files in kept.values()), kept
    assert best_is_whole(own_s3)["checkpoint"] in kept


def test_an_s3_server_stopped_during_a_checkpoint_upload_fails_the_run_in_one_line_and_the_rerun_resumes(
    ray_local, own_s3, tmp_path
):
    spec_file = outage_spec(tmp_path, own_s3, max_failures=0)
    cut = CutMidUpload(own_s3, "checkpoint-000030", own_s3.stop)
    cut.start()
    failed = invoke("run", spec_file)
    assert "meta.json" not in cut.result()
    errors = [line for line in failed.output.splitlines() if line.startswith("error: ")]
    assert failed.exit_code == 1, failed.output
    assert len(errors) == 1 and errors[0].startswith("error: training failed: rank 0: ")
    assert f"cannot reach http://127.0.0.1:{own_s3.port}" in errors[0] and "check that the server is up" in errors[0]

    own_s3.start_again()
    fs = own_s3.fs()
    kept = registered(own_s3)
    assert kept == {"checkpoint-000015": CHECKPOINT_FILES}  # the latest Ray resumes from is whole
    torn = {p.rsplit("/", 1)[1] for p in fs.find(f"{TRIAL}/checkpoint-000030")}
    assert torn < CHECKPOINT_FILES and "meta.json" not in torn  # the cut upload left part of its files

    # Even with metadata there (as a deletion cut short could leave), a folder Ray did not register is never best.
    meta = json.loads(fs.cat_file(f"{TRIAL}/checkpoint-000015/meta.json"))
    fs.pipe_file(f"{TRIAL}/checkpoint-000030/meta.json", json.dumps({**meta, "step": 30, "val_loss": 0.0}).encode())
    trial = Trial(Store.at(f"s3://{TRIAL}", own_s3.server.options()))
    assert leaderboard.best_checkpoint(trial)[0] == "checkpoint-000015"
    with pytest.MonkeyPatch.context() as env:
        for name, value in own_s3.server.env().items():
            env.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        sampled = invoke("sample", f"{STORE}/runs/tiny", "--trial", "main", "--length", "20", "--seed", "1")
    assert sampled.exit_code == 0, sampled.output

    again = invoke("run", spec_file)  # the same command, once the server is back
    assert again.exit_code == 0, again.output
    final = last_metrics(own_s3)
    assert final["step"] == 45 and final["resumed_from"] == 15  # steps 16 to 30 were done twice: one interval
    kept = registered(own_s3)
    assert all(files == CHECKPOINT_FILES for files in kept.values()), kept
    assert best_is_whole(own_s3)["checkpoint"] in kept


# Faults: a corpus build killed while it writes


def test_a_corpus_build_killed_while_writing_leaves_no_manifest_and_the_next_build_completes(tmp_path):
    storage = tmp_path / "storage"
    command = [sys.executable, "-m", "rnnfarm", "corpus", "build", "latex", "--to", str(storage)]
    env = {**os.environ, "RNNFARM_LOG_FORMAT": "json"}
    build_process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(storage.glob("corpora/latex/*/.train-*.tmp-*")):  # a shard is being written
            assert build_process.poll() is None and time.monotonic() < deadline, "the build ended before writing"
            time.sleep(0.002)
    finally:
        build_process.kill()
        build_process.wait()
    folders = list(storage.glob("corpora/latex/*"))
    assert len(folders) == 1 and not (folders[0] / shards.MANIFEST).exists()
    assert Store.at(str(folders[0])).list() == []  # what it left (a partial shard) is hidden from readers

    with pytest.raises(UserError, match="no manifest.json here"):
        shards.load_manifest(Store.at(str(folders[0])))
    again = invoke("corpus", "build", "latex", "--to", storage)
    assert again.exit_code == 0 and again.stdout.startswith("built: "), again.output
    clean = invoke("corpus", "build", "latex", "--to", tmp_path / "clean")
    assert clean.exit_code == 0, clean.output
    rebuilt = shards.load_manifest(Store.at(str(folders[0])))
    reference = shards.load_manifest(Store.at(str(tmp_path / "clean" / "corpora" / "latex" / folders[0].name)))
    assert rebuilt["splits"] == reference["splits"]  # the same shards, byte for byte (their sha256)


# Faults: storage that cannot be written


@contextlib.contextmanager
def mounted(folder: Path, options: str):
    """A tmpfs mounted at ``folder`` (root only). Where this machine refuses mounts the test is skipped, saying
    why; in CI (``CI=true``) it fails instead, so that a CI run cannot pass without trying the fault."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs here: {(done.stderr.decode().strip().splitlines() or ['mount failed'])[0]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}; CI=true, so this fault must be tried: run the tests as root where mounts are allowed")
        pytest.skip(why)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_in_ci_a_fault_test_whose_tmpfs_cannot_be_mounted_fails_instead_of_skipping(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(BaseException) as outcome, mounted(tmp_path / "refused", "size=not-a-size"):
        pass  # mount refuses the option: a real refusal, as where mounts are not allowed
    assert outcome.type is pytest.fail.Exception and "CI=true" in str(outcome.value)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="cannot mount a tmpfs here"), mounted(tmp_path / "r", "size=x"):
        pass


def test_storage_under_a_file_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    job = make_spec(str(tmp_path / "a-file" / "storage"))
    line = refused(invoke("run", write_spec(tmp_path / "job.yaml", job)), "Not a directory")
    assert "a part of the path is a file, not a folder" in line
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_read_only_storage_is_refused_before_anything_runs(tmp_path):
    with mounted(tmp_path / "ro", "ro,size=1m") as folder:
        job = make_spec(str(folder / "storage"))
        refused(invoke("run", write_spec(tmp_path / "job.yaml", job)), "Read-only file system")
        refused(invoke("corpus", "build", "shakespeare", "--to", folder), "Read-only file system")


def test_full_storage_is_refused_early_and_a_disk_filling_up_mid_build_leaves_nothing(tmp_path):
    with mounted(tmp_path / "small", "size=256k") as folder:
        # The text fits neither way (its shards take about 600 KB): the build fails while writing them.
        line = refused(invoke("corpus", "build", "shakespeare", "--to", folder), "No space left on device")
        assert "free some space" in line
        assert tree(folder) == {}  # no manifest, no shard, no temporary file left
        with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # now fill the disk to the last byte
                f.write(bytes(4096))
        job = make_spec(str(folder / "storage"))
        refused(invoke("run", write_spec(tmp_path / "job.yaml", job)), "No space left on device")
        assert not (folder / "storage").exists()


# Hostile input: specs. Each is refused in one line, exit code 2, before anything is written.


def alias_bomb() -> str:
    """Nine levels of aliases, each nine of the one below: 387 million values from 2 KB of YAML."""
    levels = ["    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "corpus:\n  options:\n" + "\n".join(levels) + "\n"


BAD_SPECS = {
    "not a mapping": ("- name: x\n", "the spec must be a YAML mapping of sections, got list"),
    "unknown key": ("trian: {steps: 10}\n", "trian: is not a known key"),
    "unknown key deep": ("model: {hiden: 3}\n", "model.hiden: is not a known key"),
    "wrong type": ("train: {steps: many}\n", "train.steps: must be an integer"),
    "zero size": ("model: {hidden: 0}\n", "model.hidden: must be > 0"),
    "negative size": ("train: {batch_size: -8}\n", "train.batch_size: must be > 0"),
    "unknown corpus plugin": ("corpus: {name: ../shakespeare}\n", "unknown corpus plugin '../shakespeare'"),
    "unknown plugin option": ("corpus: {options: {colour: red}}\n", "corpus.options.colour: is not an option"),
    "python tag": (
        "samples: {prime: !!python/object/apply:os.makedirs [MARKER]}\n",
        "could not determine a constructor",
    ),
    "nested too deeply": ("corpus: {options: {a: " + "[" * 5000 + "]" * 5000 + "}}\n", "nested too deeply to read"),
    "aliases of aliases": (alias_bomb(), "expands to more than 100,000 values"),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_a_bad_spec_is_refused_in_one_line_and_nothing_is_written(case, tmp_path):
    text, expected = BAD_SPECS[case]
    marker, storage = tmp_path / "marker", tmp_path / "storage"
    head = "" if text.startswith("-") else f"name: hostile\nstorage: {storage}\n"
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(head + text.replace("MARKER", str(marker)))
    refused(invoke("run", spec_file), expected)
    assert not storage.exists() and not marker.exists()


def test_a_run_name_that_would_leave_the_runs_folder_is_refused(tmp_path):
    job = make_spec(str(tmp_path / "storage"))
    refused(invoke("run", write_spec(tmp_path / "job.yaml", job), "--name", "../../escape"), "--name '../../escape'")
    assert not (tmp_path / "storage").exists() and not (tmp_path / "escape").exists()


def test_resources_this_ray_cannot_give_are_refused_before_anything_is_written(ray_local, tmp_path):
    job = make_spec(str(tmp_path / "storage"), cluster={"workers": 3})
    refused(invoke("run", write_spec(tmp_path / "job.yaml", job)), "one trial needs 3 CPUs")
    assert not (tmp_path / "storage").exists()


def test_bf16_forced_on_a_cpu_without_its_kernels_is_refused_before_anything_is_written(
    ray_local, tmp_path, monkeypatch
):
    # The probe is replaced where this CPU has AVX-512: no CPU without it can be made to appear here.
    monkeypatch.setattr(loop, "cpu_has_bf16_kernels", lambda: False)
    job = make_spec(str(tmp_path / "storage"), train={"precision": "bf16"})
    refused(invoke("run", write_spec(tmp_path / "job.yaml", job)), "train.precision bf16: this CPU has no bf16 kernel")
    assert not (tmp_path / "storage").exists()


def test_a_prime_outside_the_corpus_vocabulary_is_refused_before_the_run_starts(ray_local, tmp_path):
    job = make_spec(str(tmp_path / "storage"), samples={"prime": "ROMEO: €5"})
    refused(invoke("run", write_spec(tmp_path / "job.yaml", job)), "outside the model's vocabulary: '5€'")
    assert not (tmp_path / "storage" / "runs").exists()  # the corpus was built (and is reused); no run began


# Hostile input: corpora


@pytest.fixture
def built_copy(shakespeare, tmp_path) -> Path:
    """A copy of the built tiny Shakespeare in a storage folder of this test's own: its corpus folder."""
    folder = tmp_path / "storage" / "corpora" / "shakespeare" / shakespeare.fingerprint
    shakespeare.folder.download(str(folder))
    return folder


def damage_a_shard(folder: Path) -> str:
    manifest = json.loads((folder / shards.MANIFEST).read_text())
    shard = folder / manifest["splits"]["val"]["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return shard.name


def newer_manifest(folder: Path) -> str:
    manifest = json.loads((folder / shards.MANIFEST).read_text())
    (folder / shards.MANIFEST).write_text(json.dumps({**manifest, "format": shards.FORMAT + 1}))
    return "is newer than this rnnfarm reads"


def test_a_shard_damaged_on_disk_is_named_before_training_and_nothing_is_written(built_copy, tmp_path):
    name = damage_a_shard(built_copy)
    storage = tmp_path / "storage"
    before = tree(storage)
    line = refused(invoke("corpus", "build", "shakespeare", "--to", storage), f"{name} is corrupt")
    assert "sha256 differs from the manifest" in line
    job = make_spec(str(storage))
    refused(invoke("run", write_spec(tmp_path / "job.yaml", job)), f"{name} is corrupt")
    assert tree(storage) == before


def test_a_manifest_of_a_newer_format_is_refused_and_nothing_is_written(built_copy, tmp_path):
    expected = newer_manifest(built_copy)
    before = tree(tmp_path / "storage")
    refused(invoke("corpus", "build", "shakespeare", "--to", tmp_path / "storage"), expected)
    assert tree(tmp_path / "storage") == before


def bad_sources(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "empty.txt").write_bytes(b"")
    binary = Path(sys.executable).resolve()  # a real program: machine code, not text
    return {
        "wrong checksum": (["-o", f"url={tiny_text_file()}", "-o", f"sha256={'f' * 64}"], "sha256 mismatch"),
        "empty text": (["-o", f"url={tmp_path / 'empty.txt'}"], "produced no text"),
        "binary input": (["-o", f"url={binary}"], "holds NUL bytes, so it is binary, not text"),
        "invalid UTF-8 refused by the policy": (
            ["-o", f"url={latex.DEBIAN_ROOT}/latex/eltex/pri_cz.tex.gz", "-n", "invalid_utf8=error"],
            "is not valid UTF-8; set normalize.invalid_utf8",
        ),
    }


@pytest.mark.parametrize(
    "case", ["wrong checksum", "empty text", "binary input", "invalid UTF-8 refused by the policy"]
)
def test_a_bad_source_is_refused_in_one_line_and_nothing_is_written(case, tmp_path):
    args, expected = bad_sources(tmp_path)[case]
    refused(invoke("corpus", "build", "files", *args, "--to", tmp_path / "storage"), expected)
    assert tree(tmp_path / "storage") == {}


def test_invalid_utf8_under_the_default_policy_is_replaced_and_counted_once(tmp_path):
    czech = f"{latex.DEBIAN_ROOT}/latex/eltex/pri_cz.tex.gz"  # ISO 8859-2: one stream, read twice to be cut
    result = invoke("corpus", "build", "files", "-o", f"url={czech}", "--to", tmp_path)
    assert result.exit_code == 0, result.output
    manifest = json.loads(next(tmp_path.glob("corpora/files/*/manifest.json")).read_text())
    invalid = sum(
        0xDC80 <= ord(c) <= 0xDCFF for c in gzip.decompress(Path(czech).read_bytes()).decode("utf-8", "surrogateescape")
    )
    assert manifest["invalid_utf8"] == {"policy": "replace", "bytes": invalid, "documents": 1}
    text = "".join(
        shards.read_split(Store.at(str(tmp_path / "corpora" / "files" / manifest["fingerprint"])), manifest, s)
        for s in manifest["splits"]
    )
    assert text.count("\ufffd") == invalid


# Hostile input: checkpoints


def not_checkpoints(tmp_path: Path, trained: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    garbage_meta = tmp_path / "garbage-meta"
    garbage_meta.mkdir()
    (garbage_meta / "meta.json").write_bytes(b"\x80\x04 not json")
    garbage_weights = tmp_path / "garbage-weights"
    shutil.copytree(trained, garbage_weights)
    (garbage_weights / "model.safetensors").write_bytes(tiny_text_file().read_bytes()[:4096])
    other_shape = tmp_path / "other-shape"
    shutil.copytree(trained, other_shape)
    meta = json.loads((other_shape / "meta.json").read_text())
    (other_shape / "meta.json").write_text(json.dumps({**meta, "model": {**meta["model"], "hidden": 64}}))
    return {
        "a text file": (tmp_path / "notes.txt", "neither a checkpoint nor a run"),
        "metadata that is not JSON": (garbage_meta, "meta.json: not valid JSON"),
        "weights that are not safetensors": (garbage_weights, "model.safetensors: not a safetensors file"),
        "weights of another shape": (other_shape, "weights do not fit the model in meta.json"),
    }


@pytest.mark.parametrize(
    "case", ["a text file", "metadata that is not JSON", "weights that are not safetensors", "weights of another shape"]
)
def test_sampling_what_is_not_a_checkpoint_is_refused_in_one_line(case, trained_checkpoint, tmp_path):
    target, expected = not_checkpoints(tmp_path, trained_checkpoint)[case]
    refused(invoke("sample", target, "--prime", "A", "--length", "5"), expected)


TRAINER_STATES = {
    "missing": (None, "trainer.json: missing from the checkpoint"),
    "cut short": ("truncated", "trainer.json: not valid JSON"),
    "not the trainer's": (b'{"step": 40}', "trainer.json: not an rnnfarm checkpoint's trainer state"),
}


@pytest.mark.parametrize("case", list(TRAINER_STATES))
def test_resuming_from_a_checkpoint_whose_trainer_state_is_missing_or_corrupt_is_refused_in_one_line(
    case, trained_checkpoint, shakespeare, tmp_path
):
    content, expected = TRAINER_STATES[case]
    resume = tmp_path / "resume"
    folder = shutil.copytree(trained_checkpoint, resume / trained_checkpoint.name)
    trainer = folder / "trainer.json"
    if content is None:
        trainer.unlink()
    else:
        trainer.write_bytes(trainer.read_bytes()[:100] if content == "truncated" else content)
    job = make_spec(str(tmp_path / "storage"), model={"layers": 2}, train={"steps": 60, "eval_every": 20})
    with pytest.raises(UserError, match=re.escape(expected)) as error:
        train(Job(job, shakespeare.folder, Run(Store.at(job.storage) / "runs" / "r").trial()), LocalSession(resume))
    assert "\n" not in str(error.value)


# Security: nothing is ever unpickled


class Payload:
    """A pickle that creates the folder ``marker`` when it is loaded: code from a file, run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_a_planted_pickle_is_refused_and_never_run(trained_checkpoint, shakespeare, tmp_path):
    torch.save(Payload(tmp_path / "proof"), tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)  # what loading it the unsafe way would do
    assert (tmp_path / "proof").is_dir()

    marker = tmp_path / "marker"
    as_weights = shutil.copytree(trained_checkpoint, tmp_path / "pickle-as-weights")
    (as_weights / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    refused(invoke("sample", as_weights, "--prime", "A"), "model.safetensors: not a safetensors file")
    torch_format = shutil.copytree(trained_checkpoint, tmp_path / "torch-format")
    torch.save(Payload(marker), torch_format / "model.safetensors")
    refused(invoke("sample", torch_format, "--prime", "A"), "model.safetensors: not a safetensors file")
    beside = shutil.copytree(trained_checkpoint, tmp_path / "pt-beside")
    (beside / "model.safetensors").unlink()
    torch.save(Payload(marker), beside / "model.pt")
    refused(invoke("sample", beside, "--prime", "A"), "model.safetensors: missing from the checkpoint")

    # Resuming training: the optimizer state of the checkpoint to resume from is a pickle.
    resume = tmp_path / "resume"
    shutil.copytree(trained_checkpoint, resume / trained_checkpoint.name)
    (resume / trained_checkpoint.name / "optimizer.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    job = make_spec(str(tmp_path / "storage"), model={"layers": 2}, train={"steps": 60, "eval_every": 20})
    with pytest.raises(UserError, match="optimizer.safetensors: not a safetensors file"):
        train(Job(job, shakespeare.folder, Run(Store.at(job.storage) / "runs" / "r").trial()), LocalSession(resume))
    assert not marker.exists()


def test_no_code_of_rnnfarm_or_its_plugins_can_unpickle_or_load_unsafe_yaml():
    root = Path(__file__).resolve().parents[1]
    unsafe = re.compile(
        r"\b(pickle|cloudpickle|dill|joblib|marshal|shelve)\b|torch\.load|allow_pickle|"
        r"yaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b"
    )
    found = [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in [*(root / "rnnfarm").rglob("*.py"), *(root / "plugins").rglob("*.py")]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert found == []


def test_yaml_tags_that_would_make_python_objects_are_refused_everywhere_yaml_is_read(tmp_path):
    marker = tmp_path / "marker"
    tag = f"!!python/object/apply:os.makedirs ['{marker}']"
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(f"name: x\nstorage: {tmp_path / 'storage'}\nsamples: {{prime: {tag}}}\n")
    refused(invoke("run", spec_file), "could not determine a constructor for the tag")
    # A plugin option given on the command line is YAML too; a tag makes it plain text, never an object.
    refused(invoke("corpus", "build", "shakespeare", "-o", f"variant={tag}", "--to", tmp_path / "storage"), "variant")
    assert not marker.exists() and not (tmp_path / "storage").exists()


# Security: archives are read in memory, never extracted


def hostile_tarball(path: Path) -> None:
    """A kernel-like tarball of real text whose members also try to leave any folder they are extracted to."""
    text = tiny_text_file().read_bytes()
    with tarfile.open(path, "w:xz") as tar:

        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(8):
            add(f"linux-x/kernel/part{i}.c", text[i * 5000 : (i + 1) * 5000])
        add("../evil.c", text[40000:45000])
        add(f"{path.parent}/absolute/evil.c", text[45000:50000])
        add("linux-x/../../escape.c", text[50000:55000])
        add("linux-x/kernel/passwd.c", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add("linux-x/kernel/shadow.c", kind=tarfile.LNKTYPE, link="/etc/shadow")


def test_tarball_members_are_read_in_memory_and_links_are_never_followed(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    hostile_tarball(work / "linux.tar.xz")
    storage = work / "storage"
    result = invoke(
        "corpus", "build", "linux", "-o", f"url={work / 'linux.tar.xz'}", "-o", "include=['*.c']", "--val", "0.3",
        "--to", storage,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = next(storage.glob("corpora/linux/*"))
    manifest = shards.load_manifest(Store.at(str(folder)))
    assert manifest["documents"] == 11  # the 11 regular files, whatever their names; the two links skipped
    text = "".join(shards.read_split(Store.at(str(folder)), manifest, s) for s in manifest["splits"])
    separators = sum(split["documents"] - 1 for split in manifest["splits"].values())  # "\n" between two files
    assert len(text) == 55_000 + separators and "root:x:0:0" not in text  # no byte of /etc/passwd
    everything = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert everything == {"work/linux.tar.xz", *(f"work/storage/corpora/linux/{folder.name}/{n}" for n in tree(folder))}

    # Read through fsspec's tar:// instead, a link out of the archive fails that source, in one line.
    line = refused(invoke("corpus", "build", "files", "-o", f"url=tar://**::file://{work / 'linux.tar.xz'}",
                          "--to", storage), "/etc/passwd' not found")  # fmt: skip
    assert "no source of corpus 'files' could be read" in line


# Security: names and options never write outside their folders


class EscapingName(Shakespeare):
    name = "../../escape"


class EscapingPlugin:
    @hookimpl
    def register_corpora(self, register) -> None:
        register(EscapingName())


def test_plugin_options_and_names_cannot_write_outside_the_corpus_folder(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    shutil.copy(tiny_text_file(), texts / "tiny.txt")
    storage = tmp_path / "storage"
    roundabout = f"{texts}/../texts/./tiny.txt"  # a source path may wander: it is only read
    built = invoke("corpus", "build", "files", "-o", f"url={roundabout}", "--to", storage)
    assert built.exit_code == 0, built.output
    assert {path.split("/")[:2] == ["corpora", "files"] and len(path.split("/")) == 4 for path in tree(storage)} == {
        True
    }

    manager = registry.plugin_manager()
    manager.register(EscapingPlugin(), name="escaping-test-plugin")
    try:
        line = refused(invoke("corpus", "build", "shakespeare", "--to", tmp_path / "other"), "'../../escape'")
        assert "a corpus name is letters, digits" in line
    finally:
        manager.unregister(name="escaping-test-plugin")
    assert not (tmp_path / "other").exists() and not (tmp_path.parent / "escape").exists()


# Security: credentials given to a corpus plugin never reach what is stored


def test_credentials_in_plugin_options_reach_no_manifest_spec_record_checkpoint_or_log(s3, tmp_path, capfd):
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    fs.put_file(str(tiny_text_file()), "rnnfarm-test/texts/tiny.txt")
    source = {"url": "s3://rnnfarm-test/texts/tiny.txt", "storage_options": s3.options()}
    job = make_spec(
        str(tmp_path / "storage"),
        corpus={"name": "files", "options": source},
        train={"steps": 4, "eval_every": 2},
    )
    built = build(Store.at(job.storage), job.corpus)
    assert built.manifest["options"]["storage_options"] == {"endpoint_url": s3.endpoint, "key": "***", "secret": "***"}
    run = Run(Store.at(job.storage) / "runs" / "secretive")
    record.begin(run, job, {"name": "files", "fingerprint": built.fingerprint, "url": built.folder.url})
    train(Job(job, built.folder, run.trial()), LocalSession(tmp_path / "checkpoints"))
    shown = invoke("corpus", "show", built.folder.url)
    assert shown.exit_code == 0, shown.output

    stored = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert any(p.name == "meta.json" for p in stored) and any(p.name == "spec.yaml" for p in stored)
    printed = shown.output + "".join(capfd.readouterr())
    for secret in (s3.secret_key, s3.access_key):
        assert all(secret.encode() not in data for data in stored.values()), secret
        assert secret not in printed
