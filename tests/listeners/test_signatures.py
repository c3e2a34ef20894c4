"""Standard Webhooks signatures, checked by the running listener."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from haven import db, settings
from haven.listeners.answers import Rejection
from haven.listeners.app import create_app
from haven.listeners.ratelimits import RateLimits
from haven.listeners.signatures import SignedHeaders, Verifier

TOLERANCE_S = 300


def confirmed(partner, booking_id: str) -> dict:
    return partner.envelope("booking.confirmed", partner.booking(booking_id))


async def test_both_active_secrets_are_accepted_during_rotation(partner, secrets):
    old = await partner.send(
        "aurora", confirmed(partner, "AUR-R1"), secret=secrets.aurora_old
    )
    new = await partner.send(
        "aurora", confirmed(partner, "AUR-R2"), secret=secrets.aurora_new
    )

    assert (old.status, new.status) == (202, 202)


async def test_a_secret_that_is_not_active_is_refused_401(partner, secrets):
    reply = await partner.send(
        "aurora", confirmed(partner, "AUR-R3"), secret=secrets.tribe
    )

    assert reply.status == 401
    assert reply.error_code == "invalid_signature"


async def test_one_partners_secret_cannot_sign_for_another(partner, secrets):
    body = partner.envelope(
        "contribution.recorded",
        {"member_id": "M-1", "wallet": partner.WALLET, "contribution_id": "C-1"},
    )

    reply = await partner.send("tribe", body, secret=secrets.aurora_new)

    assert reply.status == 401


async def test_unknown_signature_versions_are_skipped_for_a_later_v1(partner):
    body = json.dumps(confirmed(partner, "AUR-R4")).encode()
    headers = partner.sign("aurora", body, delivery_id="msg_versions")
    headers["webhook-signature"] = (
        "v2,bm90LWEtc2lnbmF0dXJl v1a,??? garbage " + headers["webhook-signature"]
    )
    headers["Content-Type"] = "application/json"

    reply = await partner.post("/webhooks/aurora", body, headers)

    assert reply.status == 202


async def test_a_header_with_only_unknown_versions_is_refused(partner):
    body = json.dumps(confirmed(partner, "AUR-R5")).encode()
    headers = partner.sign("aurora", body, delivery_id="msg_v2_only")
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    headers["Content-Type"] = "application/json"

    reply = await partner.post("/webhooks/aurora", body, headers)

    assert reply.status == 401
    assert reply.error_code == "invalid_signature"


async def test_the_signature_covers_the_exact_bytes_not_the_json_meaning(partner):
    body = json.dumps(confirmed(partner, "AUR-R6")).encode()
    headers = partner.sign("aurora", body, delivery_id="msg_bytes")
    headers["Content-Type"] = "application/json"
    reserialised = json.dumps(json.loads(body), indent=2).encode()

    reply = await partner.post("/webhooks/aurora", reserialised, headers)

    assert reply.status == 401


async def test_a_signature_for_another_delivery_id_is_refused(partner):
    body = json.dumps(confirmed(partner, "AUR-R7")).encode()
    headers = partner.sign("aurora", body, delivery_id="msg_original")
    headers["webhook-id"] = "msg_swapped"
    headers["Content-Type"] = "application/json"

    reply = await partner.post("/webhooks/aurora", body, headers)

    assert reply.status == 401


async def test_the_timestamp_window_is_two_sided(partner):
    cases = [
        (-TOLERANCE_S - 30, 401, "timestamp_too_old"),
        (-TOLERANCE_S + 30, 202, None),
        (TOLERANCE_S - 30, 202, None),
        (TOLERANCE_S + 30, 401, "timestamp_too_new"),
    ]
    answers = []
    for offset_s, _, _ in cases:
        sent_at = datetime.now(UTC) + timedelta(seconds=offset_s)
        reply = await partner.send(
            "aurora", confirmed(partner, f"AUR-W{offset_s}"), sent_at=sent_at
        )
        answers.append((offset_s, reply.status, reply.error_code))

    assert answers == cases


async def test_a_millisecond_timestamp_is_refused_with_its_own_reason(partner, secrets):
    body = json.dumps(confirmed(partner, "AUR-MS")).encode()
    now_ms = str(int(time.time() * 1000))
    headers = {
        "webhook-id": "msg_ms",
        "webhook-timestamp": now_ms,
        "webhook-signature": partner.manual_signature(
            secrets.aurora_new, "msg_ms", now_ms, body
        ),
        "Content-Type": "application/json",
    }

    reply = await partner.post("/webhooks/aurora", body, headers)

    assert reply.status == 401
    assert reply.error_code == "timestamp_in_milliseconds"


async def test_a_timestamp_that_is_not_whole_seconds_is_refused(partner):
    body = json.dumps(confirmed(partner, "AUR-TS")).encode()
    codes = {}
    for timestamp in ["", "12.5", "-1", "1e9", "soon", "１２３", "0x10"]:
        headers = partner.sign("aurora", body, delivery_id="msg_ts")
        headers["webhook-timestamp"] = timestamp
        headers["Content-Type"] = "application/json"
        reply = await partner.post("/webhooks/aurora", body, headers)
        codes[timestamp] = (reply.status, reply.error_code)

    assert codes.pop("") == (401, "signature_headers_missing")
    assert set(codes.values()) == {(401, "invalid_timestamp")}


async def test_a_missing_signature_header_is_refused_401(partner):
    body = json.dumps(confirmed(partner, "AUR-MH")).encode()
    codes = []
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"]:
        headers = partner.sign("aurora", body, delivery_id="msg_missing")
        del headers[missing]
        headers["Content-Type"] = "application/json"
        reply = await partner.post("/webhooks/aurora", body, headers)
        codes.append((reply.status, reply.error_code))

    assert codes == [(401, "signature_headers_missing")] * 3


UNUSUAL_BODIES = [
    # Non-ASCII text, raw and escaped.
    '{"type":"booking.confirmed","timestamp":"2026-12-01T10:00:00Z","data":'
    '{"booking_id":"AUR-Ü1","guest_id":"Zoë Ørsted 李","wallet":"{w}",'
    '"total_paid_cents":45000,"currency":"CAD","nights":3}}',
    '{"type":"booking.confirmed","timestamp":"2026-12-01T10:00:00Z","data":'
    '{"booking_id":"AUR-\\u00dc2","guest_id":"\\u674e \\ud83d\\ude00",'
    '"wallet":"{w}","total_paid_cents":45000,"currency":"CAD","nights":3}}',
    # Escaped slashes.
    '{"type":"booking.confirmed","timestamp":"2026-12-01T10:00:00Z","data":'
    '{"booking_id":"AUR\\/3\\/x","guest_id":"G\\/1","wallet":"{w}",'
    '"total_paid_cents":45000,"currency":"CAD","nights":3}}',
    # Odd whitespace and key order.
    '\n\t {  "data" :\r\n{ "nights" :3 ,"currency":"CAD",  "total_paid_cents"'
    ':\t45000,"wallet":"{w}","guest_id":"G-1","booking_id":"AUR-4"},'
    '"timestamp":"2026-12-01T10:00:00+00:00",   "type":"booking.confirmed" }\n ',
]


async def test_bodies_with_unusual_but_valid_json_verify_and_apply(partner, conn):
    for number, body in enumerate(UNUSUAL_BODIES):
        text = body.replace("{w}", partner.WALLET)

        reply = await partner.send("aurora", text, delivery_id=f"msg_unusual_{number}")

        assert reply.status == 202, (number, reply.body)
        stored = await conn.fetchval(
            "SELECT payload FROM partner_events WHERE delivery_id = $1",
            f"msg_unusual_{number}",
        )
        assert stored == json.loads(text)


def test_the_verifier_accepts_what_the_standardwebhooks_client_signs(secrets):
    from standardwebhooks.webhooks import Webhook

    body = '{"type":"x","note":"café \\/ ☕"}'
    now = datetime.now(UTC)
    signature = Webhook(secrets.tribe).sign("msg_unit", now, body)
    signed = SignedHeaders("msg_unit", str(int(now.timestamp())), signature)
    verifier = Verifier([secrets.tribe], tolerance_s=TOLERANCE_S)

    verifier.verify(signed, body.encode(), now_s=int(now.timestamp()))
    with pytest.raises(Rejection) as refused:
        verifier.verify(signed, body.encode() + b" ", now_s=int(now.timestamp()))
    assert refused.value.code == "invalid_signature"


def test_a_verifier_without_secrets_cannot_be_built():
    with pytest.raises(ValueError, match="at least one"):
        Verifier([], tolerance_s=TOLERANCE_S)


def test_the_worked_example_of_the_partner_contract_verifies():
    body = (
        b'{"type":"booking.completed","timestamp":"2026-12-01T10:00:00Z","data":'
        b'{"booking_id":"AUR-100234","guest_id":"G-5521","wallet":'
        b'"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","total_paid_cents":45000,'
        b'"currency":"CAD","nights":3}}'
    )
    signed = SignedHeaders(
        "msg_2Lh9KRb0pQm3",
        "1796112000",
        "v1,dR3IFQxCbzN7DMg9UymKCd4A85uxG3pJT8ivNPs5Exw=",
    )
    verifier = Verifier(
        ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], tolerance_s=TOLERANCE_S
    )

    verifier.verify(signed, body, now_s=1796112000)


@asynccontextmanager
async def listener_on(environ: dict[str, str], redis_client) -> AsyncIterator[str]:
    """Run a listener on ``environ``'s settings; yield its base URL."""
    loaded = settings.load(environ)
    pool = await db.create_pool(loaded.database_url.reveal(), max_size=4)
    unlimited = RateLimits(per_partner="100000/minute", per_ip="100000/minute")
    app = create_app(loaded, pool, redis_client, rate_limits=unlimited)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
        await pool.close()


def contribution(partner, contribution_id: str) -> dict:
    data = {
        "member_id": "M-1",
        "wallet": partner.WALLET,
        "contribution_id": contribution_id,
    }
    return partner.envelope("contribution.recorded", data)


async def test_each_partner_has_its_own_timestamp_window(
    listener_environ, redis_client, make_partner
):
    environ = listener_environ | {
        "HAVEN_WEBHOOK_TOLERANCE_S": str(TOLERANCE_S),
        "HAVEN_WEBHOOK_TOLERANCE_S_AURORA": "60",
        "HAVEN_WEBHOOK_TOLERANCE_S_TRIBE": "900",
    }
    # Inside the shared 300 s window but outside Aurora's own, and the
    # other way round for Tribe.
    cases = [
        ("aurora", -120, 401),
        ("aurora", -30, 202),
        ("tribe", -600, 202),
        ("tribe", -960, 401),
    ]
    answers = []
    async with (
        listener_on(environ, redis_client) as url,
        aiohttp.ClientSession() as session,
    ):
        partner = make_partner(url, session)
        for name, offset_s, _ in cases:
            sent_at = datetime.now(UTC) + timedelta(seconds=offset_s)
            body = (
                confirmed(partner, f"AUR-P{offset_s}")
                if name == "aurora"
                else contribution(partner, f"C-P{offset_s}")
            )
            reply = await partner.send(name, body, sent_at=sent_at)
            answers.append((name, offset_s, reply.status))

    assert answers == cases
