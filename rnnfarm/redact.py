"""Keeping credentials out of everything rnnfarm writes or prints: logs, echoed specs, run records, errors.

Two nets: ``redact`` masks the values of keys that name a credential (``secret``, ``token``, ``key``...)
in any nested mapping, and ``scrub`` replaces every credential value rnnfarm has seen (in storage
options or in the environment) wherever it appears inside a string, such as a library's error message.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"

# Option names (lower case) whose values are credentials, across s3fs, gcsfs, adlfs and fsspec's http.
SECRET_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "access_key",
        "secret_key",
        "session_token",
        "security_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "account_key",
        "sas_token",
        "connection_string",
        "client_secret",
        "credential",
        "credentials",
        "private_key",
        "authorization",
        "auth",
    }
)
SECRET_PARTS = ("secret", "password", "credential", "private_key", "account_key")

# Environment variables whose values are credentials, scrubbed from any text rnnfarm prints.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
)
MIN_SECRET = 6  # shorter values are not scrubbed from text: they would mangle ordinary words

_known: set[str] = set()
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<password>[^/@\s]*)@")


def is_secret_key(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_KEYS or any(part in lowered for part in SECRET_PARTS)


def remember(value: Any) -> None:
    """Note a credential value so that ``scrub`` removes it from any text."""
    if isinstance(value, str) and len(value) >= MIN_SECRET:
        _known.add(value)


def remember_options(options: Any) -> None:
    """Note every credential value inside (nested) storage options."""
    if isinstance(options, dict):
        for name, value in options.items():
            if isinstance(value, dict | list):
                remember_options(value)
            elif is_secret_key(str(name)):
                remember(value)
    elif isinstance(options, list):
        for item in options:
            remember_options(item)


def remember_environment() -> None:
    for name in SECRET_ENV:
        remember(os.environ.get(name))
    for name, value in os.environ.items():
        if name.startswith("FSSPEC_") and is_secret_key(name.split("_", 2)[-1]):
            remember(value)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with credential values masked: by key name in mappings, by value in strings."""
    if isinstance(obj, dict):
        return {
            k: MASK if is_secret_key(str(k)) and not isinstance(v, dict | list) and v else redact(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return scrub(obj)
    return obj


def scrub(text: str) -> str:
    """``text`` with every known credential value and any password in a URL replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def log_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: no credential reaches a log line."""
    return redact(event_dict)


remember_environment()
