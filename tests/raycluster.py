"""A real two-node Ray cluster on loopback for the tests, with token authentication on.

Each node is a ``ray start --block`` process of this venv with its own temp dir and ports, the head
with the jobs server (ray[default]). Ray rewrites a node address of 127.0.0.1 to the machine's network
address, so the nodes take 127.0.0.2 and 127.0.0.3: loopback still, and two distinct node addresses.
The dashboard listens on 127.0.0.1. ``stop`` ends exactly the processes the two ``ray start`` commands
started, found through /proc (never ``ray stop``, which ends every Ray on the machine): SIGTERM to each,
SIGKILL to any left after 10 s; then it checks that none is left, nor any process naming their temp dirs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from rnnfarm.launch.submit import exact_address
from tests.s3local import free_ports

HEAD_IP, WORKER_IP, DASHBOARD_HOST = "127.0.0.2", "127.0.0.3", "127.0.0.1"
# Inherited settings that would point the nodes at another Ray (an embedded one in the test process).
NOT_INHERITED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _processes() -> dict[int, tuple[int, str]]:
    """Every live process on the machine (zombies left out): pid -> (parent pid, start time), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # state, parent, ..., start time (the 20th)
            if fields[0] != "Z":
                found[int(entry)] = (int(fields[1]), fields[19])
    return found


def descendants(pid: int) -> set[tuple[int, str]]:
    """A process and everything it started, as (pid, start time) so that a reused pid is never mistaken."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current in table:
            found.add((current, table[current][1]))
            todo.extend(children.get(current, []))
    return found


def alive(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    table = _processes()
    return {(pid, started) for pid, started in processes if table.get(pid, (None, None))[1] == started}


def mentioning(text: str) -> set[tuple[int, str]]:
    """Live processes whose command line holds ``text`` (a node's temp dir: its Ray processes name it)."""
    table = _processes()
    found = set()
    for pid, (_, started) in table.items():
        try:
            if text in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                found.add((pid, started))
        except OSError:
            continue
    return found


@dataclass
class LocalCluster:
    dashboard: str  # http://127.0.0.1:PORT, where jobs are submitted
    gcs: str  # 127.0.0.2:PORT, where nodes join
    token: str
    folder: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def state(self, resource: str, *filters: tuple[str, str, str]) -> list[dict]:
        """Ray's state API (nodes, actors, placement_groups...), with details."""
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        with exact_address():
            client = StateApiClient(self.dashboard, headers={"Content-Type": "application/json", **self.headers})
        options = ListApiOptions(detail=True, filters=list(filters), limit=10_000)
        found = client.list(StateResource(resource), options, raise_on_missing_output=False)
        return [dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item) for item in found]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(
            f"{p.name}: " + " | ".join(p.read_text(errors="replace").splitlines()[-lines:])
            for p in sorted(self.folder.glob("*.log"))
        )


def _node_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED and not k.startswith("AWS_")}
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `python` is this venv's
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
        "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    }


def _ray_start(folder: Path, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    ray = str(Path(sys.executable).parent / "ray")
    with open(folder / f"{name}.log", "wb") as out:
        return subprocess.Popen(
            [ray, "start", "--block", "--disable-usage-stats", f"--temp-dir={folder / name}", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(condition, timeout: float, cluster: LocalCluster, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # not up yet: refused connections, a dashboard still loading its modules
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in cluster.nodes):
            tail = cluster.log_tail()
            stop(cluster)
            raise RuntimeError(f"the test Ray cluster did not {what}:\n{tail}")
        time.sleep(0.5)


def start(cpus_per_node: int = 1, timeout: float = 120) -> LocalCluster:
    """Start the head (127.0.0.2, dashboard on 127.0.0.1) and one more node (127.0.0.3)."""
    folder = Path(tempfile.mkdtemp(prefix="rf-ray-", dir="/tmp"))  # short: Ray's socket paths must stay short
    token = secrets.token_hex(24)
    env = _node_env(token)
    ports = iter(free_ports(15))
    common = [f"--num-cpus={cpus_per_node}", "--num-gpus=0", "--object-store-memory=200000000"]

    def node_ports() -> list[str]:
        names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port")
        names += ("runtime-env-agent-port", "node-manager-port", "object-manager-port")
        return [f"--{name}={next(ports)}" for name in names]

    gcs_port, dashboard_port = next(ports), next(ports)
    cluster = LocalCluster(f"http://{DASHBOARD_HOST}:{dashboard_port}", f"{HEAD_IP}:{gcs_port}", token, folder)
    head = [
        "--head",
        f"--node-ip-address={HEAD_IP}",
        f"--port={gcs_port}",
        f"--dashboard-host={DASHBOARD_HOST}",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={next(ports)}",
        *common,
        *node_ports(),
    ]
    cluster.nodes.append(_ray_start(folder, "head", head, env))
    version = f"{cluster.dashboard}/api/version"
    _wait(lambda: requests.get(version, headers=cluster.headers, timeout=2).ok, timeout, cluster, "start its head")
    worker = [f"--address={cluster.gcs}", f"--node-ip-address={WORKER_IP}", *common, *node_ports()]
    cluster.nodes.append(_ray_start(folder, "worker", worker, env))
    _wait(lambda: len(cluster.alive_nodes()) == 2, timeout, cluster, "join its second node")
    return cluster


def stop(cluster: LocalCluster) -> None:
    """End the nodes and every process they started; raise if any is left after that."""
    started = set().union(*(descendants(node.pid) for node in cluster.nodes))

    def ended_within(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while alive(started) and time.monotonic() < deadline:
            for node in cluster.nodes:
                node.poll()  # reaps a node's `ray start` once it has exited
            time.sleep(0.25)
        return not alive(started)

    def send(signum: int) -> None:
        for pid, _ in alive(started):
            started.update(descendants(pid))  # what they started since
        for pid, _ in alive(started):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signum)

    send(signal.SIGTERM)  # a graceful end first, to every process at once
    if not ended_within(10):
        send(signal.SIGKILL)
        ended_within(5)
    for node in cluster.nodes:
        node.wait(10)
    left = alive(started) | mentioning(str(cluster.folder))
    shutil.rmtree(cluster.folder, ignore_errors=True)
    if left:
        raise RuntimeError(f"processes of the test Ray cluster outlived it: {sorted(pid for pid, _ in left)}")
