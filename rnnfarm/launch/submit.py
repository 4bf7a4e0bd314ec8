"""Jobs on a Ray cluster: submitted through the Ray Jobs API, followed, listed and stopped from here.

A submitted job carries, in its working_dir, the spec (its storage made absolute) and a file with the
values of the variables named in ``cluster.forward_env``: a file, because the Jobs API shows a job's
runtime_env to anyone who lists jobs. With ``cluster.code: source`` the ``rnnfarm`` and
``rnnfarm_plugins`` packages this command runs travel as py_modules, ahead of the cluster's installed
copy. On the cluster the entrypoint is ``python -m rnnfarm run spec.yaml --address auto``: the driver
joins the cluster it runs on (the jobs server sets RAY_ADDRESS for it) instead of submitting again.

The cluster's auth token (Ray's ``RAY_AUTH_MODE=token``) is read from the variable ``cluster.token_env``
names (``RAY_AUTH_TOKEN``), else from the file ``RAY_AUTH_TOKEN_PATH`` names, and is sent only as a
request header; it is scrubbed from everything rnnfarm prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import posixpath
import re
import secrets
import shlex
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import log, redact
from ..errors import UserError
from ..layout import RUNS
from ..spec import ADDRESS, ADDRESS_HELP, JobSpec, dump, looks_secret
from ..storage import is_local, normalize_url

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SPEC_FILE = "spec.yaml"
ENV_FILE = "forwarded-env.json"
PREFIX = "rnnfarm-"  # submission ids: rnnfarm-<run>-<8 hex>
CONNECT_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 5.0
REACH_HINT = (
    "check cluster.address, RAY_ADDRESS or --address, and that the head's dashboard port is reachable from here "
    "(`ray dashboard CLUSTER.yaml` or `kubectl port-forward` forwards it)"
)


class ClusterError(UserError):
    """The cluster refused or failed a request for a reason other than the user's input: exit code 1."""

    exit_code = 1


def resolve_address(spec_address: str, given: str | None = None) -> str:
    """The address in force: ``--address``, then ``RAY_ADDRESS``, then the spec's ``cluster.address``."""
    for source, value in (("--address", given), ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS"))):
        if value:
            if not ADDRESS.match(value):
                raise UserError(f"{source} {value!r}: must be {ADDRESS_HELP}")
            return value.rstrip("/")
    return spec_address.rstrip("/")


def is_remote(address: str) -> bool:
    """Whether the address names a cluster to submit to (its dashboard), rather than ``local`` or ``auto``."""
    return address.startswith(("http://", "https://"))


def with_address(spec: JobSpec, address: str) -> JobSpec:
    return spec.model_copy(update={"cluster": spec.cluster.model_copy(update={"address": address})})


def token(variable: str = "RAY_AUTH_TOKEN") -> str | None:
    """The cluster's auth token: the value of ``variable``, else the content of the file RAY_AUTH_TOKEN_PATH names."""
    value = os.environ.get(variable, "").strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not value and path:
        try:
            value = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise UserError(f"RAY_AUTH_TOKEN_PATH {path}: cannot read the token ({exc.strerror})") from None
    redact.remember(value)
    return value or None


@contextlib.contextmanager
def exact_address() -> Iterator[None]:
    """Ray's clients take RAY_API_SERVER_ADDRESS or RAY_ADDRESS over the address they are given (and an embedded
    Ray in this process sets the first): both are hidden while a client is made."""
    saved = {name: os.environ.pop(name) for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _reason(exc: BaseException) -> str:
    """A connection failure in a few words: ``Connection refused``, ``timed out``..."""
    import requests

    if isinstance(exc, requests.Timeout):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return found.group(1).strip() if found else type(exc).__name__


@dataclass
class Cluster:
    """A Ray cluster's Jobs API at its dashboard's URL; every failure leaves as a one-line UserError."""

    address: str
    token_env: str = "RAY_AUTH_TOKEN"
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def at(cls, address: str, token_env: str = "RAY_AUTH_TOKEN") -> Cluster:
        """Reach the cluster (a few tries, a few seconds each) and check that it takes our token, if it wants one."""
        found = token(token_env)
        cluster = cls(address.rstrip("/"), token_env, {"Authorization": f"Bearer {found}"} if found else {})
        cluster.probe()
        return cluster

    def probe(self) -> None:
        import requests

        for attempt in range(CONNECT_ATTEMPTS):
            try:
                answer = requests.get(f"{self.address}/api/version", headers=self.headers, timeout=CONNECT_TIMEOUT_S)
                break
            except requests.RequestException as exc:
                failure = exc
                if attempt + 1 < CONNECT_ATTEMPTS:
                    time.sleep(0.5 * 2**attempt)
        else:
            raise UserError(f"cannot reach a Ray cluster at {self.address} ({_reason(failure)}): {REACH_HINT}")
        if answer.status_code in (401, 403):
            raise self._auth_error(answer.status_code)
        try:
            version = answer.json()["ray_version"] if answer.ok else None
        except (ValueError, KeyError, TypeError):
            version = None
        if version is None:
            raise UserError(
                f"{self.address} answers, but not as a Ray dashboard (HTTP {answer.status_code} for /api/version): "
                "give the dashboard's URL (port 8265 unless the cluster chose another)"
            )

    def _auth_error(self, status: int) -> UserError:
        if status == 401 or not self.headers:
            return UserError(
                f"the Ray cluster at {self.address} requires a token: set {self.token_env} to it (or "
                "RAY_AUTH_TOKEN_PATH to a file holding it); `ray get-auth-token` prints it where it is set up"
            )
        return UserError(
            f"the Ray cluster at {self.address} refused the token in {self.token_env}: set it to the cluster's token"
        )

    @contextlib.contextmanager
    def _translated(self, job_id: str | None = None) -> Iterator[None]:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except UserError:
            raise
        except AuthenticationError:
            raise self._auth_error(403 if self.headers else 401) from None
        except (requests.ConnectionError, ConnectionError) as exc:
            raise UserError(f"lost the Ray cluster at {self.address} ({_reason(exc)}): {REACH_HINT}") from None
        except (RuntimeError, ValueError, TypeError) as exc:
            text = redact.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            if job_id and "does not exist" in text:
                raise UserError(
                    f"no job {job_id} on the Ray cluster at {self.address}: `rnnfarm jobs list` shows its jobs"
                ) from None
            if "runtime_env" in text or "runtime env" in text:
                raise UserError(f"cluster.runtime_env: {text}") from None
            raise ClusterError(f"the Ray cluster at {self.address} failed the request: {text}") from None

    @cached_property
    def client(self):
        from ray.job_submission import JobSubmissionClient

        with exact_address(), self._translated():
            return JobSubmissionClient(self.address, headers=dict(self.headers))

    @cached_property
    def serve_client(self):
        """The cluster's Serve REST API (what `serve deploy` talks to), at the same dashboard."""
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        with exact_address(), self._translated():
            return ServeSubmissionClient(self.address, headers=dict(self.headers))

    def deploy_serve(self, config: dict[str, Any]) -> None:
        """Send a Serve config to the cluster, replacing the applications it serves."""
        with self._translated():
            self.serve_client.deploy_applications(config)

    def serve_status(self, app: str) -> tuple[str, str]:
        """An application's status on the cluster (``NOT_STARTED`` while it is unknown) and its message."""
        with self._translated():
            found = self.serve_client.get_serve_details().get("applications", {}).get(app)
        return (found["status"], found.get("message") or "") if found else ("NOT_STARTED", "")

    def delete_serve(self) -> None:
        """Remove every Serve application from the cluster."""
        with self._translated():
            self.serve_client.delete_applications()

    def info(self, job_id: str):
        with self._translated(job_id):
            return self.client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with self._translated(job_id):
            return redact.scrub(self.client.get_job_logs(job_id))

    def jobs(self) -> list:
        """rnnfarm's jobs on the cluster, oldest first."""
        with self._translated():
            found = self.client.list_jobs()
        ours = [j for j in found if (j.submission_id or "").startswith(PREFIX)]
        return sorted(ours, key=lambda j: j.start_time or 0)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; False when it had already ended."""
        with self._translated(job_id):
            return self.client.stop_job(job_id)

    def follow(self, job_id: str, out: Callable[[str], None]):
        """Stream the job's logs to ``out`` until it ends; its final details.

        The stream runs in a daemon thread while this one waits on it, so that ctrl-C (KeyboardInterrupt, here)
        leaves at once, whatever closing the stream's websocket would wait for."""
        import aiohttp

        broke: list[BaseException] = []

        def tail() -> None:
            async def chunks() -> None:
                async for chunk in self.client.tail_job_logs(job_id):
                    out(redact.scrub(chunk))

            try:
                asyncio.run(chunks())
            except BaseException as exc:  # handed to the waiting thread
                broke.append(exc)

        with self._translated(job_id):
            self.info(job_id)  # a job that does not exist is one line, not a broken stream
            streaming = threading.Thread(target=tail, name="rnnfarm-job-logs", daemon=True)
            streaming.start()
            while streaming.is_alive():
                streaming.join(0.2)
            if broke:
                if not isinstance(broke[0], RuntimeError | aiohttp.ClientError):
                    raise broke[0]
                log.get("rnnfarm.submit").warning(
                    "the log stream broke; waiting for the job to end", job=job_id, reason=redact.scrub(str(broke[0]))
                )
        return self.wait(job_id)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0):
        """The job's details once it has ended (or when ``timeout`` runs out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.info(job_id)
            if str(info.status) in TERMINAL or (deadline is not None and time.monotonic() > deadline):
                return info
            time.sleep(poll)


@dataclass(frozen=True)
class Submitted:
    job_id: str
    cluster: Cluster
    run_url: str


def forwarded_env(spec: JobSpec) -> dict[str, str]:
    """The values, here, of the variables ``cluster.forward_env`` names; only names are logged."""
    values = {name: os.environ[name] for name in spec.cluster.forward_env if os.environ.get(name)}
    unset = [name for name in spec.cluster.forward_env if name not in values]
    if spec.cluster.forward_env:
        log.get("rnnfarm.submit").info("forwarding variables", names=sorted(values), unset_here=unset)
    return values


def load_env_file(path: str | Path) -> None:
    """Set, in this process, the variables a submitted job carries (written by ``submit``)."""
    values = json.loads(Path(path).read_text())
    for name, value in values.items():
        if looks_secret(name):
            redact.remember(value)
    os.environ.update(values)
    redact.remember_environment()


def source_packages() -> list[str]:
    """The folders of the rnnfarm packages this process runs."""
    import rnnfarm
    import rnnfarm_plugins

    return [str(Path(module.__file__).parent) for module in (rnnfarm, rnnfarm_plugins)]


def runtime_env(spec: JobSpec, folder: str) -> dict[str, Any]:
    """The job's runtime env: the spec's additions, its working_dir, and the code where asked."""
    env = copy.deepcopy(spec.cluster.runtime_env)
    env["working_dir"] = folder
    env["env_vars"] = {"RNNFARM_LOG_FORMAT": log.log_format(), **env.get("env_vars", {})}
    if spec.cluster.code == "source":
        env["py_modules"] = [*env.get("py_modules", []), *source_packages()]
        env["excludes"] = [*env.get("excludes", []), "__pycache__"]
    return env


def seen_by_nodes(field: str, url: str, spec: JobSpec) -> str:
    """``url`` as the cluster's nodes read it (a local path made absolute); a folder on this machine is refused
    unless ``cluster.storage_shared`` says every node mounts it at the same path."""
    url = normalize_url(url)
    if is_local(url) and not spec.cluster.storage_shared:
        raise UserError(
            f"{field} {url}: a folder on this machine, which a cluster's nodes do not see: use object storage "
            "(s3://, gs://, az://), or set cluster.storage_shared: true for a folder every node mounts at this path"
        )
    return url


def cluster_spec(spec: JobSpec) -> JobSpec:
    """The spec as the cluster's driver reads it: the storage, and the parent model where it names one, each
    refused where the nodes do not see it (``seen_by_nodes``), local paths made absolute."""

    def seen(field: str, url: str | None) -> str | None:
        return None if url is None else seen_by_nodes(field, url, spec)

    train = spec.train.model_copy(update={"init_from": seen("train.init_from", spec.train.init_from)})
    corpus = spec.corpus.model_copy(update={"vocab_from": seen("corpus.vocab_from", spec.corpus.vocab_from)})
    return spec.model_copy(
        update={"storage": seen_by_nodes("storage", spec.storage, spec), "train": train, "corpus": corpus}
    )


def submit(spec: JobSpec, name: str | None = None) -> Submitted:
    """Submit the job to the cluster at ``spec.cluster.address``; returns at once with its id."""
    spec = cluster_spec(spec)
    storage = spec.storage
    cluster = Cluster.at(spec.cluster.address, spec.cluster.token_env)
    run = name or spec.name
    command = ["python", "-m", "rnnfarm", "run", SPEC_FILE, "--address", "auto"]
    with tempfile.TemporaryDirectory(prefix="rnnfarm-job-") as folder:
        (Path(folder) / SPEC_FILE).write_text(dump(spec))
        forwarded = forwarded_env(spec)
        if forwarded:
            env_file = Path(folder) / ENV_FILE
            env_file.touch(mode=0o600)
            env_file.write_text(json.dumps(forwarded))
            command += ["--env-file", ENV_FILE]
        if name:
            command += ["--name", name]
        with cluster._translated():
            job_id = cluster.client.submit_job(
                entrypoint=shlex.join(command),
                submission_id=f"{PREFIX}{run}-{secrets.token_hex(4)}",
                runtime_env=runtime_env(spec, folder),
                metadata={"rnnfarm_run": run, "rnnfarm_storage": redact.scrub(storage)},
                entrypoint_num_cpus=spec.cluster.entrypoint_cpus or None,
                entrypoint_resources=dict(spec.cluster.entrypoint_resources) or None,
            )
    return Submitted(job_id, cluster, posixpath.join(redact.scrub(storage), RUNS, run))


def exit_code(info) -> int:
    """0 for a job that succeeded, 2 for one whose driver refused its input, 1 otherwise."""
    status = str(info.status)
    if status == "SUCCEEDED":
        return 0
    return 2 if status == "FAILED" and info.driver_exit_code == 2 else 1


def summary(info) -> dict[str, Any]:
    """What ``rnnfarm jobs status`` shows of a job: never its runtime env, which may hold forwarded values."""

    def when(ms: int | None) -> str | None:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else None

    metadata = info.metadata or {}
    lines = [line.strip() for line in (info.message or "").splitlines() if line.strip()]
    said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    message = said[-1] if said else (lines[0] if lines else None)  # the driver's own error line, where it wrote one
    return {
        "job": info.submission_id,
        "status": str(info.status),
        "message": redact.scrub(message) if message else None,
        "run": metadata.get("rnnfarm_run"),
        "storage": metadata.get("rnnfarm_storage"),
        "started": when(info.start_time),
        "ended": when(info.end_time),
        "driver_exit_code": info.driver_exit_code,
        "entrypoint": info.entrypoint,
    }
