"""Counting every error response an aiohttp server sends, by HTTP status, including aiohttp's own.

The count hooks aiohttp's access log, the one place every response passes, so it also sees the
400s aiohttp's HTTP parser sends for a malformed request line or header, which never reach a
route or a middleware, and the 500 of a handler that raised.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from duplexer.runtime.error_counts import ErrorCounts

FIRST_ERROR_STATUS = 400


def error_counting(counts: ErrorCounts) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` that count each response of status 400 or more
    into ``counts`` under its status (``"400"``, ``"413"``, ...); they replace ``access_log=None``."""

    class CountingAccessLogger(AbstractAccessLogger):
        def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
            if response.status >= FIRST_ERROR_STATUS:
                counts.count(str(response.status))

    return {"access_log_class": CountingAccessLogger, "access_log": logging.getLogger("aiohttp.access")}
