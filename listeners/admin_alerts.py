"""Admin alerts: list, detail, acknowledge, resolve and accept with a note.

The lifecycle is the reconciler's (:mod:`haven.reconciler.alerts`); this
module only calls it, as the operator whose key made the request, and
writes the audit row in the same transaction as the change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from haven import audit, db
from haven.listeners import admin_requests as req
from haven.reconciler import alerts
from haven.reconciler.alerts import Alert, AlertStateError

Move = Callable[[asyncpg.Connection, int, str, str | None], Awaitable[Alert]]


def routes() -> list[web.RouteDef]:
    return [
        web.get("/alerts", list_alerts, name="alerts.list"),
        web.get("/alerts/{alert_id}", get_alert, name="alerts.get"),
        web.post(
            "/alerts/{alert_id}/acknowledge", acknowledge, name="alerts.acknowledge"
        ),
        web.post("/alerts/{alert_id}/resolve", resolve, name="alerts.resolve"),
        web.post("/alerts/{alert_id}/accept", accept, name="alerts.accept"),
    ]


def alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": alert.rule,
        "subject": alert.subject,
        "severity": alert.severity,
        "status": alert.status,
        "evidence": alert.evidence,
        "first_seen_at": alert.first_seen_at.isoformat(),
        "last_seen_at": alert.last_seen_at.isoformat(),
        "occurrences": alert.occurrences,
        "acknowledged_at": req.timestamp(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": req.timestamp(alert.resolved_at),
        "resolved_by": alert.resolved_by,
        "accepted_at": req.timestamp(alert.accepted_at),
        "accepted_by": alert.accepted_by,
        "note": alert.note,
        "notified_at": req.timestamp(alert.notified_at),
    }


async def list_alerts(request: web.Request) -> web.Response:
    """List alerts newest first, filtered by status, rule or subject, paged."""
    query = req.Query(request, ("status", "rule", "subject", "limit", "cursor"))
    status = query.choice("status", alerts.STATUSES)
    rule = query.text("rule")
    subject = query.text("subject", max_length=200)
    limit = query.limit()
    before_id = query.before_id()
    query.done()

    async with db.translate_errors(), req.context(request).pool.acquire() as conn:
        found = await alerts.page(
            conn,
            limit=limit + 1,
            before_id=before_id,
            rule=rule,
            subject=subject,
            statuses=(status,) if status else None,
        )
    page = found[:limit]
    next_cursor = None
    if len(found) > limit:
        next_cursor = req.encode_cursor({"before_id": page[-1].id})
    return req.respond(
        {"alerts": [alert_json(a) for a in page], "next_cursor": next_cursor}
    )


async def get_alert(request: web.Request) -> web.Response:
    """Return one alert with its lifecycle history and delivery outcomes."""
    alert_id = req.path_int(request, "alert_id")
    async with db.translate_errors(), req.context(request).pool.acquire() as conn:
        alert = await alerts.get(conn, alert_id)
        if alert is None:
            raise req.not_found("alert", str(alert_id))
        history = await alerts.history(conn, alert_id)
        delivered = await alerts.deliveries(conn, alert_id)
    body = alert_json(alert)
    body["history"] = [_stamped(event) for event in history]
    body["deliveries"] = [_stamped(delivery) for delivery in delivered]
    return req.respond({"alert": body})


def _stamped(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if k == "at" else v for k, v in row.items()}


async def acknowledge(request: web.Request) -> web.Response:
    """Mark an open alert as being handled by the caller."""
    (await req.read_body(request, ())).done()
    return await _move(
        request, lambda c, i, by, _: alerts.acknowledge(c, i, by=by), note=None
    )


async def resolve(request: web.Request) -> web.Response:
    """Close an alert as fixed; it reopens if raised again."""
    body = await req.read_body(request, ("note",))
    note = body.text("note")
    body.done()
    return await _move(
        request, lambda c, i, by, n: alerts.resolve(c, i, by=by, note=n), note=note
    )


async def accept(request: web.Request) -> web.Response:
    """Accept an alert as known and tolerated; the note saying why is mandatory."""
    body = await req.read_body(request, ("note",))
    note = body.text("note", required=True)
    body.done()
    return await _move(
        request,
        lambda c, i, by, n: alerts.accept(c, i, by=by, note=n or ""),
        note=note,
    )


async def _move(request: web.Request, move: Move, *, note: str | None) -> web.Response:
    alert_id = req.path_int(request, "alert_id")
    who = req.actor(request)
    async with db.transaction(req.context(request).pool) as connection:
        try:
            alert = await move(connection, alert_id, who, note)
        except LookupError:
            raise req.not_found("alert", str(alert_id)) from None
        except AlertStateError as exc:
            raise req.conflict("wrong_status", str(exc)) from None
        detail = {"to_status": alert.status, "rule": alert.rule, "note": note}
        await audit.record(connection, req.audit_entry(request, 200, detail))
    req.mark_audited(request)
    return req.respond({"alert": alert_json(alert)})
