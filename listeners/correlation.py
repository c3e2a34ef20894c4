"""Request correlation and the outermost error boundary of the listener app.

Every request gets a request id: the caller's ``X-Request-Id`` when it is a
plausible one, otherwise a fresh one. It is bound to every log line of the
request, stored on what the request creates, and returned in
``X-Request-Id``. HTTP errors raised by routing become JSON error bodies; an
unexpected exception becomes a logged 500, which no client input should
ever reach.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from haven.listeners.answers import Rejection

HEADER: Final = "X-Request-Id"
_REQUEST_ID = web.RequestKey("haven.request_id", str)
_PLAUSIBLE = re.compile(r"[A-Za-z0-9._:-]{8,128}")


def request_id(request: web.Request) -> str:
    """Return the request id assigned by :func:`middleware`."""
    assigned: str = request.get(_REQUEST_ID, "")
    return assigned


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id, bind it to logs, and render every error as JSON."""
    incoming = request.headers.get(HEADER, "")
    assigned = incoming if _PLAUSIBLE.fullmatch(incoming) else uuid.uuid4().hex
    request[_REQUEST_ID] = assigned

    with logger.contextualize(request_id=assigned):
        response = await _answer(request, handler)
    response.headers[HEADER] = assigned
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _http_error(exc)
    except Exception:
        logger.exception(
            "request failed with an unexpected error; answered 500: check the traceback"
        )
        return (
            Rejection(500, "internal_error", "the listener failed unexpectedly")
            .to_answer()
            .to_response()
        )


def _http_error(exc: web.HTTPException) -> web.StreamResponse:
    if exc.status_code < 400:
        return exc
    code = (exc.reason or "error").lower().replace(" ", "_")
    answer = Rejection(exc.status_code, code, exc.reason or "error").to_answer()
    response = answer.to_response()
    for name in ("Allow", "Retry-After"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response
