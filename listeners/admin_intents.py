"""Admin intents: list and filter, detail with history and attempts, approval.

An intent held for approval (over a policy cap) moves only by an operator's
decision: ``approve`` sends it to ``ready`` through the signing policy's
approval, ``reject`` to ``rejected``. The decision, its author and note are
written to ``intent_events`` and to the audit log in the same transaction
as the move, so neither can exist without the other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from haven import audit, db, intents
from haven.daemon import attempts, policy
from haven.intents import Intent
from haven.listeners import admin_requests as req
from haven.types import format_hnv, intent_id_hex

LIST_PARAMETERS = (
    "status",
    "partner",
    "kind",
    "wallet",
    "signer",
    "request_id",
    "created_from",
    "created_to",
    "limit",
    "cursor",
)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/intents", list_intents, name="intents.list"),
        web.get("/intents/{intent_id}", get_intent, name="intents.get"),
        web.post("/intents/{intent_id}/approve", approve, name="intents.approve"),
        web.post("/intents/{intent_id}/reject", reject, name="intents.reject"),
    ]


def intent_json(intent: Intent) -> dict[str, Any]:
    """Render an intent for the API; amounts as integer strings in wei."""
    return {
        "id": intent_id_hex(intent.id),
        "partner": intent.partner,
        "kind": intent.kind,
        "source_key": intent.source_key,
        "wallet": intent.wallet,
        "amount_wei": str(intent.amount_wei),
        "amount_hnv": format_hnv(intent.amount_wei),
        "rule_version": intent.rule_version,
        "status": intent.status,
        "status_reason": intent.status_reason,
        "signer": intent.signer,
        "nonce": intent.nonce,
        "tx_hash": req.hex_or_none(intent.tx_hash),
        "block_number": intent.block_number,
        "block_hash": req.hex_or_none(intent.block_hash),
        "request_id": intent.request_id,
        "reversed_at": req.timestamp(intent.reversed_at),
        "created_at": intent.created_at.isoformat(),
        "updated_at": intent.updated_at.isoformat(),
    }


def attempt_json(attempt: attempts.Attempt) -> dict[str, Any]:
    """Render a transaction attempt; the raw signed bytes are left out."""
    return {
        "id": attempt.id,
        "signer": attempt.signer,
        "nonce": attempt.nonce,
        "tx_hash": attempt.tx_hash,
        "max_fee_wei": str(attempt.max_fee_wei),
        "max_priority_fee_wei": str(attempt.max_priority_fee_wei),
        "gas_limit": attempt.gas_limit,
        "status": attempt.status,
        "error": attempt.error,
        "created_at": attempt.created_at.isoformat(),
        "broadcast_at": req.timestamp(attempt.broadcast_at),
        "last_sent_at": req.timestamp(attempt.last_sent_at),
        "sent_block": attempt.sent_block,
        "mined_block": attempt.mined_block,
    }


async def list_intents(request: web.Request) -> web.Response:
    """List intents newest first, filtered, one page at a time."""
    query = req.Query(request, LIST_PARAMETERS)
    filters = {
        "status": query.choice("status", intents.STATUSES),
        "partner": query.text("partner", max_length=32),
        "kind": query.text("kind", max_length=64),
        "wallet": query.address("wallet"),
        "signer": query.address("signer"),
        "request_id": query.text("request_id"),
        "created_from": query.moment("created_from"),
        "created_to": query.moment("created_to"),
    }
    start, end = filters["created_from"], filters["created_to"]
    if start is not None and end is not None and start >= end:
        query.fail(
            "created_from",
            f"expected a time before created_to ({end.isoformat()}), "
            f"got {start.isoformat()}",
        )
    limit = query.limit()
    after = _position(query)
    query.done()

    async with req.context(request).pool.acquire() as connection:
        found = await intents.search(
            connection, **filters, after=after, limit=limit + 1
        )
    page = found[:limit]
    cursor = None
    if len(found) > limit:
        last = page[-1]
        cursor = req.encode_cursor(
            {"created_at": last.created_at.isoformat(), "id": last.id.hex()}
        )
    return req.respond(
        {"intents": [intent_json(i) for i in page], "next_cursor": cursor}
    )


def _position(query: req.Query) -> tuple[datetime, bytes] | None:
    cursor = query.cursor()
    if cursor is None:
        return None
    try:
        at = datetime.fromisoformat(str(cursor["created_at"]))
        intent_id = bytes.fromhex(str(cursor["id"]))
    except (KeyError, ValueError):
        query.fail("cursor", "not a cursor of this listing")
        return None
    # Opaque but not trusted: a forged time far from now would overflow on
    # its way to PostgreSQL.
    if at.tzinfo is None or not req.is_in_time_range(at):
        query.fail("cursor", "not a cursor of this listing")
        return None
    return at, intent_id


async def get_intent(request: web.Request) -> web.Response:
    """Return one intent with its status history and transaction attempts."""
    intent_id = req.path_intent_id(request)
    async with req.context(request).pool.acquire() as connection:
        intent = await intents.get(connection, intent_id)
        if intent is None:
            raise req.not_found("intent", intent_id_hex(intent_id))
        history = await intents.history(connection, intent_id)
        tried = await attempts.for_intent(connection, intent_id)
    body = intent_json(intent)
    body["history"] = [
        {
            "from_status": event["from_status"],
            "to_status": event["to_status"],
            "reason": event["reason"],
            "at": event["at"].isoformat(),
        }
        for event in history
    ]
    body["attempts"] = [attempt_json(attempt) for attempt in tried]
    return req.respond({"intent": body})


async def approve(request: web.Request) -> web.Response:
    """Release an intent held for approval: ``approval`` → ``ready``.

    The approval is recorded with the signing policy, which then signs the
    intent whatever its caps say (every other rule still applies).
    """
    body = await req.read_body(request, ("note",))
    note = body.text("note")
    body.done()
    intent_id = req.path_intent_id(request)

    async with db.transaction(req.context(request).pool) as connection:
        moved = await policy.approve(
            connection, intent_id, operator=req.actor(request), note=note
        )
        if moved is None:
            raise await _why_not(connection, intent_id, intents.APPROVAL)
        detail = {
            "from_status": intents.APPROVAL,
            "to_status": moved.status,
            "note": note,
        }
        await audit.record(connection, req.audit_entry(request, 200, detail))
    req.mark_audited(request)
    return req.respond({"intent": intent_json(moved)})


async def reject(request: web.Request) -> web.Response:
    """Refuse an intent held for approval: ``approval`` → ``rejected``."""
    body = await req.read_body(request, ("reason",))
    reason = body.text("reason", required=True)
    body.done()
    return await decide(
        request, to_status=intents.REJECTED, verb="rejected", note=reason
    )


async def decide(
    request: web.Request,
    *,
    to_status: str,
    verb: str,
    note: str | None,
    from_status: str = intents.APPROVAL,
    **columns: Any,
) -> web.Response:
    """Move one intent from ``from_status`` with an audit row, in one transaction.

    Answers 404 for an unknown intent and 409 for one in another status.
    """
    intent_id = req.path_intent_id(request)
    who = req.actor(request)
    reason = f"{verb} by {who}" + (f": {note}" if note else "")

    async with db.transaction(req.context(request).pool) as connection:
        moved = await intents.transition(
            connection,
            intent_id,
            from_statuses=(from_status,),
            to_status=to_status,
            reason=reason,
            **columns,
        )
        if moved is None:
            raise await _why_not(connection, intent_id, from_status)
        detail = {"from_status": from_status, "to_status": to_status, "note": note}
        await audit.record(connection, req.audit_entry(request, 200, detail))
    req.mark_audited(request)
    return req.respond({"intent": intent_json(moved)})


async def _why_not(
    connection: asyncpg.Connection, intent_id: bytes, expected: str
) -> Exception:
    current = await intents.get(connection, intent_id)
    if current is None:
        return req.not_found("intent", intent_id_hex(intent_id))
    return req.conflict(
        "wrong_status",
        f"the intent is {current.status}; only an intent in {expected} can be moved",
    )
