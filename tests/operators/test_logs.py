"""Logs: JSON lines carrying the request id, and no secret ever written."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from loguru import logger
from operators.support import ADMIN_KEY, OTHER_ADMIN_KEY, WALLET
from standardwebhooks.webhooks import Webhook

from haven import logs, settings
from haven.settings import Settings

DB_PASSWORD = "pg-pass-Zq81xK"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    sink = io.StringIO()
    yield sink
    logger.remove()
    logger.add(sys.stderr)


def secrets_of(loaded: Settings) -> list[str]:
    found = [ADMIN_KEY, OTHER_ADMIN_KEY, DB_PASSWORD]
    for partner in ("aurora", "tribe"):
        for secret in loaded.webhook_secrets(partner):
            found += [secret, secret.removeprefix("whsec_")]
    found += list(loaded.master_key.reveal())
    return found


def booking_body() -> str:
    data = {
        "booking_id": "AUR-log-1",
        "guest_id": "G-1",
        "wallet": WALLET,
        "total_paid_cents": 1000,
        "currency": "CAD",
        "nights": 1,
    }
    envelope = {"type": "booking.completed", "timestamp": "2026-12-01T10:00:00Z"}
    return json.dumps(envelope | {"data": data})


async def test_no_secret_reaches_the_logs_whatever_the_requests_carry(
    start_service, database_url, captured
):
    dsn = database_url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    overrides = {
        "HAVEN_DATABASE_URL": dsn,
        "HAVEN_LOG_FORMAT": "json",
        "HAVEN_LOG_LEVEL": "debug",
    }
    async with start_service(**overrides) as service:
        logs.configure(service.settings, process="listener", sink=captured)
        secret = service.settings.webhook_secrets("aurora")[0]
        body = booking_body()
        sent_at = datetime.now(UTC)
        signature = Webhook(secret).sign("msg_log_1", sent_at, body)
        signed = {
            "webhook-id": "msg_log_1",
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signature,
            "Content-Type": "application/json",
            "X-Request-Id": "req-log-webhook-1",
        }
        client = service.client
        accepted = await client.post(
            "/webhooks/aurora", data=body.encode(), headers=signed, key=None
        )
        forged = dict(signed, **{"webhook-signature": f"v1,{secret[6:]}"})
        await client.post("/webhooks/aurora", data=body.encode(), headers=forged)
        await client.get("/api/v1/admin/intents", key=secret)
        await client.get("/api/v1/admin/audit", key=OTHER_ADMIN_KEY)
        await client.get("/readyz", key=ADMIN_KEY)
        await client.get("/metrics")
        # A careless line elsewhere: the redactor is the last line of defence.
        logger.info(f"careless {ADMIN_KEY} {secret} {dsn} Bearer {OTHER_ADMIN_KEY}")
        logger.opt(exception=ValueError(f"bad {secret}")).error("failed")
        text = captured.getvalue()
        loaded = service.settings

    assert accepted.status == 202
    leaked = [s for s in secrets_of(loaded) if s in text]
    assert leaked == []
    assert signature.split(",", 1)[1] not in text
    assert "********" in text
    records = [json.loads(line) for line in text.splitlines()]
    extras = [record["record"]["extra"] for record in records]
    assert {"request_id": "req-log-webhook-1"}.items() <= next(
        e for e in extras if e.get("request_id") == "req-log-webhook-1"
    ).items()
    assert all(e["process"] == "listener" for e in extras)


def test_a_text_line_escapes_control_characters_in_its_message(captured):
    logs.configure(None, process="listener", sink=captured)
    try:
        logger.info("GET /nope\n17:40:00.000 CRITICAL forged\x00 404")
    finally:
        logger.configure(patcher=None)

    [line] = captured.getvalue().splitlines()
    assert "GET /nope\\n17:40:00.000 CRITICAL forged\\x00 404" in line


def test_a_correlated_block_binds_the_request_id_to_every_line(captured):
    logs.configure(None, process="daemon", sink=captured)

    with logs.correlated("req-from-intent-7"):
        logger.info("tx broadcast")
    logger.info("outside")

    lines = captured.getvalue().splitlines()
    assert "req-from-intent-7" in lines[0]
    assert "req-from-intent-7" not in lines[1]


def test_records_of_libraries_using_logging_are_json_lines_too(captured):
    environ = {
        "HAVEN_DATABASE_URL": f"postgresql://haven:{DB_PASSWORD}@127.0.0.1/haven",
        "HAVEN_RPC_URL": "http://127.0.0.1:8545",
        "HAVEN_CHAIN_ID": "31337",
        "HAVEN_WEBHOOK_SECRETS_AURORA": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "HAVEN_WEBHOOK_SECRETS_TRIBE": "whsec_dGhpcyBpcyBhIHRyaWJlIHNlY3JldCE=",
        "HAVEN_MASTER_KEY": "J2rj1jjyqvKSMUlhqEy1s5EK2eoX5P3hwKEu4hs7Xms=",
        "HAVEN_ADMIN_API_KEYS": ADMIN_KEY,
        "HAVEN_LOG_FORMAT": "json",
    }
    logs.configure(settings.load(environ), process="listener", sink=captured)
    try:
        try:
            raise ConnectionRefusedError("connect call failed")
        except ConnectionRefusedError:
            logging.getLogger("asyncpg.pool").exception(
                "Failed to restore the pool connection floor"
            )
    finally:
        logging.basicConfig(handlers=[], force=True)

    lines = captured.getvalue().splitlines()
    (record,) = [json.loads(line)["record"] for line in lines]
    assert record["message"] == "Failed to restore the pool connection floor"
    assert record["level"]["name"] == "ERROR"
    assert record["extra"]["library"] == "asyncpg.pool"
    assert "ConnectionRefusedError" in json.loads(lines[0])["text"]


def test_a_library_warning_with_an_exception_is_one_line(captured):
    logs.configure(None, process="listener", sink=captured)
    try:
        try:
            raise ConnectionRefusedError("connect call failed")
        except ConnectionRefusedError:
            logging.getLogger("asyncpg.pool").warning(
                "Failed to restore the pool connection floor", exc_info=True
            )
    finally:
        logging.basicConfig(handlers=[], force=True)

    [line] = captured.getvalue().splitlines()
    assert (
        " WARNING haven.logs Failed to restore the pool connection floor: "
        "ConnectionRefusedError: connect call failed {" in line
    )


def test_routine_scheduler_lines_are_heard_only_at_debug(captured):
    logs.configure(None, process="reconciler", sink=captured)
    try:
        logging.getLogger("apscheduler.scheduler").info("Adding job tentatively")
        logging.getLogger("apscheduler.scheduler").warning("job missed by 5 s")
    finally:
        logging.basicConfig(handlers=[], force=True)

    lines = captured.getvalue().splitlines()
    assert len(lines) == 1 and "job missed by 5 s" in lines[0]
