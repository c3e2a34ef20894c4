"""Admin wallets: the custodial signers — list, get, create, rotate, revoke, audit.

Everything that touches keys or roles is the custody code's
(:mod:`haven.daemon.custody`, :mod:`haven.daemon.wallets`), called here as
``haven wallet`` calls it. Nothing here ever returns key material: a wallet
is its address, status, counter and gas balance.

Rotation creates the successor, makes it a minter and turns the old signer
``draining``; the old one is revoked at once when nothing of it is in
flight, else the answer is 202 and ``revoke`` finishes the job later (the
same call is safe to repeat).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from haven import db
from haven.chain import ChainClient
from haven.daemon import custody, signers, wallets
from haven.daemon.signers import SignerRow
from haven.errors import ChainError, ConfigError, CustodyError
from haven.listeners import admin_requests as req
from haven.listeners.answers import Rejection

MAX_FUND_WEI = 10**24


def routes() -> list[web.RouteDef]:
    return [
        web.get("/wallets", list_wallets, name="wallets.list"),
        web.post("/wallets", create_wallet, name="wallets.create"),
        web.get("/wallets/{address}", get_wallet, name="wallets.get"),
        web.get("/wallets/{address}/audit", wallet_audit, name="wallets.audit"),
        web.post("/wallets/{address}/rotate", rotate_wallet, name="wallets.rotate"),
        web.post("/wallets/{address}/revoke", revoke_wallet, name="wallets.revoke"),
    ]


async def _balance(chain: ChainClient, address: str) -> str | None:
    try:
        return str(await chain.get_balance(address))
    except ChainError:
        return None


async def wallet_json(chain: ChainClient, row: SignerRow) -> dict[str, Any]:
    """Render a signer; ``balance_wei`` is null while the chain does not answer."""
    return {
        "address": row.address,
        "status": row.status,
        "next_nonce": row.next_nonce,
        "created_at": row.created_at.isoformat(),
        "revoked_at": req.timestamp(row.revoked_at),
        "balance_wei": await _balance(chain, row.address),
    }


async def _row(pool: db.Pool, address: str) -> SignerRow:
    async with db.translate_errors(), pool.acquire() as conn:
        row = await signers.get(conn, address)
    if row is None:
        raise req.not_found("wallet", address)
    return row


async def list_wallets(request: web.Request) -> web.Response:
    """List every signer, oldest first, optionally of one status."""
    query = req.Query(request, ("status",))
    status = query.choice("status", (signers.ACTIVE, signers.DRAINING, signers.REVOKED))
    query.done()
    context = req.context(request)
    async with db.translate_errors(), context.pool.acquire() as conn:
        rows = await signers.listing(conn, [status] if status else None)
    shown = [await wallet_json(context.chain, row) for row in rows]
    return req.respond({"wallets": shown})


async def get_wallet(request: web.Request) -> web.Response:
    address = req.path_address(request)
    context = req.context(request)
    row = await _row(context.pool, address)
    return req.respond({"wallet": await wallet_json(context.chain, row)})


async def create_wallet(request: web.Request) -> web.Response:
    """Generate a signer key, store it encrypted; it mints once granted the role."""
    (await req.read_body(request, ())).done()
    context = req.context(request)
    address = await custody.create_signer(
        context.pool, context.settings, actor=req.actor(request)
    )
    req.note_audit(request, address=address)
    row = await _row(context.pool, address)
    return req.respond({"wallet": await wallet_json(context.chain, row)}, status=201)


async def wallet_audit(request: web.Request) -> web.Response:
    """Return the custody audit trail of one signer, newest first, paged."""
    address = req.path_address(request)
    query = req.Query(request, ("limit", "cursor"))
    limit = query.limit()
    before_id = query.before_id()
    query.done()
    context = req.context(request)
    await _row(context.pool, address)
    async with db.translate_errors(), context.pool.acquire() as conn:
        newest = await custody.audit_page(
            conn, address, limit=limit + 1, before_id=before_id
        )
    page = newest[:limit]
    next_cursor = None
    if len(newest) > limit:
        next_cursor = req.encode_cursor({"before_id": page[-1].id})
    entries = [
        {
            "id": entry.id,
            "action": entry.action,
            "actor": entry.actor,
            "detail": entry.detail,
            "at": entry.at.isoformat(),
        }
        for entry in page
    ]
    return req.respond({"entries": entries, "next_cursor": next_cursor})


async def rotate_wallet(request: web.Request) -> web.Response:
    """Replace an active signer: successor created and granted, old one drained."""
    address = req.path_address(request)
    body = await req.read_body(request, ("fund_wei",))
    fund_wei = _fund_wei(body)
    body.done()
    context = req.context(request)
    await _row(context.pool, address)

    with _custody_refusals():
        new = await wallets.rotate(
            context.settings,
            context.pool,
            context.chain,
            old=address,
            fund_wei=fund_wei,
            actor=req.actor(request),
        )
        revoked = await _retire_now(request, address)
    req.note_audit(request, successor=new, old_revoked=revoked)
    old_row, new_row = await _row(context.pool, address), await _row(context.pool, new)
    body_out = {
        "wallet": await wallet_json(context.chain, new_row),
        "retired": await wallet_json(context.chain, old_row),
    }
    return req.respond(body_out, status=200 if revoked else 202)


async def revoke_wallet(request: web.Request) -> web.Response:
    """Drain a signer; revoke it once nothing of it is in flight (202 until then)."""
    address = req.path_address(request)
    (await req.read_body(request, ())).done()
    context = req.context(request)
    await _row(context.pool, address)

    with _custody_refusals():
        revoked = await _retire_now(request, address)
    req.note_audit(request, revoked=revoked)
    row = await _row(context.pool, address)
    wallet = await wallet_json(context.chain, row)
    return req.respond({"wallet": wallet}, status=200 if revoked else 202)


async def _retire_now(request: web.Request, address: str) -> bool:
    """Drain ``address`` and revoke it if nothing of it is in flight; no waiting."""
    context = req.context(request)
    return await wallets.retire(
        context.settings,
        context.pool,
        context.chain,
        address,
        wait_s=0,
        actor=req.actor(request),
    )


def _fund_wei(body: req.Body) -> int:
    value = body.raw("fund_wei")
    if value is None:
        return 0
    if (
        not isinstance(value, str)
        or not (value.isascii() and value.isdigit())
        or len(value) > 25
        or int(value) > MAX_FUND_WEI
    ):
        body.problems.append(
            {
                "path": "fund_wei",
                "message": "expected a string of digits (wei), at most "
                f'"{MAX_FUND_WEI}"',
            }
        )
        return 0
    return int(value)


@contextmanager
def _custody_refusals() -> Iterator[None]:
    """Turn custody's refusals into 409 and a missing deployer key into 503."""
    try:
        yield
    except CustodyError as exc:
        raise req.conflict("custody_refused", str(exc)) from exc
    except ConfigError as exc:
        raise Rejection(
            503, "not_configured", "; ".join(exc.problems), retry_after_s=60
        ) from exc
