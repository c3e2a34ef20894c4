"""The listener's access log: one structured line per answered request.

aiohttp's own access logger formats a text line from a format string and
hands it to ``logging``, whose record haven then carries into loguru. This
one writes straight to loguru with the fields an operator filters on —
method, path, status, size, duration, client address and the request id —
at a third of the cost, which matters on the webhook path.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from loguru import logger

from haven.listeners import correlation

LIBRARY = "aiohttp.access"


class AccessLog(AbstractAccessLogger):
    """Log every answered request at INFO as ``METHOD path status``."""

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        logger.bind(
            library=LIBRARY,
            method=request.method,
            path=request.path,
            status_code=response.status,
            body_bytes=response.body_length,
            duration_ms=round(time * 1000, 2),
            remote_addr=request.remote,
            user_agent=request.headers.get("User-Agent"),
            request_id=correlation.request_id(request) or None,  # type: ignore[arg-type]
        ).info(f"{request.method} {request.path} {response.status}")

    @property
    def enabled(self) -> bool:
        return True
