"""Breaker states across processes: ``breaker_states`` and ``breaker_resets``.

A circuit breaker lives in the memory of the daemon that runs it; the admin
API that shows and resets it runs in the listener. Each daemon's
:class:`Reporter` writes the state of its breakers every few seconds and at
once after a change or a reset, and applies every reset request newer than
its own start exactly once. Wake-ups travel by ``NOTIFY``, so a reset takes
effect in milliseconds; the periodic report is the fallback and the
heartbeat that tells a live daemon from a dead one. The rows of a process
that died without removing them are shown as stale for a while, then
forgotten.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from loguru import logger

from haven import db
from haven.daemon.breaker import BreakerSnapshot, CircuitBreaker
from haven.errors import DatabaseUnavailableError

RESETS_CHANNEL = "haven_breaker_resets"
REPORTS_CHANNEL = "haven_breaker_reports"
REPORT_INTERVAL_S = 2.0
# A process that has not reported for this long is shown as stale.
STALE_AFTER_S = 5 * REPORT_INTERVAL_S
# ...and after this long it is taken for dead (killed without removing its
# rows): no longer listed, and deleted by the next report of any process.
FORGET_AFTER_S = 30 * STALE_AFTER_S


def process_name() -> str:
    """Name this process as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Reported:
    """One breaker of one process, as last reported."""

    process: str
    name: str
    state: str
    consecutive_failures: int
    opened_for_s: float | None
    retry_in_s: float | None
    reset_id: int
    reported_at: datetime
    age_s: float

    @property
    def is_stale(self) -> bool:
        return self.age_s > STALE_AFTER_S


async def report(
    connection: asyncpg.Connection,
    process: str,
    snapshots: Iterable[BreakerSnapshot],
    *,
    reset_id: int,
) -> None:
    """Store the state of a process's breakers and notify whoever waits.

    Also deletes the rows of processes silent for :data:`FORGET_AFTER_S`.
    """
    await connection.execute(
        "DELETE FROM breaker_states "
        "WHERE reported_at < now() - make_interval(secs => $1)",
        FORGET_AFTER_S,
    )
    for snap in snapshots:
        await connection.execute(
            """
            INSERT INTO breaker_states (process, name, state, consecutive_failures,
                                        opened_for_s, retry_in_s, reset_id,
                                        reported_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, now())
            ON CONFLICT (process, name) DO UPDATE SET
                state = EXCLUDED.state,
                consecutive_failures = EXCLUDED.consecutive_failures,
                opened_for_s = EXCLUDED.opened_for_s,
                retry_in_s = EXCLUDED.retry_in_s,
                reset_id = EXCLUDED.reset_id,
                reported_at = now()
            """,
            process,
            snap.name,
            snap.state,
            snap.consecutive_failures,
            snap.opened_for_s,
            snap.retry_in_s,
            reset_id,
        )
    await connection.execute("SELECT pg_notify($1, $2)", REPORTS_CHANNEL, process)


async def forget(connection: asyncpg.Connection, process: str) -> None:
    """Remove the rows of a process that stops."""
    await connection.execute("DELETE FROM breaker_states WHERE process = $1", process)


async def reported(
    connection: asyncpg.Connection, name: str | None = None
) -> list[Reported]:
    """Return the reported breakers (of one name, or all), by name and process.

    Rows of processes silent for :data:`FORGET_AFTER_S` are left out.
    """
    rows = await connection.fetch(
        """
        SELECT *, extract(epoch FROM now() - reported_at)::float8 AS age_s
          FROM breaker_states
         WHERE ($1::text IS NULL OR name = $1)
           AND reported_at >= now() - make_interval(secs => $2)
         ORDER BY name, process
        """,
        name,
        FORGET_AFTER_S,
    )
    return [Reported(**dict(row)) for row in rows]


async def request_reset(
    connection: asyncpg.Connection,
    name: str,
    *,
    requested_by: str,
    request_id: str | None,
) -> int:
    """Ask every daemon to close breaker ``name``; return the request id.

    The notification is delivered when the caller's transaction commits.
    """
    reset_id: int = await connection.fetchval(
        "INSERT INTO breaker_resets (name, requested_by, request_id) "
        "VALUES ($1, $2, $3) RETURNING id",
        name,
        requested_by,
        request_id,
    )
    await connection.execute("SELECT pg_notify($1, $2)", RESETS_CHANNEL, name)
    return reset_id


async def wait_applied(
    pool: asyncpg.Pool, name: str, reset_id: int, *, timeout_s: float
) -> list[Reported]:
    """Wait until every live daemon running ``name`` applied ``reset_id``.

    Returns the live rows of ``name`` as last seen: all applied, or some not
    yet when ``timeout_s`` ran out; empty when no live daemon runs it.
    """
    changed = asyncio.Event()

    def wake(*_: object) -> None:
        changed.set()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with db.translate_errors(), pool.acquire() as connection:
        db.keep_session_state(connection)
        await connection.add_listener(REPORTS_CHANNEL, wake)
        try:
            while True:
                changed.clear()
                live = [r for r in await reported(connection, name) if not r.is_stale]
                remaining_s = deadline - loop.time()
                if all(r.reset_id >= reset_id for r in live) or remaining_s <= 0:
                    return live
                await _sleep_unless(changed, remaining_s)
        finally:
            await connection.remove_listener(REPORTS_CHANNEL, wake)


class Reporter:
    """Reports one process's breakers and applies reset requests to them.

    Owned by the daemon's ``http`` component; :meth:`run` returns when
    ``stopping`` is set, after removing the process's rows.
    """

    def __init__(
        self, pool: asyncpg.Pool, breakers: Iterable[CircuitBreaker] = ()
    ) -> None:
        self.pool = pool
        self.breakers = {breaker.name: breaker for breaker in breakers}
        self.process = process_name()
        self._applied_id: int | None = None
        self._wake = asyncio.Event()

    def watch(self, breaker: CircuitBreaker) -> None:
        """Report ``breaker`` from now on, in place of one of the same name.

        For breakers made after start-up, e.g. by a component created when
        its lease is won; safe to call from any task of the loop.
        """
        self.breakers[breaker.name] = breaker
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Report until ``stopping``; a database outage only delays reports."""
        while not stopping.is_set():
            if not self.breakers:
                self._wake.clear()
                await _sleep_unless(stopping, REPORT_INTERVAL_S, self._wake)
                continue
            try:
                await self._session(stopping)
            except (DatabaseUnavailableError, asyncpg.PostgresError) as exc:
                logger.bind(error=type(exc).__name__).warning(
                    "breaker states not reported; reconnecting in a moment"
                )
                await _sleep_unless(stopping, REPORT_INTERVAL_S)

    async def _session(self, stopping: asyncio.Event) -> None:
        # One connection per session: it carries the LISTEN, so it is held
        # until the process stops or the connection fails.
        async with db.translate_errors(), self.pool.acquire() as connection:
            if self._applied_id is None:
                # Requests made before this process started are not for it.
                self._applied_id = await connection.fetchval(
                    "SELECT coalesce(max(id), 0) FROM breaker_resets"
                )
            db.keep_session_state(connection)
            await connection.add_listener(RESETS_CHANNEL, self._on_reset)
            try:
                while not stopping.is_set():
                    self._wake.clear()
                    await self.round(connection)
                    await _sleep_unless(stopping, REPORT_INTERVAL_S, self._wake)
            finally:
                await asyncio.shield(self._close(connection))

    def _on_reset(self, *_: object) -> None:
        self._wake.set()

    async def round(self, connection: asyncpg.Connection) -> None:
        """Apply new reset requests, then report every breaker once."""
        applied_id = self._applied_id or 0
        rows = await connection.fetch(
            "SELECT id, name, requested_by FROM breaker_resets "
            "WHERE id > $1 ORDER BY id",
            applied_id,
        )
        for row in rows:
            self._applied_id = row["id"]
            breaker = self.breakers.get(row["name"])
            if breaker is None:
                continue
            breaker.reset()
            logger.bind(breaker=row["name"], by=row["requested_by"]).info(
                "breaker reset by an operator"
            )
        snapshots = [breaker.snapshot() for breaker in self.breakers.values()]
        await report(
            connection, self.process, snapshots, reset_id=self._applied_id or 0
        )

    async def _close(self, connection: asyncpg.Connection) -> None:
        try:
            await connection.remove_listener(RESETS_CHANNEL, self._on_reset)
            await forget(connection, self.process)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            logger.warning("breaker rows not removed; they will show as stale")


async def _sleep_unless(
    stopping: asyncio.Event, timeout_s: float, wake: asyncio.Event | None = None
) -> None:
    """Wait ``timeout_s``, or less when ``stopping`` (or ``wake``) is set."""
    events = [stopping] if wake is None else [stopping, wake]
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(
            waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
