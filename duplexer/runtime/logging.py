"""structlog JSON logging; actors bind session and turn ids to every line."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_configured = False


class _CurrentStderr:
    """Writes to whatever sys.stderr is now, so a replaced-then-closed stream is never kept."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "WARNING", stream: TextIO | None = None) -> None:
    """JSON lines to stderr (or ``stream``) at ``level``; safe to call more than once."""
    global _configured
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or _CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` key-values (session_id, actor, turn_id ...)."""
    if not _configured:
        configure_logging()
    return structlog.get_logger().bind(**bound)
