"""The admin API under ``/api/v1/admin``: keys, the audit trail and the routes.

Every request passes one middleware, in this order: identify the caller by
its bearer key (401 otherwise), run the handler, turn whatever it raised
into the listener's JSON error shape, and write one audit row — including
for the 401. A handler that changes haven's own tables writes its audit row
in the same transaction as the change and says so; the middleware then
writes none. Nothing a client sends is answered 500.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from haven import audit, db
from haven.errors import (
    ChainError,
    DatabaseUnavailableError,
    RpcResponseError,
    RpcUnavailableError,
)
from haven.listeners import (
    admin_alerts,
    admin_audit,
    admin_breakers,
    admin_intents,
    admin_nonces,
    admin_reports,
    admin_transactions,
    admin_wallets,
)
from haven.listeners import admin_requests as req
from haven.listeners.answers import Rejection, database_unavailable
from haven.listeners.auth import Unauthorized

PREFIX = "/api/v1/admin"
CHAIN_RETRY_AFTER_S = 10
RESOURCES = (
    admin_wallets,
    admin_transactions,
    admin_breakers,
    admin_nonces,
    admin_intents,
    admin_alerts,
    admin_reports,
    admin_audit,
)


def setup(app: web.Application, context: req.AdminContext) -> web.Application:
    """Mount the admin API on ``app`` under :data:`PREFIX`; return the sub-app."""
    admin = web.Application(middlewares=[guard])
    admin[req.CONTEXT] = context
    for resource in RESOURCES:
        admin.add_routes(resource.routes())
    app.add_subapp(PREFIX, admin)
    return admin


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, answer and audit one admin request."""
    try:
        request[req.ACTOR] = req.context(request).keys.identify(
            request.headers.get("Authorization")
        )
    except Unauthorized as exc:
        refused = await _refuse(request)
        if refused.status == 401:
            await _audit(request, refused.status, {"reason": exc.reason})
        return refused

    response = await _answer(request, handler)
    if not req.is_audited(request):
        await _audit(request, response.status, None)
    return response


async def _refuse(request: web.Request) -> web.Response:
    """Answer a missing or wrong key: 401, or 429 past the client's budget.

    Past the budget nothing is written: the 429s of a flood are counted by
    the request metrics, not audited one by one.
    """
    limiter = req.context(request).limiter
    if limiter is not None:
        try:
            await limiter.check_admin_refusal(
                request.remote or "unknown",
                forwarded_for=request.headers.get("X-Forwarded-For"),
            )
        except Rejection as exc:
            return exc.to_answer().to_response()
    return _unauthorized()


def _unauthorized() -> web.Response:
    answer = Rejection(
        401,
        "unauthorized",
        "send a valid admin key as 'Authorization: Bearer <key>'",
    ).to_answer()
    response = answer.to_response()
    response.headers["WWW-Authenticate"] = 'Bearer realm="haven-admin"'
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Rejection as exc:
        rejection = exc
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        return _from_http(exc)
    except ChainError as exc:
        rejection = _chain_failure(exc)
    except Exception as exc:
        rejection = _unexpected(exc)
    return rejection.to_answer().to_response()


def _from_http(exc: web.HTTPException) -> web.Response:
    # Routing errors (404, 405) in the listener's shape, Allow kept.
    code = (exc.reason or "error").lower().replace(" ", "_")
    answer = Rejection(exc.status_code, code, exc.reason or "error").to_answer()
    response = answer.to_response()
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _chain_failure(exc: ChainError) -> Rejection:
    if isinstance(exc, RpcUnavailableError):
        logger.warning("admin request needed the chain, which did not answer")
        return Rejection(
            503,
            "chain_unavailable",
            "no RPC endpoint answered; retry later",
            retry_after_s=CHAIN_RETRY_AFTER_S,
        )
    kind = exc.kind if isinstance(exc, RpcResponseError) else type(exc).__name__
    logger.bind(kind=kind).warning("admin request refused by the node")
    return Rejection(502, "chain_refused", f"the node refused the request ({kind})")


def _unexpected(exc: Exception) -> Rejection:
    if db.is_unavailable(exc):
        return database_unavailable()
    logger.opt(exception=exc).error(
        "admin request failed unexpectedly; answered 500: check the traceback"
    )
    return Rejection(500, "internal_error", "the admin API failed")


async def _audit(
    request: web.Request, status_code: int, detail: dict[str, Any] | None
) -> None:
    entry = req.audit_entry(request, status_code, detail)
    try:
        async with db.translate_errors():
            await audit.record(req.context(request).pool, entry)
    except (DatabaseUnavailableError, asyncpg.PostgresError) as exc:
        # The answer stands; the missing row is the person's to chase.
        logger.bind(
            action=entry.action, status_code=status_code, error=type(exc).__name__
        ).error("admin audit row not written: check PostgreSQL")
