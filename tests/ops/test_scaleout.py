"""Scale-out: several daemons share the signers through PostgreSQL leases, and
several listeners share PostgreSQL and Redis.

The lease tests run the lease part of a daemon as real processes
(``lease_holder.py``) and kill or freeze them; the daemon tests run
``haven run`` twice against one chain and count the mints the chain saw.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from ops import processes
from ops.deployments import (
    deployed_environ,
    mints_per_intent,
    seed_ready_intents,
    statuses,
    wait_confirmed,
)
from ops.processes import HAVEN
from standardwebhooks.webhooks import Webhook

from harness import chainsetup
from harness.anvil import AnvilNode, free_port
from haven import intents
from haven.daemon import submitter
from haven.daemon.leases import LeaseLostError, Leases, lock_key

HOLDER = Path(__file__).with_name("lease_holder.py")
POLL_MS = 100
TTL_MS = 1000


async def lease_owners(dsn: str, name: str) -> list[str]:
    """Return the application names of the sessions holding lease ``name``."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE pid = ANY($1)",
            await lock_holders(dsn, name),
        )
    finally:
        await connection.close()
    return [row["application_name"] for row in rows]


async def lock_holders(dsn: str, name: str) -> list[int]:
    """Return the pids of the sessions holding the advisory lock of ``name``."""
    unsigned = lock_key(name) & 0xFFFF_FFFF_FFFF_FFFF
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 1 AND classid::bigint = $1 AND objid::bigint = $2 "
            "AND database = (SELECT oid FROM pg_database "
            "               WHERE datname = current_database())",
            unsigned >> 32,
            unsigned & 0xFFFF_FFFF,
        )
    finally:
        await connection.close()
    return [row["pid"] for row in rows]


HolderStarter = Callable[[str, list[str]], Awaitable[processes.Process]]


@asynccontextmanager
async def holders(dsn: str, tmp_path: Path) -> AsyncIterator[HolderStarter]:
    """Yield a function that starts lease holder processes; stop them all after."""
    started: list[processes.Process] = []

    async def start(name: str, names: list[str]) -> processes.Process:
        args = [sys.executable, str(HOLDER), dsn, str(POLL_MS), str(TTL_MS)]
        holder = await processes.start(name, [*args, ",".join(names)], {}, tmp_path)
        started.append(holder)
        assert await holder.next_line(10) == {"held": []}
        return holder

    try:
        yield start
    finally:
        for holder in started:
            holder.signal(signal.SIGCONT)
            await holder.stop()


def holds(*names: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line["held"] == list(names)


@asynccontextmanager
async def running(leases: Leases) -> AsyncIterator[asyncio.Event]:
    stopping = asyncio.Event()
    task = asyncio.create_task(leases.run(stopping))
    try:
        yield stopping
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


def fixed(*names: str):  # type: ignore[no-untyped-def]
    async def wanted() -> list[str]:
        return list(names)

    return wanted


# --- leases between real processes ------------------------------------------


async def test_standby_takes_over_within_a_poll_when_the_active_daemon_is_killed(
    database_url, tmp_path
):
    async with holders(database_url, tmp_path) as start:
        active = await start("active", ["0xSIGNER"])
        await active.until_line(holds("0xSIGNER"), 10)
        standby = await start("standby", ["0xSIGNER"])

        active.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await standby.until_line(holds("0xSIGNER"), 10)
        takeover_s = time.monotonic() - killed_at

        assert takeover_s < 3 * POLL_MS / 1000 + 1.0
        assert len(await lock_holders(database_url, "0xSIGNER")) == 1


async def test_a_frozen_daemon_stops_counting_its_lease_before_the_standby_gets_it(
    database_url, tmp_path
):
    async with holders(database_url, tmp_path) as start:
        frozen = await start("frozen", ["0xSIGNER"])
        await frozen.until_line(holds("0xSIGNER"), 10)
        standby = await start("standby", ["0xSIGNER"])

        # SIGSTOP is a partition as the database sees it: the socket stays
        # open and nothing is sent. Only the session timeout can free the lock.
        frozen.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        await standby.until_line(holds("0xSIGNER"), 10)
        assert time.monotonic() - stopped_at >= TTL_MS / 1000 * 0.9

        frozen.signal(signal.SIGCONT)
        # Its very next word is that it holds nothing: it cannot resume work.
        assert await frozen.next_line(10) == {"held": []}
        assert len(await lock_holders(database_url, "0xSIGNER")) == 1


async def test_two_daemons_share_the_signers_without_overlap(database_url, tmp_path):
    names = ["0xA", "0xB", "0xC", "0xD"]
    async with holders(database_url, tmp_path) as start:
        first = await start("first", names)
        await first.until_line(holds(*names), 10)
        second = await start("second", names)

        mine = await second.until_line(lambda line: len(line["held"]) == 2, 10)
        theirs = await first.until_line(lambda line: len(line["held"]) == 2, 10)
        assert set(mine["held"]).isdisjoint(theirs["held"])
        for name in names:
            assert len(await lock_holders(database_url, name)) == 1

        second.signal(signal.SIGTERM)
        # The survivor takes the whole set back.
        await first.until_line(holds(*names), 10)


async def test_sigterm_releases_the_lease_at_once_for_the_standby(
    database_url, tmp_path
):
    async with holders(database_url, tmp_path) as start:
        active = await start("active", ["0xSIGNER"])
        await active.until_line(holds("0xSIGNER"), 10)
        standby = await start("standby", ["0xSIGNER"])

        active.signal(signal.SIGTERM)

        assert await active.next_line(5) == {"held": []}
        assert await active.wait_exit(10) == 0
        await standby.until_line(holds("0xSIGNER"), 5)


# --- the lease API the submitter uses ----------------------------------------


async def test_a_lease_ends_the_moment_its_connection_is_killed(database_url):
    # A poll slower than the test proves it is the socket, not the poll,
    # that ends the lease.
    leases = Leases(database_url, fixed("0xSIGNER"), poll_ms=5000, ttl_ms=15000)
    async with running(leases):
        held = await asyncio.wait_for(leases.wait_changed(frozenset()), 10)
        assert held == {"0xSIGNER"}
        [pid] = await lock_holders(database_url, "0xSIGNER")

        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()

        assert await asyncio.wait_for(leases.wait_changed(held), 2) == frozenset()


async def test_fence_admits_only_the_daemon_whose_session_holds_the_lock(
    database_url,
):
    first = Leases(database_url, fixed("0xSIGNER"), poll_ms=POLL_MS, ttl_ms=TTL_MS)
    second = Leases(database_url, fixed("0xSIGNER"), poll_ms=POLL_MS, ttl_ms=TTL_MS)
    connection = await asyncpg.connect(database_url)
    try:
        async with running(first) as first_stopping:
            await asyncio.wait_for(first.wait_changed(frozenset()), 10)
            async with running(second):
                async with connection.transaction():
                    await first.fence(connection, "0xSIGNER")
                    with pytest.raises(LeaseLostError):
                        await second.fence(connection, "0xSIGNER")

                first_stopping.set()
                await asyncio.wait_for(second.wait_changed(frozenset()), 10)
                async with connection.transaction():
                    await second.fence(connection, "0xSIGNER")
                    with pytest.raises(LeaseLostError):
                        await first.fence(connection, "0xSIGNER")
    finally:
        await connection.close()


async def test_stopping_hides_the_lease_but_keeps_the_lock_until_steps_end(
    database_url,
):
    leases = Leases(database_url, fixed("0xSIGNER"), poll_ms=POLL_MS, ttl_ms=TTL_MS)
    stopping = asyncio.Event()
    task = asyncio.create_task(leases.run(stopping))
    try:
        await asyncio.wait_for(leases.wait_changed(frozenset()), 10)
        async with leases.step("0xSIGNER"):
            stopping.set()
            assert leases.held() == frozenset()
            with pytest.raises(LeaseLostError):
                async with leases.step("0xSIGNER"):
                    pass
            assert await lock_holders(database_url, "0xSIGNER") != []
            assert not task.done()
        await asyncio.wait_for(task, 10)
        assert await lock_holders(database_url, "0xSIGNER") == []
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


# --- two real daemons on one chain ---------------------------------------------


async def signer_addresses(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT address FROM signers ORDER BY address")
    finally:
        await connection.close()
    return [row["address"] for row in rows]


class Daemons:
    """Real `haven run` processes, told apart by the pid in their lease session."""

    def __init__(self, dsn: str, started: list[processes.Process]) -> None:
        self.dsn = dsn
        self.by_pid = {daemon.pid: daemon for daemon in started}

    async def owner(self, lease: str) -> processes.Process | None:
        """Return the one daemon holding ``lease``, or None."""
        owners = await lease_owners(self.dsn, lease)
        pids = [int(owner.rsplit(":", 1)[1]) for owner in owners]
        return self.by_pid.get(pids[0]) if len(pids) == 1 else None

    async def stop(self) -> None:
        for daemon in self.by_pid.values():
            await daemon.stop()


async def nonces_agree_with_the_chain(dsn: str, node: AnvilNode) -> dict[str, int]:
    """Per signer, the mints the chain counts; fail on any gap or double use."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT address, next_nonce FROM signers")
        counted = {}
        for row in rows:
            used = await connection.fetch(
                "SELECT DISTINCT nonce FROM tx_attempts WHERE signer = $1",
                row["address"],
            )
            assert {r["nonce"] for r in used} == set(range(row["next_nonce"]))
            on_chain = await chainsetup.nonce_of(node, row["address"])
            assert on_chain == row["next_nonce"], row["address"]
            counted[row["address"]] = on_chain
    finally:
        await connection.close()
    return counted


async def test_standby_daemon_takes_over_minting_with_no_double_and_no_lost_mint(
    database_url, redis_prefix, anvil, tmp_path
):
    environ = await deployed_environ(database_url, redis_prefix, anvil)
    [signer] = await signer_addresses(database_url)
    intent_ids = await seed_ready_intents(database_url, 40, prefix="SCALE")
    first = await processes.start("first", [*HAVEN, "run"], environ, tmp_path)
    second = await processes.start("second", [*HAVEN, "run"], environ, tmp_path)
    daemons = Daemons(database_url, [first, second])
    try:

        async def minting_started() -> bool:
            found = await statuses(database_url)
            return found[intents.READY] < len(intent_ids)

        await processes.wait_until(minting_started, 60, "the first mints")
        active = await daemons.owner(submitter.lease_of(signer))
        assert active is not None
        standby = second if active is first else first

        active.signal(signal.SIGKILL)
        killed_at = time.monotonic()

        async def standby_signs() -> bool:
            return await daemons.owner(submitter.lease_of(signer)) is standby

        await processes.wait_until(standby_signs, 15, "the standby to take over")
        takeover_s = time.monotonic() - killed_at
        await wait_confirmed(database_url, len(intent_ids), anvil, 90)

        minted = await mints_per_intent(anvil, environ["HAVEN_TOKEN_ADDRESS"])
        assert {intent_id: minted[intent_id] for intent_id in intent_ids} == {
            intent_id: 1 for intent_id in intent_ids
        }
        assert sum(minted.values()) == len(intent_ids)
        assert takeover_s < 5, takeover_s
    finally:
        await daemons.stop()


async def test_two_daemons_sign_for_one_signer_each_and_a_killed_ones_moves(
    database_url, redis_prefix, anvil, tmp_path
):
    environ = await deployed_environ(
        database_url,
        redis_prefix,
        anvil,
        signers=2,
        HAVEN_LOG_FORMAT="json",
        HAVEN_MAX_IN_FLIGHT="2",
    )
    signers = await signer_addresses(database_url)
    leases = [submitter.lease_of(address) for address in signers]
    first = await processes.start("first", [*HAVEN, "run"], environ, tmp_path)
    second = await processes.start("second", [*HAVEN, "run"], environ, tmp_path)
    daemons = Daemons(database_url, [first, second])
    try:

        async def one_signer_each() -> bool:
            owners = [await daemons.owner(lease) for lease in leases]
            return None not in owners and owners[0] is not owners[1]

        await processes.wait_until(one_signer_each, 30, "the signers to be shared")
        # Seeded only now, so that both daemons have work to overlap on; a
        # block a second, two mints each, make the batch outlast the kill.
        await anvil.rpc("evm_setIntervalMining", [1])
        intent_ids = await seed_ready_intents(database_url, 60, prefix="SHARE")

        async def both_signing() -> bool:
            return all([await signed_by(database_url, signer) for signer in signers])

        await processes.wait_until(both_signing, 60, "both signers to sign")
        victim = await daemons.owner(leases[0])
        assert victim is not None
        survivor = second if victim is first else first
        victim.signal(signal.SIGKILL)

        async def survivor_holds_both() -> bool:
            owners = [await daemons.owner(lease) for lease in leases]
            return owners == [survivor, survivor]

        await processes.wait_until(survivor_holds_both, 15, "the signer to move")
        await wait_confirmed(database_url, len(intent_ids), anvil, 120)
    finally:
        await daemons.stop()

    minted = await mints_per_intent(anvil, environ["HAVEN_TOKEN_ADDRESS"])
    assert {intent_id: minted[intent_id] for intent_id in intent_ids} == {
        intent_id: 1 for intent_id in intent_ids
    }
    assert sum(minted.values()) == len(intent_ids)
    per_signer = await nonces_agree_with_the_chain(database_url, anvil)
    assert sum(per_signer.values()) == len(intent_ids)
    assert all(count > 0 for count in per_signer.values()), per_signer
    # No overlap: until it died, the victim touched its own signer only.
    assert worked_for(victim) == {signers[0]}
    assert worked_for(survivor) == set(signers)


def worked_for(daemon: processes.Process) -> set[str]:
    """Return the signers a daemon signed, sent or bumped for, from its JSON log."""
    found = set()
    for line in daemon.log_path.read_text(encoding="utf-8").splitlines():
        try:
            record = orjson.loads(line)["record"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if record["message"] in ("tx signed", "tx broadcast", "tx bumped"):
            found.add(record["extra"]["signer"])
    return found


async def signed_by(dsn: str, signer: str) -> bool:
    connection = await asyncpg.connect(dsn)
    try:
        found = await connection.fetchval(
            "SELECT count(*) FROM tx_attempts WHERE signer = $1", signer
        )
    finally:
        await connection.close()
    return bool(found)


# --- components that run in one daemon at a time -------------------------------


class Recorder:
    """A component that writes down how it started and ended."""

    def __init__(self, name: str, owner: str, journal: list[str]) -> None:
        self.name = name
        self._label = f"{owner}:{name}"
        self._journal = journal

    async def run(self, stopping: asyncio.Event) -> None:
        self._journal.append(f"{self._label} started")
        try:
            await stopping.wait()
        except asyncio.CancelledError:
            self._journal.append(f"{self._label} cancelled")
            raise
        self._journal.append(f"{self._label} stopped")


@asynccontextmanager
async def daemon_with(
    dsn: str, owner: str, jobs: tuple[str, ...], journal: list[str]
) -> AsyncIterator[tuple[Leases, asyncio.Event]]:
    """Run a daemon's leases and one exclusive Recorder per job, in-process."""
    leases = Leases(dsn, fixed(*jobs), poll_ms=POLL_MS, ttl_ms=TTL_MS)
    parts = [leases] + [
        leases.exclusive(job, lambda job=job: Recorder(job, owner, journal))
        for job in jobs
    ]
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(part.run(stopping)) for part in parts]
    try:
        yield leases, stopping
    finally:
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def until(journal: list[str], entry: str) -> None:
    async def written() -> bool:
        return entry in journal

    await processes.wait_until(written, 10, repr(entry))


async def test_an_exclusive_component_is_cancelled_at_once_when_its_lease_is_lost(
    database_url,
):
    journal: list[str] = []
    async with daemon_with(database_url, "first", ("job",), journal):
        await until(journal, "first:job started")
        async with daemon_with(database_url, "second", ("job",), journal):
            [pid] = await lock_holders(database_url, "job")
            admin = await asyncpg.connect(database_url)
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()

            await until(journal, "second:job started")

            await until(journal, "first:job cancelled")

    # The server freed the lock the moment it ended the session; this daemon
    # learns it from its socket a moment later. That instant is why writes are
    # fenced and why the chain, not the lease, forbids a second mint.
    assert journal[0] == "first:job started"
    assert "first:job stopped" not in journal


async def test_a_daemon_hands_a_component_over_gracefully_to_a_new_peer(database_url):
    journal: list[str] = []
    async with daemon_with(database_url, "first", ("a", "b"), journal):
        await until(journal, "first:a started")
        await until(journal, "first:b started")
        async with daemon_with(database_url, "second", ("a", "b"), journal):
            await until(journal, "second:b started")

            assert journal.index("first:b stopped") < journal.index("second:b started")
            assert "first:a stopped" not in journal
            assert not any("cancelled" in entry for entry in journal)


# --- two real listeners on one database and Redis ---------------------------------


def booking_body(booking_id: str) -> bytes:
    return orjson.dumps(
        {
            "type": "booking.completed",
            "timestamp": "2026-12-01T10:00:00Z",
            "data": {
                "booking_id": booking_id,
                "guest_id": "G-5521",
                "wallet": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
                "total_paid_cents": 45000,
                "currency": "CAD",
                "nights": 3,
            },
        }
    )


async def deliver(
    session: aiohttp.ClientSession, url: str, secret: str, delivery_id: str, body: bytes
) -> tuple[int, dict[str, Any]]:
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, now, body.decode()),
    }
    async with session.post(f"{url}/webhooks/aurora", data=body, headers=headers) as r:
        return r.status, await r.json()


async def test_two_listeners_given_the_same_deliveries_at_once_make_one_intent_each(
    environ, database_url, tmp_path
):
    other = environ | {"HAVEN_LISTEN_PORT": str(free_port())}
    listeners = [
        await processes.start("listener-a", [*HAVEN, "listen"], environ, tmp_path),
        await processes.start("listener-b", [*HAVEN, "listen"], other, tmp_path),
    ]
    urls = [f"http://127.0.0.1:{env['HAVEN_LISTEN_PORT']}" for env in (environ, other)]
    secret = environ["HAVEN_WEBHOOK_SECRETS_AURORA"]
    bookings = [f"AUR-SCALE-{index}" for index in range(15)]
    try:
        for url, listener in zip(urls, listeners, strict=True):
            await processes.wait_http(f"{url}/healthz", listener)
        async with aiohttp.ClientSession() as session:
            # Each booking arrives at both listeners at once under one delivery
            # id, and again under a second id (a partner's fresh delivery).
            answers = await asyncio.gather(
                *(
                    deliver(session, url, secret, f"msg_{kind}_{booking}", body)
                    for booking in bookings
                    for body in [booking_body(booking)]
                    for kind in ("first", "again")
                    for url in urls
                )
            )
    finally:
        for listener in listeners:
            await listener.stop()

    assert {status for status, _ in answers} == {202}
    by_booking: dict[str, set[str]] = {}
    for booking, (_, body) in zip(
        [b for b in bookings for _ in range(4)], answers, strict=True
    ):
        by_booking.setdefault(booking, set()).add(body["intent_id"])
    assert all(len(ids) == 1 for ids in by_booking.values()), by_booking
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT i.source_key, count(e.id) AS created FROM intents AS i "
            "JOIN intent_events AS e ON e.intent_id = i.id AND e.from_status IS NULL "
            "GROUP BY i.source_key"
        )
    finally:
        await connection.close()
    assert {row["source_key"]: row["created"] for row in rows} == {
        booking: 1 for booking in bookings
    }
