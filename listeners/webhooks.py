"""The partner webhook endpoints: ``POST /webhooks/<partner>`` (aurora, tribe).

A request passes named stages in this order, each able to refuse it with
its own status and stable code: client rate limit, partner, media type,
size, signature, partner rate limit, replay, JSON, schema, intake. The
signature is checked on the raw bytes before anything parses them, and the
per-partner limit counts only authentic requests. Every request, whatever
its answer, is written to the attempt log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.web import RequestPayloadError
from loguru import logger

from haven import metrics
from haven.errors import DatabaseUnavailableError
from haven.listeners import attempts, correlation, events, intake
from haven.listeners.answers import Answer, Rejection, database_unavailable
from haven.listeners.attempts import Attempt
from haven.listeners.batcher import Batcher
from haven.listeners.deliveries import Delivery
from haven.listeners.ratelimits import Limiter
from haven.listeners.rules import RuleBook
from haven.listeners.signatures import SignedHeaders, Verifier

MAX_BODY_BYTES = 64 * 1024
# What aiohttp decodes before the body is read; anything else would be
# read as it came and fail its signature with a misleading 401.
CONTENT_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
# Every path under /webhooks/ reaches the handler, so that ``/webhooks/`` and
# ``/webhooks/tribe/`` are answered unknown_partner and logged like any other.
PATH = "/webhooks/{partner:.*}"


@dataclass(frozen=True)
class Receiver:
    """What the webhook endpoints need: the pool, the rules, verifiers,
    limits and the batcher of their intake."""

    pool: asyncpg.Pool
    rules: RuleBook
    verifiers: Mapping[str, Verifier]
    limiter: Limiter
    batcher: Batcher


RECEIVER = web.AppKey("haven.webhooks.receiver", Receiver)


def register(app: web.Application, receiver: Receiver) -> None:
    """Add the webhook routes to ``app``; every method is answered, POST is served.

    The app's cleanup waits for the batcher to apply what it was handed.
    """
    app[RECEIVER] = receiver
    app.router.add_route("*", PATH, receive)
    app.on_cleanup.append(_close_batcher)


async def _close_batcher(app: web.Application) -> None:
    await app[RECEIVER].batcher.close()


async def receive(request: web.Request) -> web.Response:
    """Answer one webhook request and log the attempt. Never raises for client input."""
    receiver = request.app[RECEIVER]
    attempt = Attempt.begin(
        request.match_info["partner"],
        correlation.request_id(request),
        request.remote,
    )

    try:
        try:
            answer = await _process(request, receiver, attempt)
        except Rejection as exc:
            answer = exc.to_answer()
        # Rendered before it is logged: the log holds what the client gets.
        response = answer.to_response()
    except Exception as exc:
        # The app's error boundary logs the traceback and answers 500; the
        # attempt is logged here all the same, as every request is.
        await _record(receiver, attempt, _unexpected(exc))
        raise

    await _record(receiver, attempt, answer)
    if answer.status_code >= 400:
        logger.bind(
            partner=attempt.partner,
            delivery_id=attempt.delivery_id,
            status_code=answer.status_code,
            outcome=answer.outcome,
        ).info("webhook refused")
    return response


async def _record(receiver: Receiver, attempt: Attempt, answer: Answer) -> None:
    await attempts.record(receiver.pool, attempt, answer)
    metrics.count_webhook(attempt.partner, answer.outcome, answer.status_code)


def _unexpected(exc: Exception) -> Answer:
    return Rejection(
        500,
        "internal_error",
        f"unexpected {type(exc).__name__}; the traceback is in the listener log",
    ).to_answer()


async def _process(
    request: web.Request, receiver: Receiver, attempt: Attempt
) -> Answer:
    await receiver.limiter.check_ip(
        request.remote or "unknown",
        forwarded_for=request.headers.get("X-Forwarded-For"),
    )
    verifier = _verifier(request, receiver)
    _check_method(request)
    _check_media_type(request)
    body = await _read_body(request)

    signed = SignedHeaders.from_headers(request.headers)
    attempt.delivery_id = signed.delivery_id
    verifier.verify(signed, body, now_s=int(time.time()))
    await receiver.limiter.check_partner(attempt.partner)

    try:
        return await _apply(receiver, attempt, signed, body)
    except DatabaseUnavailableError as exc:
        raise database_unavailable() from exc


async def _apply(
    receiver: Receiver, attempt: Attempt, signed: SignedHeaders, body: bytes
) -> Answer:
    payload, malformed = _parse(body)
    delivery = Delivery.of(
        attempt.partner,
        signed.delivery_id,
        body,
        events.canonical(payload) if payload is not None else None,
        source="webhook",
        request_id=attempt.request_id,
    )

    if malformed is not None:
        return await _known_or(receiver, delivery, malformed)
    assert payload is not None
    try:
        event = events.read(attempt.partner, payload)
    except Rejection as exc:
        return await _known_or(receiver, delivery, exc)
    priced = await intake.price(
        receiver.pool, receiver.rules, delivery, event, attempt=attempt
    )
    if isinstance(priced, Answer):
        return priced
    # A known delivery id is settled by the intake's claim: a retry of an
    # accepted delivery is replayed, another body under it is a conflict.
    return await receiver.batcher.apply(priced)


async def _known_or(
    receiver: Receiver, delivery: Delivery, refusal: Rejection
) -> Answer:
    """Answer a known delivery id as before; refuse a new one with ``refusal``.

    A delivery is judged by its id before its body: a body that no longer
    reads as an event does not turn an accepted delivery into a refused one.
    """
    known = await intake.recall(receiver.pool, delivery)
    if known is not None:
        return known
    raise refusal


def _verifier(request: web.Request, receiver: Receiver) -> Verifier:
    verifier = receiver.verifiers.get(request.match_info["partner"])
    if verifier is None:
        raise Rejection(404, "unknown_partner", "no partner is served at this path")
    return verifier


def _check_method(request: web.Request) -> None:
    if request.method != "POST":
        raise Rejection(
            405,
            "method_not_allowed",
            "webhooks are delivered with POST",
            headers={"Allow": "POST"},
        )


def _check_media_type(request: web.Request) -> None:
    charset = (request.charset or "utf-8").lower()
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if (
        request.content_type != "application/json"
        or charset != "utf-8"
        or encoding not in CONTENT_ENCODINGS
    ):
        raise Rejection(
            415,
            "unsupported_media_type",
            "the body must be sent as application/json in UTF-8, plain or with "
            "Content-Encoding gzip or deflate",
        )


async def _read_body(request: web.Request) -> bytes:
    too_large = Rejection(
        413, "payload_too_large", f"the body must not exceed {MAX_BODY_BYTES} bytes"
    )
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.content.iter_chunked(MAX_BODY_BYTES):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise too_large
    except RequestPayloadError:
        # A gzip or deflate body that does not decode. The rest of the
        # stream cannot be read either: the connection ends with the answer
        # (aiohttp's attempt to drain it is logged as a client mistake).
        encoding = request.headers.get("Content-Encoding", "")
        raise Rejection(
            400,
            "malformed_body",
            f"the body does not decode as its Content-Encoding ({encoding}) says"
            if encoding
            else "the body could not be read as sent",
            headers={"Connection": "close"},
        ) from None
    return bytes(body)


def _parse(body: bytes) -> tuple[dict[str, Any] | None, Rejection | None]:
    try:
        return events.parse_body(body), None
    except Rejection as exc:
        return None, exc
