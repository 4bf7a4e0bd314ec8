"""Storage on a real S3 server (SeaweedFS on 127.0.0.1): whole objects, options and their precedence,
the pyarrow bridge Ray persists through, clear errors, and credentials kept out of what is written."""

from __future__ import annotations

import pyarrow.fs
import pytest
import s3fs
from click.testing import CliRunner

from rnnfarm import redact
from rnnfarm.cli import cli
from rnnfarm.corpus import shards
from rnnfarm.corpus.build import build
from rnnfarm.errors import UserError
from rnnfarm.storage import Store, resolve_options
from tests.s3local import free_ports

from .conftest import make_spec

BUCKET = "s3://rnnfarm-test"


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The server's endpoint and credentials in the environment, as a user exports them."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep the credentials it was made with
    yield s3
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_write_appears_only_whole_and_a_failed_one_leaves_nothing(s3_env):
    folder = Store.at(f"{BUCKET}/atomic")
    target = folder / "manifest.json"
    with pytest.raises(RuntimeError), target.open_atomic() as f:
        f.write(b'{"half": ')
        assert not target.exists()  # nothing visible while the block runs
        raise RuntimeError("interrupted")
    assert not target.exists() and folder.list() == []
    target.write_json({"whole": True})
    assert target.read_json() == {"whole": True}
    assert [s.name for s in folder.list()] == ["manifest.json"]


def test_local_writes_in_progress_are_not_listed(tmp_path):
    folder = Store.at(str(tmp_path))
    with (folder / "step-000010.json").open_atomic() as f:
        f.write(b"{}")
        assert folder.list() == []
    assert [s.name for s in folder.list()] == ["step-000010.json"]


def test_ray_persists_through_a_pyarrow_filesystem_with_the_same_settings(s3_env, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\x00" * 4096)
    (tmp_path / "ckpt" / "meta.json").write_text("{}")
    filesystem, path = (Store.at(f"{BUCKET}/pyarrow") / "checkpoint-000001").pyarrow()
    pyarrow.fs.copy_files(str(tmp_path / "ckpt"), path, destination_filesystem=filesystem)
    stored = Store.at(f"{BUCKET}/pyarrow/checkpoint-000001")
    assert [s.name for s in stored.list()] == ["meta.json", "model.safetensors"]
    assert (stored / "model.safetensors").read_bytes() == b"\x00" * 4096


def test_corpus_builds_to_s3_exactly_as_to_a_local_folder(s3_env, shakespeare):
    built = build(Store.at(f"{BUCKET}/corpus-store"), make_spec(f"{BUCKET}/corpus-store").corpus)
    assert built.folder.url == f"{BUCKET}/corpus-store/corpora/shakespeare/{shakespeare.fingerprint}"
    assert built.manifest["splits"] == shakespeare.manifest["splits"]  # same shards, same sha256
    assert shards.read_split(built.folder, built.manifest, "val") == shards.read_split(
        shakespeare.folder, shakespeare.manifest, "val"
    )
    again = build(Store.at(f"{BUCKET}/corpus-store"), make_spec(f"{BUCKET}/corpus-store").corpus)
    assert again.skipped


def test_options_precedence_spec_then_fsspec_environment_then_aws_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1001")
    assert resolve_options("s3://b/x")["endpoint_url"] == "http://127.0.0.1:1001"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1002")
    assert resolve_options("s3://b/x")["endpoint_url"] == "http://127.0.0.1:1002"
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://127.0.0.1:1003")
    assert resolve_options("s3://b/x")["endpoint_url"] == "http://127.0.0.1:1003"
    given = {"endpoint_url": "http://127.0.0.1:1004", "config_kwargs": {"retries": {"max_attempts": 5}}}
    options = resolve_options("s3://b/x", given)
    assert options["endpoint_url"] == "http://127.0.0.1:1004"
    # Defaults fill in around what is given, key by key.
    assert options["config_kwargs"]["retries"] == {"mode": "standard", "max_attempts": 5}
    assert options["config_kwargs"]["connect_timeout"] == 5
    assert resolve_options("/tmp/x") == {}  # a local folder takes nothing from the S3 settings


def test_fsspec_credentials_win_over_aws_ones_and_the_spec_wins_over_both(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all")
    monkeypatch.setenv("FSSPEC_S3_KEY", s3.access_key)
    monkeypatch.setenv("FSSPEC_S3_SECRET", s3.secret_key)
    s3fs.S3FileSystem.clear_instance_cache()
    Store.at(f"{BUCKET}/precedence/ok.json").write_json({"ok": 1})
    with pytest.raises(UserError, match="access denied"):
        Store.at(f"{BUCKET}/precedence/ok.json", {"secret": "a-wrong-secret-in-the-spec"}).read_json()
    s3fs.S3FileSystem.clear_instance_cache()


def test_redaction_masks_credentials_by_name_and_by_value():
    redact.remember("sEcReT-vAlUe-42")
    options = {"key": "AKID", "secret": "sEcReT-vAlUe-42", "client_kwargs": {"endpoint_url": "http://h:1"}}
    assert redact.redact(options) == {"key": "***", "secret": "***", "client_kwargs": {"endpoint_url": "http://h:1"}}
    assert redact.scrub("signature of sEcReT-vAlUe-42 refused") == "signature of *** refused"
    assert redact.scrub("https://user:pa55word@host/x") == "https://user:***@host/x"


def test_log_lines_carry_no_credentials():
    import structlog

    redact.remember("another-sEcReT-7")
    event = {"event": "failed: another-sEcReT-7 refused", "options": {"secret": "x", "endpoint_url": "http://h"}}
    assert redact.log_processor(None, "info", event) == {
        "event": "failed: *** refused",
        "options": {"secret": "***", "endpoint_url": "http://h"},
    }
    assert redact.log_processor in structlog.get_config()["processors"]


def test_the_spec_echoed_into_a_run_has_its_credentials_masked(tmp_path):
    from rnnfarm.layout import Run
    from rnnfarm.runs import record

    job = make_spec(str(tmp_path), storage_options={"key": "AKIDEXAMPLE1", "secret": "wJalrXUtnFEMI-example"})
    run = Run(Store.at(str(tmp_path)) / "runs" / "t")
    record.begin(run, job, {"name": "shakespeare", "url": "https://user:hunter22@example.org/corpus"})
    echoed = (tmp_path / "runs" / "t" / "spec.yaml").read_text()
    assert "storage_options:\n  key: '***'\n  secret: '***'" in echoed
    record = (tmp_path / "runs" / "t" / "run.json").read_text()
    for text in (echoed, record):
        assert "AKIDEXAMPLE1" not in text and "wJalrXUtnFEMI-example" not in text and "hunter22" not in text


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_wrong_credentials_are_one_line_and_never_echoed(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789")
    s3fs.S3FileSystem.clear_instance_cache()
    result = run_cli("runs", "list", f"{BUCKET}/store")
    assert result.exit_code == 2
    assert result.output.startswith("error: storage s3://rnnfarm-test/store: access denied by http://127.0.0.1:")
    assert len(result.output.strip().splitlines()) == 1
    assert "wrong-secret-0123456789" not in result.output and s3_env.access_key not in result.output


def test_an_unreachable_endpoint_is_one_line(s3_env, monkeypatch):
    closed = free_ports(1)[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    result = run_cli("pull", f"{BUCKET}/store/runs/tiny")
    assert result.exit_code == 2
    assert f"cannot reach http://127.0.0.1:{closed}" in result.output
    assert "check that the server is up" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_missing_bucket_is_one_line(s3_env, tmp_path):
    result = run_cli("runs", "list", "s3://no-such-bucket/store")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: storage s3://no-such-bucket/store: bucket 'no-such-bucket' does not exist: "
        "create it, or fix the storage URL"
    )
    job = make_spec("s3://no-such-bucket/store")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(f"name: {job.name}\nstorage: s3://no-such-bucket/store\n")
    refused = run_cli("run", str(spec_file))  # refused before any corpus is built or Ray is started
    assert refused.exit_code == 2 and "bucket 'no-such-bucket' does not exist" in refused.output


def test_a_missing_run_is_one_line(s3_env):
    for args in (["runs", "show", f"{BUCKET}/store/runs/nope"], ["pull", f"{BUCKET}/store/runs/nope"]):
        result = run_cli(*args)
        assert result.exit_code == 2
        assert result.output.startswith(f"error: no run at {BUCKET}/store/runs/nope (no run.json there)")


def test_the_local_s3_deploy_spec_runs_the_same_job_as_the_local_one():
    from rnnfarm import spec
    from rnnfarm.runs.record import comparable

    local, on_s3 = spec.load("deploy/local.yaml"), spec.load("deploy/local-s3.yaml")
    assert on_s3.storage.startswith("s3://") and on_s3.cluster == local.cluster
    assert {**comparable(on_s3), "name": None} == {**comparable(local), "name": None}


def test_a_named_profile_supplies_the_credentials(s3, monkeypatch, tmp_path):
    (tmp_path / "credentials").write_text(
        f"[rnnfarm-test]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    (Store.at(f"{BUCKET}/profile/a.json", {"profile": "rnnfarm-test"})).write_json({"by": "option"})
    with pytest.raises(UserError, match=r"profile \(rnnfarm-other\) could not be found: check the profile's name"):
        Store.at(f"{BUCKET}/profile/a.json", {"profile": "rnnfarm-other"}).exists()
    monkeypatch.setenv("AWS_PROFILE", "rnnfarm-test")
    s3fs.S3FileSystem.clear_instance_cache()
    assert Store.at(f"{BUCKET}/profile/a.json").read_json() == {"by": "option"}  # the profile named by AWS_PROFILE
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_pickled_store_or_spec_holds_no_credential_and_one_whose_driver_is_gone_says_so_in_one_line(s3):
    import pickle
    import subprocess
    import sys

    job = make_spec(f"{BUCKET}/sealed", storage_options={"key": s3.access_key, "secret": s3.secret_key})
    store = Store.at(job.storage, {**job.storage_options, "endpoint_url": s3.endpoint})
    store.write_json({"ok": 1})  # opened here: the filesystem it made holds the credentials
    travelling = pickle.dumps((store, store / "child", store.pyarrow()[0], job))
    for secret in (s3.access_key, s3.secret_key):
        assert secret.encode() not in travelling
    arrived, child, _, spec_there = pickle.loads(travelling)
    assert arrived.read_json() == {"ok": 1} and child.url == f"{BUCKET}/sealed/child"
    assert spec_there.storage_options == {"key": "***", "secret": "***"}

    elsewhere = (  # another process, no Ray: the driver holding the credentials cannot be asked
        "import pickle, sys\nfrom rnnfarm.errors import UserError\n"
        "try:\n    pickle.loads(sys.stdin.buffer.read()).read_json()\n"
        "except UserError as exc:\n    print(exc)\n"
    )
    said = subprocess.run([sys.executable, "-c", elsewhere], input=pickle.dumps(store), capture_output=True)
    assert said.stdout.decode().startswith("storage credentials given in storage options are held in the memory")
    assert said.stdout.decode().count("\n") == 1
