"""The attempt log: every request, accepted or not, and never a secret."""

from __future__ import annotations

import json

from loguru import logger


async def test_every_request_is_logged_with_partner_id_status_and_outcome(
    partner, conn
):
    good = partner.envelope("booking.confirmed", partner.booking("AUR-AT1"))
    await partner.send("aurora", good, delivery_id="msg_ok")
    await partner.send("aurora", good, delivery_id="msg_ok")
    await partner.send(
        "aurora",
        good,
        delivery_id="msg_forged",
        secret=None,
        headers={"webhook-signature": "v1,AAAA"},
    )
    await partner.send("aurora", good, delivery_id="msg_lost", path="/webhooks/zz")
    await partner.send(
        "aurora", b"x", delivery_id="msg_text", content_type="text/plain"
    )

    rows = await conn.fetch(
        "SELECT partner, delivery_id, status_code, outcome, reason, request_id "
        "FROM webhook_attempts ORDER BY id"
    )

    assert [
        (r["partner"], r["delivery_id"], r["status_code"], r["outcome"]) for r in rows
    ] == [
        ("aurora", "msg_ok", 202, "intent_created"),
        ("aurora", "msg_ok", 202, "replayed"),
        ("aurora", "msg_forged", 401, "invalid_signature"),
        ("zz", None, 404, "unknown_partner"),
        ("aurora", None, 415, "unsupported_media_type"),
    ]
    assert all(r["request_id"] for r in rows)
    assert rows[2]["reason"].startswith("no webhook-signature matches")


async def test_a_partner_path_of_garbage_is_logged_as_unreadable(partner, conn):
    await partner.send("aurora", b"{}", path="/webhooks/%00%FF%E2%80%AEevil")

    assert await conn.fetchval("SELECT partner FROM webhook_attempts") == "(unreadable)"


async def test_no_secret_or_signature_reaches_the_database_or_the_logs(
    partner, conn, secrets
):
    lines: list[str] = []
    sink = logger.add(
        lambda message: lines.append(json.dumps(message.record, default=str)), level=0
    )
    sent_signatures = []
    try:
        for number, secret in enumerate(secrets.all()):
            body = json.dumps(
                partner.envelope("booking.confirmed", partner.booking(f"AUR-S{number}"))
            ).encode()
            headers = partner.sign(
                "aurora", body, delivery_id=f"msg_s{number}", secret=secret
            )
            headers["Content-Type"] = "application/json"
            sent_signatures.append(headers["webhook-signature"].removeprefix("v1,"))
            await partner.post("/webhooks/aurora", body, headers)
            await partner.post("/webhooks/tribe", body, headers)
    finally:
        logger.remove(sink)

    dumps = []
    for table in (
        "webhook_attempts",
        "webhook_deliveries",
        "partner_events",
        "security_alerts",
        "intents",
        "intent_events",
    ):
        rows = await conn.fetch(f"SELECT * FROM {table}")
        dumps.append(repr([dict(row) for row in rows]))
    everything = "\n".join(dumps + lines)
    assert len(await conn.fetch("SELECT 1 FROM webhook_attempts")) == 6
    for secret in secrets.all():
        assert secret not in everything
        assert secret.removeprefix("whsec_") not in everything
    for signature in sent_signatures:
        assert signature not in everything


async def test_a_request_that_fails_unexpectedly_is_logged_as_a_500(partner, conn):
    # A fault on the server's side, not in the request: storing the event fails.
    await conn.execute(
        """
        CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'partner_events is read-only in this test'; END $$;
        CREATE TRIGGER refuse_events BEFORE INSERT ON partner_events
        FOR EACH ROW EXECUTE FUNCTION refuse_events();
        """
    )
    body = partner.envelope("booking.confirmed", partner.booking("AUR-AT500"))

    reply = await partner.send("aurora", body, delivery_id="msg_500")

    assert (reply.status, reply.error_code) == (500, "internal_error")
    row = await conn.fetchrow(
        "SELECT partner, delivery_id, status_code, outcome, reason, request_id "
        "FROM webhook_attempts"
    )
    assert (row["partner"], row["delivery_id"]) == ("aurora", "msg_500")
    assert (row["status_code"], row["outcome"]) == (500, "internal_error")
    assert row["reason"].startswith("unexpected RaiseError")
    assert row["request_id"] == reply.headers["X-Request-Id"]
    assert await conn.fetchval("SELECT count(*) FROM intents") == 0


async def test_an_accepted_delivery_commits_with_its_attempt(partner, conn):
    body = partner.envelope("booking.confirmed", partner.booking("AUR-AT-TX"))

    reply = await partner.send("aurora", body, delivery_id="msg_tx")

    assert reply.status == 202
    # One transaction wrote the claim, the intent, the event and the
    # attempt: no accepted delivery is left without its attempt row.
    transactions = await conn.fetch(
        """
        SELECT xmin::text FROM webhook_deliveries WHERE delivery_id = 'msg_tx'
        UNION SELECT xmin::text FROM webhook_attempts WHERE delivery_id = 'msg_tx'
        UNION SELECT xmin::text FROM partner_events WHERE delivery_id = 'msg_tx'
        UNION SELECT xmin::text FROM intents
        UNION SELECT xmin::text FROM intent_events
        """
    )
    assert len(transactions) == 1
    assert await conn.fetchval("SELECT count(*) FROM webhook_attempts") == 1
