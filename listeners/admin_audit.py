"""Admin audit log: ``GET /audit``, who did what and when, newest first."""

from __future__ import annotations

from aiohttp import web

from haven import audit
from haven.listeners import admin_requests as req


def routes() -> list[web.RouteDef]:
    return [web.get("/audit", list_audit, name="audit.list")]


async def list_audit(request: web.Request) -> web.Response:
    """List audit rows, filtered by actor, action prefix or subject, paged."""
    query = req.Query(request, ("actor", "action", "subject", "limit", "cursor"))
    actor = query.text("actor", max_length=64)
    action = query.text("action", max_length=64)
    subject = query.text("subject", max_length=200)
    limit = query.limit()
    before_id = query.before_id()
    query.done()

    async with req.context(request).pool.acquire() as connection:
        rows = await audit.search(
            connection,
            actor=actor,
            action_prefix=action,
            subject=subject,
            before_id=before_id,
            limit=limit + 1,
        )
    page = rows[:limit]
    next_cursor = (
        req.encode_cursor({"before_id": page[-1].id}) if len(rows) > limit else None
    )
    return req.respond(
        {"entries": [row.to_json() for row in page], "next_cursor": next_cursor}
    )
