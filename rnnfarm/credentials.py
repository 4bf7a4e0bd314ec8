"""Credentials in storage options, sealed: they reach Ray workers in memory and are never pickled.

Ray Tune writes what it pickles (a trial's storage, its trainable's arguments) to the run's storage and
to Ray's session folder, and Ray passes task arguments through its object store. So a credential inside
storage options is held in a :class:`Sealed` value: pickled, it is only a random handle. The process
that read the credential (the driver) deposits the values with an actor of its Ray job (``deposit``),
which lives in memory as long as the driver does; a worker that unpickles a sealed value asks that actor
for it the first time it opens the storage. Credentials that no option names (``AWS_*`` variables, a
profile, a role) stay with the client library's own chain, on each node.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from . import redact
from .errors import UserError

_VAULT = "rnnfarm-credentials-{job}"
_values: dict[str, Any] = {}  # handle -> value, in this process
_handles: dict[str, str] = {}  # the value as JSON -> its handle, so that a value read again is sealed once
_pending: set[str] = set()  # handles this process sealed and has not deposited yet
_held: dict[tuple[str, str], Any] = {}  # the vault actor's handle, by name and Ray: it lives while this does


class Sealed:
    """A credential value that pickles as a handle; ``value`` opens it (from the driver's actor in a worker)."""

    __slots__ = ("handle",)

    def __init__(self, handle: str) -> None:
        self.handle = handle

    @property
    def value(self) -> Any:
        if self.handle not in _values:
            _values[self.handle] = _fetch(self.handle)
            redact.remember_options({"secret": _values[self.handle]})
        return _values[self.handle]

    def __reduce__(self) -> tuple:
        return Sealed, (self.handle,)

    def __copy__(self) -> Sealed:
        return self

    def __deepcopy__(self, memo: dict) -> Sealed:
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.handle == self.handle

    def __hash__(self) -> int:
        return hash(self.handle)

    def __repr__(self) -> str:
        return redact.MASK


def seal(value: Any) -> Sealed:
    key = json.dumps(value, sort_keys=True, default=repr)
    if key not in _handles:
        handle = secrets.token_hex(16)
        _handles[key], _values[handle] = handle, value
        _pending.add(handle)
    return Sealed(_handles[key])


def sealed(options: Any) -> Any:
    """A copy of (nested) storage options with every credential sealed (``redact.is_secret_key`` names them)."""
    if isinstance(options, dict):
        return {
            k: seal(v) if redact.is_secret_key(str(k)) and v and not isinstance(v, Sealed) else sealed(v)
            for k, v in options.items()
        }
    if isinstance(options, list):
        return [sealed(v) for v in options]
    return options


def opened(options: Any) -> Any:
    """A copy of (nested) storage options with the credentials' values, for the client library."""
    if isinstance(options, Sealed):
        return options.value
    if isinstance(options, dict):
        return {k: opened(v) for k, v in options.items()}
    if isinstance(options, list):
        return [opened(v) for v in options]
    return options


class _Vault:
    """The Ray job's credentials, by handle: an actor's memory, never written."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def put(self, values: dict[str, Any]) -> None:
        self.values.update(values)

    def get(self, handle: str) -> Any:
        return self.values.get(handle)


def _name() -> str:
    import ray

    return _VAULT.format(job=ray.get_runtime_context().get_job_id())


def deposit() -> None:
    """Hand the credentials this process sealed to its Ray job's vault (made on first use), if Ray is up.

    Called before anything is pickled for Ray: when Ray starts, and as a sweep or a training starts. A Ray
    started again (in the same process) gets a vault of its own, with every value.
    """
    import ray

    if not _values or not ray.is_initialized():
        return
    where = (_name(), ray.get_runtime_context().gcs_address)
    if where not in _held:
        _held.clear()
        _held[where] = ray.remote(num_cpus=0)(_Vault).options(name=where[0], get_if_exists=True).remote()
        _pending.update(_values)
    if _pending:
        ray.get(_held[where].put.remote({handle: _values[handle] for handle in _pending}))
        _pending.clear()


def _fetch(handle: str) -> Any:
    import ray

    value = None
    if ray.is_initialized():
        try:
            value = ray.get(ray.get_actor(_name()).get.remote(handle))
        except ValueError:  # no such actor: the driver that held the credentials is gone
            value = None
    if value is None:
        raise UserError(
            "storage credentials given in storage options are held in the memory of the process that started "
            "the run, which this process cannot reach: run it again from where the credentials are"
        )
    return value
