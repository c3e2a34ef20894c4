"""Admin health: nonce status per signer, and a guarded reset of the counter.

The counter (``signers.next_nonce``) is the daemon's; the chain knows two
numbers of its own, ``latest`` (mined) and ``pending`` (the node's pool).
A reset sets the counter to the chain's ``latest`` — the repair for nonces
allocated but never sent — and is refused unless it is provably harmless:
the caller repeats the signer's address in ``confirm``; the node's pool
holds nothing of the signer; no attempt of it is live and no intent holds a
nonce at or above ``latest``; and, when given, ``expected_next_nonce``
still matches. The checks and the change run under the signer's row lock,
the same lock that serialises the daemon's allocations.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from haven import audit, db, intents
from haven.chain import ChainClient
from haven.daemon import attempts, signers
from haven.errors import ChainError
from haven.listeners import admin_requests as req

MAX_NONCE = 2**63 - 1


def routes() -> list[web.RouteDef]:
    return [
        web.get("/health/nonces", list_nonces, name="nonces.list"),
        web.post("/health/nonces/{address}/reset", reset_nonce, name="nonces.reset"),
    ]


async def _chain_counts(
    chain: ChainClient, address: str
) -> tuple[int | None, int | None]:
    try:
        latest = await chain.get_transaction_count(address, "latest")
        pending = await chain.get_transaction_count(address, "pending")
    except ChainError:
        return None, None
    return int(latest), int(pending)


async def list_nonces(request: web.Request) -> web.Response:
    """Return each signer's counter beside the chain's view of it."""
    req.Query(request, ()).done()
    context = req.context(request)
    async with db.translate_errors(), context.pool.acquire() as conn:
        rows = await signers.listing(conn)
        live = await attempts.live(conn)
    shown = []
    for row in rows:
        latest, pending = await _chain_counts(context.chain, row.address)
        live_nonces = sorted({a.nonce for a in live if a.signer == row.address})
        shown.append(
            {
                "signer": row.address,
                "status": row.status,
                "next_nonce": row.next_nonce,
                "chain_latest": latest,
                "chain_pending": pending,
                "in_flight": None
                if latest is None
                else max(row.next_nonce - latest, 0),
                "live_nonces": len(live_nonces),
                "lowest_live_nonce": live_nonces[0] if live_nonces else None,
            }
        )
    return req.respond({"signers": shown})


async def reset_nonce(request: web.Request) -> web.Response:
    """Set a signer's next nonce to the chain's latest, if provably harmless."""
    address = req.path_address(request)
    body = await req.read_body(request, ("confirm", "expected_next_nonce"))
    confirm = body.text("confirm", required=True, max_length=42)
    expected = body.integer("expected_next_nonce", 0, MAX_NONCE)
    body.done()
    if confirm is None or confirm.lower() != address.lower():
        raise req.invalid("confirm", "repeat the signer's address to confirm")

    context = req.context(request)
    latest = int(await context.chain.get_transaction_count(address, "latest"))
    pending = int(await context.chain.get_transaction_count(address, "pending"))
    if pending != latest:
        raise req.conflict(
            "transactions_in_flight",
            f"the node holds {pending - latest} pending transaction(s) of {address}",
        )

    async with db.transaction(context.pool) as connection:
        row = await signers.get(connection, address, for_update=True)
        if row is None:
            raise req.not_found("signer", address)
        await _refuse_unless_idle(connection, address, latest)
        if expected is not None and expected != row.next_nonce:
            raise req.conflict(
                "next_nonce_changed",
                f"next_nonce is {row.next_nonce}, not {expected}; look again",
            )
        if row.next_nonce != latest:
            await signers.set_next_nonce(connection, address, latest)
        detail = {"from": row.next_nonce, "to": latest, "chain_latest": latest}
        await audit.record(connection, req.audit_entry(request, 200, detail))
    req.mark_audited(request)
    return req.respond(
        {
            "signer": address,
            "previous_next_nonce": row.next_nonce,
            "next_nonce": latest,
            "changed": row.next_nonce != latest,
        }
    )


async def _refuse_unless_idle(
    connection: asyncpg.Connection, address: str, latest: int
) -> None:
    live = await attempts.live(connection, address)
    if live:
        raise req.conflict(
            "transactions_in_flight",
            f"{len(live)} attempt(s) of {address} are signed or broadcast and "
            "not settled; wait for them or let the daemon finish them",
        )
    holding = await intents.nonces_held(
        connection, address, at_or_above=latest, limit=5
    )
    if holding:
        nonces = ", ".join(str(nonce) for nonce in holding)
        raise req.conflict(
            "intents_hold_nonces",
            f"intents still hold nonces {nonces} of {address} at or above the "
            f"chain's {latest}",
        )
