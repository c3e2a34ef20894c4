"""Service lifecycle: real `haven listen` and `haven run` processes, signalled
mid-work, and refused on a schema older than the code."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from datetime import UTC, datetime

import asyncpg
import orjson
from ops import processes
from ops.deployments import (
    deployed_environ,
    mints_per_intent,
    seed_ready_intents,
    statuses,
    wait_confirmed,
)
from ops.processes import HAVEN, haven_environ
from standardwebhooks.webhooks import Webhook

from haven import cli, intents, settings
from haven.daemon import service

GUEST = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DUMMY_TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
# What `haven run` waits for its components after SIGTERM (the environment
# of these tests leaves HAVEN_SHUTDOWN_GRACE_S at its default).
DAEMON_GRACE_S = float(
    next(spec.default for spec in settings.FIELDS if spec.key == "shutdown_grace_s")
)


def booking(booking_id: str) -> bytes:
    return orjson.dumps(
        {
            "type": "booking.completed",
            "timestamp": "2026-12-01T10:00:00Z",
            "data": {
                "booking_id": booking_id,
                "guest_id": "G-5521",
                "wallet": GUEST,
                "total_paid_cents": 45000,
                "currency": "CAD",
                "nights": 3,
            },
        }
    )


def signed_headers(secret: str, delivery_id: str, body: bytes) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, now, body.decode()),
    }


async def is_refused(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), 1
        )
    except (ConnectionRefusedError, TimeoutError):
        return True
    # Accepted from the backlog while the listening socket closed: the server
    # may reset it. Either way it was not refused yet; ask again.
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return False


async def read_status(reader: asyncio.StreamReader, timeout_s: float) -> int:
    """Read one HTTP status line and its headers; return the status code."""
    status_line = await asyncio.wait_for(reader.readline(), timeout_s)
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    while (await asyncio.wait_for(reader.readline(), timeout_s)) not in (b"\r\n", b""):
        pass
    return int(status_line.split()[1])


# --- the listener ----------------------------------------------------------------


async def test_listener_sigterm_finishes_a_request_in_flight_and_refuses_new_ones(
    environ, database_url, tmp_path
):
    port = int(environ["HAVEN_LISTEN_PORT"])
    listener = await processes.start("listener", [*HAVEN, "listen"], environ, tmp_path)
    blocker = await asyncpg.connect(database_url)
    try:
        await processes.wait_until(
            lambda: _accepts(port, listener), 30, "the listener to accept"
        )
        body = booking("AUR-INFLIGHT")
        headers = signed_headers(
            environ["HAVEN_WEBHOOK_SECRETS_AURORA"], "msg_inflight", body
        )
        # Hold the intents table so the request is in flight, verified and
        # waiting on PostgreSQL, when SIGTERM lands.
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("LOCK TABLE intents IN EXCLUSIVE MODE")
        answer = asyncio.create_task(_post(port, "/webhooks/aurora", headers, body))
        await processes.wait_until(
            lambda: _waits_on_intents(blocker), 10, "the request to wait on intents"
        )

        listener.signal(signal.SIGTERM)
        await processes.wait_until(
            lambda: is_refused(port), 10, "the listener to stop accepting"
        )
        assert not answer.done()
        await locked.rollback()

        assert await asyncio.wait_for(answer, 30) == 202, listener.log_tail()
        assert await listener.wait_exit(40) == 0
        assert await _intent_status(database_url, "AUR-INFLIGHT") == intents.READY
    finally:
        await blocker.close()
        await listener.stop()


async def test_listener_sigterm_finishes_a_request_whose_body_is_still_arriving(
    environ, database_url, tmp_path
):
    port = int(environ["HAVEN_LISTEN_PORT"])
    listener = await processes.start("listener", [*HAVEN, "listen"], environ, tmp_path)
    try:
        await processes.wait_until(
            lambda: _accepts(port, listener), 30, "the listener to accept"
        )
        body = booking("AUR-UPLOADING")
        headers = signed_headers(
            environ["HAVEN_WEBHOOK_SECRETS_AURORA"], "msg_uploading", body
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request_head("/webhooks/aurora", headers, len(body), expect=True))
        await writer.drain()
        # "100 Continue" comes from the route's handler: the request is in flight.
        assert await read_status(reader, 10) == 100

        listener.signal(signal.SIGTERM)
        await processes.wait_until(
            lambda: is_refused(port), 10, "the listener to stop accepting"
        )
        writer.write(body)
        await writer.drain()
        try:
            status = await read_status(reader, 10)
        except TimeoutError:
            raise AssertionError("no answer within 10 s of the body") from None
        finally:
            writer.close()

        assert status == 202, listener.log_tail()
        assert await listener.wait_exit(40) == 0
        assert await _intent_status(database_url, "AUR-UPLOADING") == intents.READY
    finally:
        await listener.stop()


def _request_head(
    path: str, headers: dict[str, str], length: int, *, expect: bool = False
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"content-length: {length}", "connection: close"]
    if expect:
        lines.append("expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _post(port: int, path: str, headers: dict[str, str], body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request_head(path, headers, len(body)) + body)
        await writer.drain()
        return await read_status(reader, 60)
    finally:
        writer.close()


async def _waits_on_intents(connection: asyncpg.Connection) -> bool:
    waiting = await connection.fetchval(
        "SELECT count(*) FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation "
        "WHERE NOT l.granted AND c.relname = 'intents' "
        "AND l.database = (SELECT oid FROM pg_database "
        "                   WHERE datname = current_database())"
    )
    return bool(waiting)


async def _accepts(port: int, listener: processes.Process) -> bool:
    if listener.process.returncode is not None:
        raise AssertionError(f"listener exited early\n{listener.log_tail()}")
    return not await is_refused(port)


async def _intent_status(dsn: str, booking_id: str) -> str | None:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(
            "SELECT status FROM intents WHERE id = $1",
            intents.derive_id("aurora", "booking", booking_id),
        )
    finally:
        await connection.close()


# --- refusing an outdated schema ---------------------------------------------------


async def test_listen_and_run_refuse_an_unmigrated_database_and_say_to_migrate(
    empty_database_url, redis_prefix, tmp_path
):
    environ = haven_environ(
        empty_database_url, redis_prefix, HAVEN_TOKEN_ADDRESS=DUMMY_TOKEN
    )
    for command in ("listen", "run"):
        started = time.monotonic()
        process = await processes.start(command, [*HAVEN, command], environ, tmp_path)

        code = await process.wait_exit(30)

        log = process.log_path.read_text(encoding="utf-8")
        assert code == cli.EXIT_CONFIG, log
        assert "run `haven migrate`" in log
        assert "Traceback" not in log
        assert time.monotonic() - started < 30


# --- the daemon ----------------------------------------------------------------------


async def half_written(dsn: str) -> list[str]:
    """Return every trace of a step left half done: the crash-safety invariants."""
    connection = await asyncpg.connect(dsn)
    try:
        orphans = await connection.fetchval(
            "SELECT count(*) FROM intents AS i "
            "WHERE i.status IN ('submitted', 'mined', 'confirmed') AND NOT EXISTS "
            "(SELECT 1 FROM tx_attempts AS a "
            " WHERE a.intent_id = i.id AND a.tx_hash = i.tx_hash)"
        )
        signers = await connection.fetch("SELECT address, next_nonce FROM signers")
        problems = (
            [f"{orphans} sent intent(s) without their attempt"] if orphans else []
        )
        for signer in signers:
            used = await connection.fetch(
                "SELECT DISTINCT nonce FROM tx_attempts WHERE signer = $1",
                signer["address"],
            )
            if {row["nonce"] for row in used} != set(range(signer["next_nonce"])):
                problems.append(f"nonce gap or overrun at {signer['address']}")
    finally:
        await connection.close()
    return problems


async def test_daemon_sigterm_mid_batch_exits_cleanly_and_a_restart_mints_the_rest_once(
    database_url, redis_prefix, anvil, tmp_path
):
    environ = await deployed_environ(database_url, redis_prefix, anvil)
    intent_ids = await seed_ready_intents(database_url, 40, prefix="TERM")
    daemon = await processes.start("daemon", [*HAVEN, "run"], environ, tmp_path)
    try:

        async def mid_batch() -> bool:
            found = await statuses(database_url)
            return found[intents.SUBMITTED] + found[intents.MINED] > 0

        await processes.wait_until(mid_batch, 60, "minting to start")
        daemon.signal(signal.SIGTERM)
        signalled_at = time.monotonic()

        assert await daemon.wait_exit(DAEMON_GRACE_S + 10) == 0, daemon.log_tail()
        assert time.monotonic() - signalled_at < DAEMON_GRACE_S
        assert "did not stop in time" not in daemon.log_tail(200)
    finally:
        await daemon.stop()
    assert await half_written(database_url) == []
    assert (await statuses(database_url))[intents.CONFIRMED] < len(intent_ids)

    restarted = await processes.start("restarted", [*HAVEN, "run"], environ, tmp_path)
    try:
        await wait_confirmed(database_url, len(intent_ids), anvil, 60)
    finally:
        await restarted.stop()
    minted = await mints_per_intent(anvil, environ["HAVEN_TOKEN_ADDRESS"])
    assert {i: minted[i] for i in intent_ids} == {i: 1 for i in intent_ids}


class Stubborn:
    """A component that ignores ``stopping``: only cancellation ends it."""

    name = "stubborn"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def run(self, stopping: asyncio.Event) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_daemon_cancels_a_component_still_running_after_the_grace_period(
    database_url, redis_prefix, anvil
):
    environ = haven_environ(
        database_url,
        redis_prefix,
        HAVEN_RPC_URL=anvil.url,
        HAVEN_TOKEN_ADDRESS=DUMMY_TOKEN,
    )
    stubborn = Stubborn()

    async def components(*_: object) -> list[Stubborn]:
        return [stubborn]

    stopping = asyncio.Event()
    daemon = asyncio.create_task(
        service.run(
            settings.load(environ),
            grace_s=0.5,
            components=components,  # type: ignore[arg-type]
            stopping=stopping,
        )
    )
    await asyncio.wait_for(stubborn.started.wait(), 10)
    stopping.set()
    stopped_at = time.monotonic()

    await asyncio.wait_for(daemon, 10)

    assert stubborn.cancelled
    assert 0.5 <= time.monotonic() - stopped_at < 3
