"""structlog set-up: readable lines on a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from .redact import log_processor

FORMAT_ENV = "RNNFARM_LOG_FORMAT"


def log_format() -> str:
    """``console`` on a TTY, ``json`` elsewhere; ``RNNFARM_LOG_FORMAT`` overrides."""
    chosen = os.environ.get(FORMAT_ENV)
    if chosen in ("console", "json"):
        return chosen
    return "console" if sys.stderr.isatty() else "json"


def configure(fmt: str | None = None, level: int = logging.INFO) -> None:
    fmt = fmt or log_format()
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            log_processor,  # no credential reaches a log line
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name) if name else structlog.get_logger()
