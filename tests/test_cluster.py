"""Cluster jobs: `rnnfarm run` submits to a real two-node Ray cluster on loopback (token auth on) and follows
the job; `rnnfarm jobs` lists, shows, follows and stops it; results land on a real S3 server and are pulled."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import s3fs
import yaml
from click.testing import CliRunner

from rnnfarm import spec
from rnnfarm.cli import cli
from rnnfarm.errors import UserError
from rnnfarm.launch.submit import TERMINAL, Cluster
from rnnfarm.layout import Run
from rnnfarm.runs import leaderboard
from rnnfarm.storage import Store
from tests.s3local import free_ports

from . import raycluster
from .conftest import make_spec

RNNFARM = [sys.executable, "-m", "rnnfarm"]
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")  # inside Ray's client
AWS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"]


@pytest.fixture(scope="module")
def cluster():
    started = raycluster.start()
    yield started
    raycluster.stop(started)


@pytest.fixture
def logged_in(cluster, s3, monkeypatch):
    """This process holds what a user's shell would: the cluster's token and the S3 credentials. A job a
    failed test left running is stopped after it, so that its CPUs go back to the tests after it."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield cluster
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)  # a test may have set a wrong one
    jobs = Cluster.at(cluster.dashboard)
    for job in jobs.client.list_jobs():
        if str(job.status) not in TERMINAL:
            jobs.stop(job.submission_id)
            jobs.wait(job.submission_id, timeout=60)


def spec_file(tmp_path: Path, **sections) -> str:
    job = make_spec(sections.pop("storage", str(tmp_path / "storage")), **sections)
    path = tmp_path / f"{job.name}.yaml"
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    return str(path)


def cli_env() -> dict[str, str]:
    return {**os.environ, "RNNFARM_LOG_FORMAT": "json"}


def job_id(output: str) -> str:
    return re.search(r"submitted job (\S+) to ", output)[1]


def test_a_sweep_runs_on_both_nodes_of_the_cluster_lands_on_s3_and_is_pulled(logged_in, s3, ray_local, tmp_path):
    # ray_local: another Ray runs on this machine meanwhile, as on a shared one; Ray Train's clean-up
    # actors must still find this cluster's state API (and not give up, leaking stopped trials' CPUs).
    cluster, storage = logged_in, "s3://rnnfarm-test/cluster"
    path = spec_file(
        tmp_path,
        name="cluster-sweep",
        storage=storage,
        train={"steps": 40, "eval_every": 20},
        tune={
            "space": {"model.hidden": {"choice": [16, 32]}},
            "samples": 3,  # two at a time on the two CPUs: the third runs only once a trial gave its CPU back
            "scheduler": {"kind": "none"},
            "resources": {"workers": 1, "driver_cpus": 0},
        },
        cluster={
            "address": cluster.dashboard,
            "code": "source",
            "forward_env": AWS,
            "runtime_env": {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}},
        },
    )
    done = subprocess.run([*RNNFARM, "run", path], env=cli_env(), capture_output=True, text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    job = job_id(out)
    assert "run cluster-sweep: completed" in out  # the driver's summary, streamed from the cluster
    assert f"job {job} succeeded" in out and f"rnnfarm pull {storage}/runs/cluster-sweep" in out

    joined = next(json.loads(line) for line in out.splitlines() if '"joined the Ray cluster"' in line)
    assert joined["nodes"] == 2 and "py_modules_files" in joined["code"]  # the code shipped with the job ran
    assert "Failed to query Ray Train Controller" not in out and "multiple active Ray instances" not in out

    info = Cluster.at(cluster.dashboard).info(job)
    workers = cluster.state("actors", ("class_name", "=", "RayTrainWorker"), ("job_id", "=", info.job_id))
    assert {w["node_id"] for w in workers} == {n["node_id"] for n in cluster.alive_nodes()}  # both nodes trained
    groups = cluster.state("placement_groups", ("creator_job_id", "=", info.job_id))
    assert groups and all(g["state"] == "REMOVED" for g in groups)

    run = Store.at(f"{storage}/runs/cluster-sweep")
    rows = leaderboard.read(Run(run))
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    assert Run(run).info()["status"] == "completed"

    secrets_ = (s3.secret_key, s3.access_key, cluster.token)
    shown = json.dumps({"runtime_env": info.runtime_env, "metadata": info.metadata, "entry": info.entrypoint})
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    stored = {path: fs.cat_file(path) for path in fs.find("rnnfarm-test/cluster")}  # records, report, checkpoints
    assert any(path.endswith("/report.html") for path in stored) and any("/tune/" in path for path in stored)
    logs = {p: p.read_bytes() for p in cluster.folder.glob("*/session_*/logs/**/*") if p.is_file()}  # both nodes
    assert any(p.name.startswith("job-driver-") for p in logs)
    for secret in secrets_:
        assert secret not in out and secret not in shown
        for where, data in {**stored, **logs}.items():
            assert secret.encode() not in data, where

    pulled = CliRunner().invoke(cli, ["pull", run.url, "--dest", str(tmp_path / "pulled")])
    assert pulled.exit_code == 0, pulled.output
    assert (tmp_path / "pulled" / "best" / "model.safetensors").stat().st_size > 0
    status = CliRunner().invoke(cli, ["jobs", "status", job, "--address", cluster.dashboard])
    assert status.exit_code == 0 and "SUCCEEDED" in status.output and "cluster-sweep" in status.output


# Ray Train's autoscaling coordinator: one per cluster, detached and holding nothing, made by the first run's
# controller and kept for every later run (get_if_exists), whichever job made it
RAYS_OWN = {"_AutoscalingCoordinatorActor"}


def lines_of(process: subprocess.Popen) -> list[str]:
    """The process's output lines so far, collected in the background."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return lines


def wait_for(predicate, timeout: float, what: str, seen=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}; {seen()}")
        time.sleep(0.5)


def test_ctrl_c_detaches_and_jobs_stop_ends_the_job_and_gives_its_cpus_back(logged_in, tmp_path):
    cluster = logged_in
    path = spec_file(
        tmp_path,
        name="long",
        storage=str(tmp_path / "shared"),  # a folder the cluster's nodes see: they run on this machine
        train={"steps": 100_000, "eval_every": 10},
        cluster={"address": cluster.dashboard, "workers": 2, "storage_shared": True},
    )
    following = subprocess.Popen(
        [*RNNFARM, "run", path],
        env={**cli_env(), "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints its threads' stacks, should it hang
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = lines_of(following)
    try:
        started = lambda: any('"event": "eval"' in line for line in lines)  # noqa: E731
        wait_for(started, 240, "training to start", lambda: "".join(lines)[-4000:])
    finally:
        following.send_signal(signal.SIGINT)
        try:
            following.wait(120)  # the client leaves its log stream, prints how to follow again, and exits
        except subprocess.TimeoutExpired:
            following.send_signal(signal.SIGABRT)
            following.wait(30)
            pytest.fail("no exit within 120 s of ctrl-C; what it printed, its stacks last:\n" + "".join(lines)[-8000:])
    out = "".join(lines)
    assert following.returncode == 130, out[-3000:]
    job = job_id(out)
    assert f"detached: job {job} goes on" in out and f"rnnfarm jobs stop {job} --address {cluster.dashboard}" in out

    where = ["--address", cluster.dashboard]
    status = CliRunner().invoke(cli, ["jobs", "status", job, *where])
    assert status.exit_code == 0 and f"job {job}: RUNNING" in status.output
    assert job in CliRunner().invoke(cli, ["jobs", "list", *where]).output
    assert '"event": "eval"' in CliRunner().invoke(cli, ["jobs", "logs", job, *where]).output

    job_hex = Cluster.at(cluster.dashboard).info(job).job_id
    training = cluster.state("actors", ("class_name", "=", "RayTrainWorker"), ("job_id", "=", job_hex))
    assert {w["node_id"] for w in training if w["state"] == "ALIVE"} == {n["node_id"] for n in cluster.alive_nodes()}

    stopped = CliRunner().invoke(cli, ["jobs", "stop", job, *where])
    assert stopped.exit_code == 0 and f"job {job}: STOPPED" in stopped.output, stopped.output

    def left() -> list[str]:  # every actor of the job (Train's and Tune's, their detached cleaner too) and group
        groups = cluster.state("placement_groups", ("creator_job_id", "=", job_hex))
        actors = cluster.state("actors", ("job_id", "=", job_hex))
        return [f"group {g['placement_group_id']}" for g in groups if g["state"] != "REMOVED"] + [
            a["class_name"] for a in actors if a["state"] != "DEAD" and a["class_name"] not in RAYS_OWN
        ]

    wait_for(lambda: not left(), 60, "the stopped job's actors and placement groups to go", lambda: str(left()))
    again = CliRunner().invoke(cli, ["jobs", "stop", job, *where])
    assert again.exit_code == 0 and "had already ended: STOPPED" in again.output


def test_a_job_that_fails_on_the_cluster_exits_with_its_drivers_code_and_message(logged_in, tmp_path):
    cluster = logged_in
    path = spec_file(  # the credentials travel: the driver reaches S3 and is told the bucket is missing
        tmp_path,
        name="no-bucket",
        storage="s3://no-such-bucket/x",
        cluster={"address": cluster.dashboard, "forward_env": AWS},
    )

    submitted = CliRunner().invoke(cli, ["run", path, "--no-wait"])
    assert submitted.exit_code == 0, submitted.output
    job = job_id(submitted.output)
    assert f"rnnfarm jobs logs {job} --follow --address {cluster.dashboard}" in submitted.output

    followed = CliRunner().invoke(cli, ["jobs", "logs", job, "--follow", "--address", cluster.dashboard])
    assert followed.exit_code == 2, followed.output
    said = f"error: job {job} failed: storage s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"
    assert said in followed.output


def test_a_missing_or_wrong_token_and_an_unknown_job_are_one_line_errors(logged_in, tmp_path, monkeypatch):
    cluster = logged_in
    path = spec_file(tmp_path, name="x", storage="s3://rnnfarm-test/x", cluster={"address": cluster.dashboard})
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    missing = CliRunner().invoke(cli, ["run", path])
    assert missing.exit_code == 2
    assert missing.output == f"error: the Ray cluster at {cluster.dashboard} requires a token: " + (
        "set RAY_AUTH_TOKEN to it (or RAY_AUTH_TOKEN_PATH to a file holding it); "
        "`ray get-auth-token` prints it where it is set up\n"
    )
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    unknown = CliRunner().invoke(cli, ["jobs", "status", "rnnfarm-x-00000000", "--address", cluster.dashboard])
    assert unknown.exit_code == 2 and unknown.output.startswith("error: no job rnnfarm-x-00000000 on the Ray cluster")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token-0123456789")
    wrong = CliRunner().invoke(cli, ["jobs", "list", "--address", cluster.dashboard])
    assert wrong.exit_code == 2 and "refused the token in RAY_AUTH_TOKEN" in wrong.output
    assert "not-the-token-0123456789" not in wrong.output


def test_submitting_where_nothing_listens_fails_fast_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = f"http://127.0.0.1:{free_ports(1)[0]}"
    path = spec_file(tmp_path, name="x", storage="s3://bucket/x", cluster={"address": address})
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["run", path])
    assert time.monotonic() - started < 30  # a few tries, not a hang
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: cannot reach a Ray cluster at {address} (Connection refused): check")
    status = CliRunner().invoke(cli, ["jobs", "status", "rnnfarm-x-00000000", "--address", address])
    assert status.exit_code == 2 and "cannot reach a Ray cluster" in status.output


def test_a_folder_on_this_machine_is_refused_as_a_cluster_jobs_storage(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = spec_file(tmp_path, name="x", cluster={"address": "http://127.0.0.1:1"})
    result = CliRunner().invoke(cli, ["run", path])
    assert result.exit_code == 2 and "a folder on this machine, which a cluster's nodes do not see" in result.output
    assert "cluster.storage_shared: true" in result.output


def test_the_address_comes_from_the_flag_then_ray_address_then_the_spec(tmp_path, monkeypatch):
    from rnnfarm.launch.submit import resolve_address

    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert resolve_address("local", "auto") == "auto"
    assert resolve_address("local") == "http://head:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    assert resolve_address("http://other:8265") == "http://other:8265"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    with pytest.raises(UserError, match=r"RAY_ADDRESS 'head:6379': must be local, auto, or the URL of a Ray"):
        resolve_address("local")
    monkeypatch.delenv("RAY_ADDRESS")
    no_wait = CliRunner().invoke(cli, ["run", spec_file(tmp_path, name="x"), "--no-wait"])
    assert no_wait.exit_code == 2 and "--no-wait applies to a job submitted to a cluster" in no_wait.output
    nowhere = CliRunner().invoke(cli, ["jobs", "list"])
    assert nowhere.exit_code == 2 and "no cluster to ask" in nowhere.output


def test_the_cluster_section_keeps_credentials_out_of_the_spec():
    def refused(cluster: dict) -> str:
        with pytest.raises(UserError) as caught:
            spec.parse({"name": "x", "cluster": cluster})
        return str(caught.value)

    assert "cluster.address: must be local, auto, or the URL" in refused({"address": "ray://head:10001"})
    said = refused({"runtime_env": {"env_vars": {"AWS_SECRET_ACCESS_KEY": "abc"}}})
    assert "a credential written in the spec is stored with the run; list AWS_SECRET_ACCESS_KEY in" in said
    assert "also in forward_env" in refused({"forward_env": ["X"], "runtime_env": {"env_vars": {"X": "1"}}})
    assert "'A-B' is not an environment variable's name" in refused({"forward_env": ["A-B"]})
    assert "working_dir carries its spec" in refused({"runtime_env": {"working_dir": "."}})


def test_serve_with_a_cluster_address_deploys_the_model_there_and_it_answers_as_rnnfarm_sample(
    logged_in, trained_checkpoint
):
    import requests

    port = free_ports(1)[0]
    served = subprocess.run(
        [*RNNFARM, "serve", str(trained_checkpoint), "--address", logged_in.dashboard, "--port", str(port)]
        + ["--cpus-per-replica", "0.5"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=600,
    )
    assert served.returncode == 0, served.stderr
    url = f"http://127.0.0.1:{port}"
    assert f"on the Ray cluster at {logged_in.dashboard}: {url} (1 replica)" in served.stdout
    try:
        reply = requests.post(f"{url}/generate", json={"prime": "ROMEO:", "length": 80, "seed": 4}, timeout=120)
        assert reply.status_code == 200, reply.text
        alone = CliRunner().invoke(cli, ["sample", str(trained_checkpoint), "-p", "ROMEO:", "-l", "80", "--seed", "4"])
        assert "ROMEO:" + reply.json()["text"] + "\n" == alone.output
        assert requests.get(f"{url}/model", timeout=30).json()["vocab"]["size"] > 0
    finally:
        from rnnfarm.serving import serve as serving

        serving.undeploy(logged_in.dashboard)  # the replica's CPU goes back to the cluster's other tests


def test_serve_where_no_cluster_listens_fails_fast_in_one_line(trained_checkpoint):
    address = f"http://127.0.0.1:{free_ports(1)[0]}"
    result = CliRunner().invoke(cli, ["serve", str(trained_checkpoint), "--address", address])
    assert result.exit_code == 2 and f"cannot reach a Ray cluster at {address}" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
