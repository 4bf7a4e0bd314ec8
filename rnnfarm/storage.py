"""Storage on any fsspec URL: a Store names a folder or object; writes are atomic.

Readers never see half an object: a local write goes to a temporary name in the same folder and is
renamed into place (listings skip such names); an object-store write is one PUT (or one completed
multipart upload) of a file that was finished locally first.

Storage options, highest precedence first: the options given (a spec's ``storage_options``), then
fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>`` / ``FSSPEC_<PROTOCOL>`` environment variables, then the
client library's own chain (for S3: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``
and friends, ``AWS_PROFILE`` and ``~/.aws``, an instance role). The endpoint is resolved here, so
Ray workers elsewhere get the same one; credentials found by the chain stay with the chain. Credentials
among the options are sealed (``rnnfarm.credentials``): a pickled Store, or its pyarrow filesystem, holds
none, and a Ray worker gets them from the driver's memory.

Failures that a user can fix (an unreachable endpoint, refused credentials, a missing bucket) become
one-line ``UserError``s with the credentials scrubbed out.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import hashlib
import json
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import fsspec
import fsspec.config
import pyarrow.fs

from . import credentials, redact
from .errors import UserError

OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl")
# S3 defaults the options can override: bounded retries (botocore's "standard" mode retries throttling,
# 5xx and connection errors with backoff, never a refused signature) and fresh listings, since other
# processes (Ray workers) write the same prefixes.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"retries": {"mode": "standard", "max_attempts": 3}, "connect_timeout": 5, "read_timeout": 60},
    "use_listings_cache": False,
}
_TMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")
PROBE_BYTES = 64 << 10  # written (to an unnamed file) and dropped by a local storage's write check
# Local write failures a user can fix, and how.
_LOCAL_HINTS = {
    errno.ENOSPC: "free some space, or choose a storage folder on another disk",
    errno.EDQUOT: "free some space, or choose a storage folder on another disk",
    errno.EROFS: "choose a storage folder on a disk that can be written",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the storage path",
}


def normalize_url(url: str) -> str:
    """Local paths (and file:// URLs) become absolute paths; other URLs are kept as they are."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url or "::" in url:
        return url.rstrip("/")
    return str(Path(url).expanduser().resolve())


def is_local(url: str) -> bool:
    return "://" not in url and "::" not in url


def protocol_of(url: str) -> str:
    """The protocol that holds the data (the last one of a ``::`` chain); ``file`` for a local path."""
    target = url.rsplit("::", 1)[-1]
    return fsspec.core.split_protocol(target)[0] or "file"


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_options(url: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The storage options for ``url``: given > FSSPEC_* environment > client defaults (see module doc)."""
    protocol = protocol_of(url)
    from_env: dict[str, dict[str, Any]] = {}
    fsspec.config.set_conf_env(from_env)
    options = _merged(fsspec.config.conf.get(protocol, {}), from_env.get(protocol, {}))
    options = _merged(options, dict(given or {}))
    if protocol in ("s3", "s3a"):
        options = _merged(S3_DEFAULTS, options)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
            options["endpoint_url"] = endpoint
    redact.remember_environment()
    redact.remember_options(options)
    return credentials.sealed(options)


def endpoint_of(store: Store) -> str:
    """Where a store's requests go, for messages (never with credentials)."""
    options = store.options
    endpoint = options.get("endpoint_url") or options.get("client_kwargs", {}).get("endpoint_url")
    if endpoint:
        return redact.scrub(str(endpoint))
    return {"s3": "AWS S3", "s3a": "AWS S3", "gs": "Google Cloud Storage", "gcs": "Google Cloud Storage"}.get(
        protocol_of(store.url), "the storage service"
    )


# Where each kind of object store takes its endpoint and credentials from, for error messages.
_HINTS = {
    "s3": (
        "storage_options endpoint_url, or AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE",
    ),
    "gs": ("storage_options endpoint_url", "GOOGLE_APPLICATION_CREDENTIALS or storage_options token"),
    "az": ("storage_options account_name", "AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY or storage_options"),
}
_HINTS |= {"s3a": _HINTS["s3"], "gcs": _HINTS["gs"], "abfs": _HINTS["az"], "abfss": _HINTS["az"]}


def _names(exc: BaseException) -> set[str]:
    """Class names of an exception and of the exceptions it came from (no optional import needed)."""
    names: set[str] = set()
    seen = exc
    while seen is not None and len(names) < 64:
        names |= {cls.__name__ for cls in type(seen).__mro__}
        code = getattr(seen, "response", {}) or {}
        if isinstance(code, dict) and code.get("Error", {}).get("Code"):
            names.add(str(code["Error"]["Code"]))
        seen = seen.__cause__ or seen.__context__
    return names


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact.scrub(text)


def storage_error(exc: BaseException, store: Store) -> UserError | None:
    """A one-line UserError for a failure the user can fix, or None to let ``exc`` through."""
    names = _names(exc)
    where = redact.scrub(store.url)
    if is_local(store.url):
        if isinstance(exc, PermissionError):
            return UserError(f"{where}: permission denied: choose a storage folder this user can write")
        if isinstance(exc, OSError) and exc.errno in _LOCAL_HINTS:
            return UserError(f"storage {where}: {os.strerror(exc.errno)}: {_LOCAL_HINTS[exc.errno]}")
        return None
    endpoint_hint, credentials_hint = _HINTS.get(protocol_of(store.url), ("storage_options", "storage_options"))
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError"}:
        return UserError(
            f"storage {where}: cannot reach {endpoint_of(store)} ({_reason(exc)}): check that the server is up "
            f"and the endpoint ({endpoint_hint}) is right"
        )
    if names & {"ProfileNotFound"}:
        return UserError(f"storage {where}: {_reason(exc)}: check the profile's name (AWS_PROFILE or storage_options)")
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return UserError(
            f"storage {where}: no credentials found: set {credentials_hint} (or the spec's storage_options)"
        )
    if names & {"NoSuchBucket"} or (isinstance(exc, FileNotFoundError) and "bucket does not exist" in str(exc)):
        bucket = store.path.split("/", 1)[0]
        return UserError(f"storage {where}: bucket {bucket!r} does not exist: create it, or fix the storage URL")
    if isinstance(exc, PermissionError) or names & {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}:
        return UserError(
            f"storage {where}: access denied by {endpoint_of(store)} ({_reason(exc)}): check the credentials "
            f"({credentials_hint}, or the spec's storage_options) and their permissions"
        )
    return None


def _translated(method):
    """Storage failures a user can fix leave a Store method as one-line UserErrors."""

    @functools.wraps(method)
    def wrapper(self: Store, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except UserError:
            raise
        except Exception as exc:
            error = storage_error(exc, self)
            if error is None:
                raise
            raise error from None

    return wrapper


@dataclass(frozen=True)
class Store:
    """A location on storage (folder or object), with the options its filesystem needs."""

    url: str
    options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def at(cls, url: str, options: dict[str, Any] | None = None) -> Store:
        """The store at ``url``, with ``options`` completed from the environment (see the module doc)."""
        url = normalize_url(url)
        return cls(url, resolve_options(url, options))

    def __reduce__(self) -> tuple:
        return Store, (self.url, self.options)  # not the filesystem it made: that pickles with the credentials

    def __truediv__(self, part: str) -> Store:
        child = Store(posixpath.join(self.url, part), self.options)
        if "_fs_path" in self.__dict__ and "::" not in child.url:
            fs = self.fs  # shared: making a filesystem for every object costs about a millisecond
            child.__dict__["_fs_path"] = (fs, fs._strip_protocol(child.url))
        return child

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)

    @property
    def parent(self) -> Store:
        return Store(posixpath.dirname(self.url), self.options)

    @cached_property
    def _fs_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        try:
            return fsspec.core.url_to_fs(self.url, **credentials.opened(self.options))
        except (ImportError, ValueError) as exc:
            raise UserError(f"storage {self.url}: {exc}") from None

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_path[0]

    @property
    def path(self) -> str:
        return self._fs_path[1]

    @_translated
    def check(self, write: bool = False) -> None:
        """Fail early, in one line, when the storage cannot be reached, refuses the credentials, or lacks
        the bucket; with ``write``, also when a local path cannot take writes (a read-only or full disk,
        a file where a folder should be)."""
        if is_local(self.url):
            if write:
                self._probe_local()
            return
        if protocol_of(self.url) not in OBJECT_STORES:
            return
        bucket = self.path.split("/", 1)[0]
        try:
            self.fs.info(bucket)
        except FileNotFoundError:
            raise UserError(
                f"storage {redact.scrub(self.url)}: bucket {bucket!r} does not exist: create it, or fix the storage URL"
            ) from None

    def _probe_local(self) -> None:
        """Write a little to an unnamed file in the nearest existing folder of this path, and drop it."""
        folder = Path(self.url)
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())

    @_translated
    def exists(self) -> bool:
        return self.fs.exists(self.path)

    @_translated
    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    @_translated
    def open(self, mode: str = "rb") -> IO:
        return self.fs.open(self.path, mode)

    @_translated
    def list(self) -> list[Store]:
        """Direct children, sorted by name; empty when the folder does not exist. Objects still being
        written (a local write's temporary name) are not listed."""
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        names = (posixpath.basename(e.rstrip("/")) for e in sorted(entries))
        return [self / name for name in names if not _TMP_NAME.match(name)]

    @_translated
    def sizes(self) -> dict[str, int]:
        """The size of each object directly in this folder, by name, as the store lists them now."""
        try:
            entries = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            return {}
        return {posixpath.basename(e["name"].rstrip("/")): int(e["size"]) for e in entries if e["type"] == "file"}

    @_translated
    def size(self) -> int:
        return int(self.fs.size(self.path))

    @_translated
    def remove(self) -> None:
        """Delete this object; nothing happens when it is not there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)

    def write_bytes(self, data: bytes) -> None:
        with self.open_atomic() as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, obj: Any) -> None:
        self.write_bytes((json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    @contextlib.contextmanager
    def open_atomic(self) -> Iterator[IO[bytes]]:
        """A file to write; it appears at this location, whole, only when the block exits cleanly.

        A local disk that is full or read-only (or a file where a folder should be) is a one-line UserError.
        """
        if is_local(self.url):
            try:
                with self._local_atomic() as f:
                    yield f
            except OSError as exc:
                error = storage_error(exc, self)
                if error is None:
                    raise
                raise error from None
        else:
            with tempfile.NamedTemporaryFile(prefix="rnnfarm-upload-") as f:
                yield f
                f.flush()
                self._put(f.name)

    @contextlib.contextmanager
    def _local_atomic(self) -> Iterator[IO[bytes]]:
        folder = os.path.dirname(self.url)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{self.name}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.url)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @_translated
    def _put(self, local: str) -> None:
        self.fs.put_file(local, self.path)

    def upload(self, local: str | Path) -> None:
        """Copy a local file or folder here; each file lands whole."""
        local = Path(local)
        if local.is_dir():
            for item in sorted(local.rglob("*")):
                if item.is_file():
                    (self / item.relative_to(local).as_posix()).upload(item)
            return
        with self.open_atomic() as out, open(local, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)

    @_translated
    def download_file(self, local: str | Path) -> None:
        """Copy this object (not a folder) to a local path, in one request."""
        self.fs.get_file(self.path, str(local))

    @_translated
    def download(self, local: str | Path) -> None:
        """Copy this file or folder to a local path."""
        local = Path(local)
        if self.fs.isdir(self.path):
            for child in self.list():
                child.download(local / child.name)
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self.path, str(local))

    def pyarrow(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """The same location as a pyarrow filesystem and path (what Ray Train persists through).

        Remote storage goes through pyarrow's fsspec handler over this store's own filesystem, so Ray's
        checkpoints use exactly the client, endpoint, credential chain and retries everything else uses.
        """
        if is_local(self.url):
            return pyarrow.fs.LocalFileSystem(), self.url
        return pyarrow.fs.PyFileSystem(_Handler(self)), self.path


class _Handler(pyarrow.fs.FSSpecHandler):
    """pyarrow's handler over a Store's filesystem that pickles as the Store: an fsspec filesystem pickles
    with its options, credentials included (Ray Tune keeps the experiment's filesystem in its state)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.store.fs

    def __reduce__(self) -> tuple:
        return _Handler, (self.store,)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(path: str | Path, expected: str, what: str) -> None:
    """Refuse a local file whose content is not what its checksum list says."""
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(
            f"{what}: sha256 {actual[:12]}... differs from the recorded {expected[:12]}...: "
            "the file is corrupt or was replaced while being read; fetch it again"
        )


def text_file(source: str, flag: str) -> str:
    """The whole text of a UTF-8 file a user named with ``flag`` (a path or any storage URL)."""
    store = Store.at(source)
    if not store.exists():
        raise UserError(f"{flag} {source}: no such file: give a UTF-8 text file")
    try:
        return store.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{flag} {source}: not UTF-8 text") from None
    except IsADirectoryError:
        raise UserError(f"{flag} {source}: a folder, not a text file") from None
