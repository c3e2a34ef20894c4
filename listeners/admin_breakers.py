"""Admin health: the daemons' circuit breakers, and closing one by hand.

Breakers run inside the daemons; each daemon reports them to PostgreSQL
every few seconds (:mod:`haven.breaker_states`). A reset is a request every
live daemon running that breaker applies once; the answer waits briefly
for them to confirm, and says 202 when some have not yet.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from haven import breaker_states, db
from haven.breaker_states import Reported
from haven.listeners import admin_requests as req
from haven.listeners import correlation

RESET_WAIT_S = 5.0
_NAME = re.compile(r"[a-z0-9_.-]{1,64}")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/health/breakers", list_breakers, name="breakers.list"),
        web.post("/health/breakers/{name}/reset", reset_breaker, name="breakers.reset"),
    ]


def breaker_json(row: Reported) -> dict[str, Any]:
    return {
        "name": row.name,
        "process": row.process,
        "state": row.state,
        "consecutive_failures": row.consecutive_failures,
        "opened_for_s": row.opened_for_s,
        "retry_in_s": row.retry_in_s,
        "reported_at": row.reported_at.isoformat(),
        "stale": row.is_stale,
    }


async def list_breakers(request: web.Request) -> web.Response:
    """List every breaker each daemon reported, stale ones flagged."""
    req.Query(request, ()).done()
    async with db.translate_errors(), req.context(request).pool.acquire() as conn:
        rows = await breaker_states.reported(conn)
    return req.respond({"breakers": [breaker_json(row) for row in rows]})


async def reset_breaker(request: web.Request) -> web.Response:
    """Close breaker ``name`` in every live daemon; 404 when none runs it."""
    (await req.read_body(request, ())).done()
    name = request.match_info["name"]
    if not _NAME.fullmatch(name):
        raise req.invalid("name", "expected 1 to 64 of a-z, 0-9, '_', '.', '-'")
    pool = req.context(request).pool

    # The request row names who asked; the audit row follows the answer.
    async with db.transaction(pool) as connection:
        reported = await breaker_states.reported(connection, name)
        if all(row.is_stale for row in reported):
            raise req.not_found("breaker reported by a running daemon named", name)
        reset_id = await breaker_states.request_reset(
            connection,
            name,
            requested_by=req.actor(request),
            request_id=correlation.request_id(request),
        )

    rows = await breaker_states.wait_applied(
        pool, name, reset_id, timeout_s=RESET_WAIT_S
    )
    applied = all(row.reset_id >= reset_id for row in rows)
    req.note_audit(request, reset_id=reset_id, applied=applied)
    body = {
        "reset_id": reset_id,
        "applied": applied,
        "breakers": [breaker_json(row) for row in rows],
    }
    return req.respond(body, status=200 if applied else 202)
