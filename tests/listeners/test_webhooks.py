"""The webhook endpoints through a running listener: every status code and body."""

from __future__ import annotations

import gzip
import json

import orjson

from haven import intents
from haven.listeners import access
from haven.types import parse_intent_id

ISSUE_EXAMPLE = (
    b'{"type": "booking.completed", "timestamp": "2026-12-01T10:00:00Z", "data": '
    b'{"booking_id": "AUR-100234", "guest_id": "G-5521", "wallet": '
    b'"0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "total_paid_cents": 45000, '
    b'"currency": "CAD", "nights": 3}}'
)


async def test_the_issue_example_is_accepted_as_a_ready_intent_of_1080_hnv(
    partner, conn
):
    reply = await partner.send("aurora", ISSUE_EXAMPLE, delivery_id="msg_issue_2")

    assert reply.status == 202
    expected_id = intents.derive_id("aurora", "booking", "AUR-100234")
    assert reply.body == {
        "status": "accepted",
        "outcome": "intent_created",
        "intent_id": "0x" + expected_id.hex(),
        "intent_status": "ready",
        "delivery_id": "msg_issue_2",
        "event_type": "booking.completed",
    }
    row = await conn.fetchrow("SELECT * FROM intents WHERE id = $1", expected_id)
    assert row["amount_wei"] == 1080 * 10**18
    assert row["status"] == "ready"
    assert row["wallet"] == partner.WALLET
    assert row["rule_version"] == "2026-12-01.1"
    assert row["request_id"] == reply.headers["X-Request-Id"]


async def test_a_caller_request_id_is_echoed_and_stored_on_the_intent(partner, conn):
    body = partner.envelope("booking.confirmed", partner.booking("AUR-1"))

    reply = await partner.send(
        "aurora", body, headers={"X-Request-Id": "req-abc-12345"}
    )

    assert reply.status == 202
    assert reply.headers["X-Request-Id"] == "req-abc-12345"
    intent_id = parse_intent_id(reply.body["intent_id"])
    stored = await conn.fetchval(
        "SELECT request_id FROM intents WHERE id = $1", intent_id
    )
    assert stored == "req-abc-12345"


async def test_an_implausible_request_id_is_replaced_by_a_generated_one(partner):
    reply = await partner.send(
        "aurora",
        partner.envelope("booking.confirmed", partner.booking("AUR-2")),
        headers={"X-Request-Id": "bad id with spaces"},
    )

    assert reply.status == 202
    assert reply.headers["X-Request-Id"] != "bad id with spaces"
    assert len(reply.headers["X-Request-Id"]) == 32


async def test_malformed_json_is_answered_400_after_the_signature_holds(partner):
    reply = await partner.send("aurora", b'{"type": "booking.completed", ')

    assert reply.status == 400
    assert reply.error_code == "malformed_json"


async def test_a_compressed_body_is_verified_decoded_and_a_corrupt_one_is_400(
    partner, caplog
):
    access.quiet_client_mistakes()  # as `haven listen` serves the app
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    signed = headers | partner.sign("aurora", ISSUE_EXAMPLE, delivery_id="msg_gzip_1")
    accepted = await partner.post(
        "/webhooks/aurora", gzip.compress(ISSUE_EXAMPLE), signed
    )
    # Unsigned: the body is read, and found corrupt, before any signature.
    corrupt = {
        encoding: await partner.post(
            "/webhooks/aurora", body, headers | {"Content-Encoding": encoding}
        )
        for encoding, body in [
            ("gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 64),
            ("deflate", b"nope"),
        ]
    }

    assert accepted.status == 202
    for encoding, reply in corrupt.items():
        assert (reply.status, reply.error_code) == (400, "malformed_body"), encoding
        assert f"({encoding})" in reply.body["error"]["message"]
        assert reply.headers["Connection"] == "close"
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert server and all(r.levelname == "WARNING" and not r.exc_info for r in server)


async def test_a_lone_surrogate_in_a_key_is_answered_422_and_logged_as_sent(
    partner, conn
):
    body = ISSUE_EXAMPLE[:-2] + b', "\\udcff": 1}}'

    reply = await partner.send("aurora", body)

    assert (reply.status, reply.error_code) == (422, "invalid_event")
    assert reply.body["error"]["fields"][0]["path"] == "data.\\udcff"
    logged = await conn.fetchval(
        "SELECT status_code FROM webhook_attempts ORDER BY id DESC LIMIT 1"
    )
    assert logged == 422


async def test_a_json_body_that_is_not_an_object_is_answered_422_at_the_root(
    partner,
):
    reply = await partner.send("aurora", b"[1, 2, 3]")

    assert reply.status == 422
    assert reply.body["error"]["fields"] == [
        {"path": "$", "message": "expected a JSON object (the envelope)"}
    ]


async def test_an_unknown_partner_path_is_answered_404(partner):
    reply = await partner.send("aurora", b"{}", path="/webhooks/expedia")

    assert reply.status == 404
    assert reply.error_code == "unknown_partner"


async def test_other_methods_on_a_partner_path_are_answered_405(partner):
    reply = await partner.post("/webhooks/aurora", b"", {}, method="GET")

    assert reply.status == 405
    assert reply.error_code == "method_not_allowed"
    assert reply.headers["Allow"] == "POST"


async def test_a_path_outside_the_api_is_answered_404_in_json(partner):
    reply = await partner.post("/nowhere", b"", {}, method="GET")

    assert reply.status == 404
    assert reply.error_code == "not_found"
    assert "X-Request-Id" in reply.headers


async def test_a_body_over_64_kib_is_answered_413(partner):
    padding = "x" * (64 * 1024)
    body = partner.envelope("booking.confirmed", partner.booking("AUR-3", note=padding))

    reply = await partner.send("aurora", body)

    assert reply.status == 413
    assert reply.error_code == "payload_too_large"


async def test_a_body_of_exactly_64_kib_is_not_too_large(partner):
    body = orjson.dumps(partner.envelope("booking.confirmed", partner.booking("AUR-4")))
    padded = body[:-1] + b" " * (64 * 1024 - len(body)) + b"}"
    assert len(padded) == 64 * 1024

    reply = await partner.send("aurora", padded)

    assert reply.status == 202


async def test_a_body_that_is_not_json_is_answered_415(partner):
    reply = await partner.send("aurora", b"type=booking", content_type="text/plain")

    assert reply.status == 415
    assert reply.error_code == "unsupported_media_type"


async def test_json_in_another_charset_is_answered_415(partner):
    reply = await partner.send(
        "aurora", b"{}", content_type="application/json; charset=latin-1"
    )

    assert reply.status == 415


async def test_an_encoding_the_listener_does_not_decode_is_answered_415(partner):
    # Signed over the bytes sent: read as they came, they would pass, and a
    # real encoding of that name would fail its signature as a puzzling 401.
    unknown = await partner.send(
        "aurora", ISSUE_EXAMPLE, headers={"Content-Encoding": "rot13"}
    )
    identity = await partner.send(
        "aurora", ISSUE_EXAMPLE, headers={"Content-Encoding": "identity"}
    )

    assert (unknown.status, unknown.error_code) == (415, "unsupported_media_type")
    assert "gzip or deflate" in unknown.body["error"]["message"]
    assert identity.status == 202


async def test_schema_errors_are_answered_422_with_every_field_path(partner):
    data = partner.booking("AUR-5", wallet="0x1234", total_paid_cents=-5, nights=2.5)
    del data["guest_id"]

    reply = await partner.send("aurora", partner.envelope("booking.completed", data))

    assert reply.status == 422
    assert reply.error_code == "invalid_event"
    paths = sorted(field["path"] for field in reply.body["error"]["fields"])
    assert paths == [
        "data.guest_id",
        "data.nights",
        "data.total_paid_cents",
        "data.wallet",
    ]


async def test_a_currency_without_a_rate_is_answered_422_on_its_field(partner, conn):
    data = partner.booking("AUR-6", currency="USD")

    reply = await partner.send("aurora", partner.envelope("booking.completed", data))

    assert reply.status == 422
    assert reply.body["error"]["fields"][0]["path"] == "data.currency"
    assert await conn.fetchval("SELECT count(*) FROM intents") == 0


async def test_error_bodies_share_one_shape(partner):
    reply = await partner.send("aurora", b"{", content_type="text/plain")

    assert set(reply.body) == {"error"}
    assert set(reply.body["error"]) == {"code", "message"}
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_paths_under_webhooks_without_a_partner_are_answered_unknown_partner(
    partner, conn
):
    for path in ("/webhooks/", "/webhooks/tribe/", "/webhooks/tribe/events"):
        reply = await partner.send("tribe", b"{}", path=path)

        assert (reply.status, reply.error_code) == (404, "unknown_partner"), path
        assert "X-Request-Id" in reply.headers

    outcomes = await conn.fetch("SELECT partner, outcome FROM webhook_attempts")
    assert [tuple(row) for row in outcomes] == [("(unreadable)", "unknown_partner")] * 3


async def test_a_timestamp_past_the_calendar_in_utc_is_answered_422(partner, conn):
    for timestamp in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-05:00"):
        body = partner.envelope(
            "booking.confirmed", partner.booking("AUR-TS1"), timestamp=timestamp
        )

        reply = await partner.send("aurora", body)

        assert reply.status == 422
        assert [f["path"] for f in reply.body["error"]["fields"]] == ["timestamp"]

    statuses = await conn.fetch("SELECT status_code FROM webhook_attempts")
    assert [row["status_code"] for row in statuses] == [422, 422]
    assert await conn.fetchval("SELECT count(*) FROM partner_events") == 0


async def test_a_timestamp_at_the_calendar_edge_is_stored(partner, conn):
    for number, timestamp in enumerate(
        ("0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59+05:00")
    ):
        data = partner.booking(f"AUR-TS{number}")
        body = partner.envelope("booking.confirmed", data, timestamp=timestamp)

        reply = await partner.send("aurora", body)

        assert reply.status == 202
    stored = await conn.fetch("SELECT occurred_at FROM partner_events ORDER BY id")
    assert [row["occurred_at"].year for row in stored] == [1, 9999]


async def test_a_huge_integer_is_answered_400_without_interpreter_hints(partner):
    data = {"member_id": "M-1", "wallet": partner.WALLET, "stake_id": "ST-1"}
    body = json.dumps(
        partner.envelope("staking.changed", {**data, "action": "stake"})
    ).replace("}}", ', "amount_wei": ' + "9" * 5001 + "}}")

    reply = await partner.send("tribe", body)

    assert (reply.status, reply.error_code) == (400, "malformed_json")
    message = reply.body["error"]["message"]
    assert message == (
        "an integer of the body has 5001 digits; at most 4300 digits are accepted"
    )
    assert "set_int_max_str_digits" not in message


async def test_a_nul_in_a_booking_id_is_reported_once(partner):
    data = partner.booking("AUR-\u0000-1")

    reply = await partner.send("aurora", partner.envelope("booking.confirmed", data))

    assert reply.status == 422
    assert reply.body["error"]["fields"] == [
        {"path": "data.booking_id", "message": "must not contain control characters"}
    ]


async def test_headers_up_to_8190_bytes_get_json_answers_and_longer_ones_do_not(
    partner,
):
    # Documented in docs/webhooks.md: the HTTP server refuses longer header
    # values before the application sees the request.
    body = partner.envelope("booking.confirmed", partner.booking("AUR-HDR"))
    signature_limit = {"webhook-signature": "v1," + "A" * (8190 - 3)}
    over_limit = {"webhook-signature": "v1," + "A" * (8191 - 3)}

    within = await partner.send("aurora", body, headers=signature_limit)
    beyond = await partner.send("aurora", body, headers=over_limit)

    assert (within.status, within.error_code) == (401, "invalid_signature")
    assert beyond.status == 400
    assert beyond.error_code is None
