"""Leases: which daemon is active for which signer, decided by PostgreSQL.

Several daemons may run against one database; for each lease name (a signer
address, or a singleton such as ``tailer``) exactly one of them may act. A
lease is a session-level advisory lock, ``pg_try_advisory_lock(lock_key(name))``,
held on one dedicated connection that does nothing else. Whoever holds the
lock is active for that name; the others stand by and try again every poll.

Three things end a lease:

* the daemon dies or its connection closes (SIGKILL, ``pg_terminate_backend``,
  a failover): the lock dies with the session and a standby takes it on its
  next poll; a live daemon empties :meth:`Leases.held` as soon as its socket
  reports the loss;
* renewal is overdue (a frozen process, a network partition): the lease
  session runs with ``idle_session_timeout`` set to the TTL, so the server
  frees its locks no earlier than one TTL after the last renewal was *sent*,
  and this process stops counting the lease as held before that instant —
  the invariant kept here: a lease that expires is never in ``held()`` once
  another daemon can hold it;
* the daemon stops, or hands a lease to an idle peer so that several daemons
  share the work: ``held()`` empties first, the lock is released once the
  steps in progress are done.

A lease is a liveness tool, not the last line of defence: :meth:`Leases.fence`
re-checks inside the caller's transaction that this process's lease session
still holds the lock, and the contract refuses a second mint of an intent id.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg
from loguru import logger

from haven import db
from haven.errors import ConfigError, DatabaseUnavailableError, HavenError
from haven.settings import Settings

APPLICATION_NAME = "haven-lease"
DEFAULT_POLL_MS = 1000
DEFAULT_TTL_MS = 10_000
# The server ends a silent lease session after one TTL measured from when a
# renewal *finished*; we stop trusting the lease this fraction of a TTL after
# the renewal was *sent*, which is earlier still. The margin covers clock-rate
# differences between this host and the database server.
_VALIDITY = 0.8
_CONNECT_TIMEOUT_S = 10.0

WantedNames = Callable[[], Awaitable[Collection[str]]]


class Runnable(Protocol):
    """A daemon component (see haven.daemon.service.Component)."""

    name: str

    async def run(self, stopping: asyncio.Event) -> None: ...


class LeaseLostError(HavenError, RuntimeError):
    """This process does not (or no longer) hold the lease: stop work for it."""


def lock_key(name: str) -> int:
    """Return the advisory lock key of a lease name (a signed 64-bit integer).

    Stable across processes and versions: every daemon must derive the same
    key for the same name, so the derivation is fixed at ``v1``.
    """
    digest = hashlib.sha256(f"haven:lease:v1:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_parts(key: int) -> tuple[int, int]:
    # pg_locks shows a bigint advisory key as classid (high 32 bits) and
    # objid (low 32 bits) of its unsigned form, with objsubid = 1.
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


@dataclass(frozen=True)
class LeaseSession:
    """The server identity of a lease connection: pid alone may be recycled."""

    pid: int
    backend_start: datetime


_FENCE = """
SELECT EXISTS (
    SELECT 1
      FROM pg_locks AS l
      JOIN pg_stat_activity AS a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT oid FROM pg_database
                          WHERE datname = current_database())
       AND l.classid::bigint = $2 AND l.objid::bigint = $3
       AND l.pid = $1 AND a.backend_start = $4
)
"""

_HELD_KEYS = """
SELECT l.classid::bigint AS high, l.objid::bigint AS low
  FROM pg_locks AS l
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.pid = pg_backend_pid()
"""

_PEERS = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND starts_with(application_name, $1)
"""


class Leases:
    """Hold the leases of the names ``wanted`` returns, sharing them with peers.

    ``wanted`` is called every poll and returns the names this daemon should
    be active for when it can (for the submitter: every signer with work,
    active or draining). Names are shared fairly among the daemons of the same
    ``group`` connected to the database: a daemon holding more than its share
    hands the surplus over, each one once its steps are done.
    """

    name = "leases"

    def __init__(
        self,
        dsn: str,
        wanted: WantedNames,
        *,
        poll_ms: int = DEFAULT_POLL_MS,
        ttl_ms: int = DEFAULT_TTL_MS,
        group: str = "daemon",
        handover_timeout_s: float = 20.0,
    ) -> None:
        if ttl_ms < 3 * poll_ms:
            raise ConfigError(
                [
                    f"HAVEN_LEASE_TTL_MS: got {ttl_ms}; expected at least three "
                    f"times HAVEN_LEASE_POLL_MS ({poll_ms}) so that one slow "
                    "renewal does not drop every lease"
                ]
            )
        self._dsn = dsn
        self._wanted = wanted
        self._poll_s = poll_ms / 1000
        self._ttl_ms = ttl_ms
        # Peers are counted by this prefix; the host and pid after it tell an
        # operator (and pg_locks) which process holds what.
        self._peer_prefix = f"{APPLICATION_NAME}:{group}:"
        self._application_name = (
            f"{self._peer_prefix}{socket.gethostname()}:{os.getpid()}"
        )[:63]
        self._handover_timeout_s = handover_timeout_s

        self._locked: dict[str, int] = {}  # name -> key, as PostgreSQL sees it
        self._releasing: dict[str, float] = {}  # name -> give-up time (loop clock)
        self._busy: Counter[str] = Counter()
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._valid_until = 0.0
        self._stopping = asyncio.Event()
        self._stopped = False
        self._session: LeaseSession | None = None
        self._connection: asyncpg.Connection | None = None
        self._changed = asyncio.Event()
        self._last_held: frozenset[str] = frozenset()
        self._expiry: asyncio.TimerHandle | None = None

    @classmethod
    def from_settings(cls, settings: Settings, wanted: WantedNames) -> Leases:
        """Build the daemon's leases from its settings."""
        return cls(
            settings.database_url.reveal(),
            wanted,
            poll_ms=settings.lease_poll_ms,
            ttl_ms=settings.lease_ttl_ms,
        )

    # --- what consumers call -------------------------------------------------

    def held(self) -> frozenset[str]:
        """Return the names this process may act for at this instant."""
        if self._stopped or self._stopping.is_set() or self._session is None:
            return frozenset()
        if asyncio.get_running_loop().time() >= self._valid_until:
            return frozenset()
        return frozenset(self._locked) - frozenset(self._releasing)

    def is_held(self, name: str) -> bool:
        """Tell whether this process may act for ``name`` at this instant."""
        return name in self.held()

    def is_handing_over(self, name: str) -> bool:
        """Tell whether ``name`` is being given to a peer once its steps end.

        Its lock is still ours meanwhile, so work may stop gracefully; a lease
        lost any other way may already be someone else's.
        """
        return name in self._releasing and name in self._locked

    def exclusive(self, lease: str, build: Callable[[], Runnable]) -> Exclusive:
        """Return a component that runs ``build()`` only while ``lease`` is held."""
        return Exclusive(
            self, lease, build, stop_timeout_s=self._handover_timeout_s / 2
        )

    async def wait_changed(self, since: frozenset[str]) -> frozenset[str]:
        """Return :meth:`held` once it differs from ``since``.

        Returns at once when it already does, so a caller that read ``held()``
        earlier cannot miss a change that happened in between.
        """
        while (current := self.held()) == since:
            await self._changed.wait()
        return current

    @asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        """Run one unit of work for ``name``; a voluntary handover waits for it.

        Raises LeaseLostError when the lease is not held on entry. A lease lost
        *involuntarily* during the step is not waited for: steps must be safe
        to abandon, and writes must call :meth:`fence`.
        """
        if not self.is_held(name):
            raise LeaseLostError(f"lease of {name} is not held by this daemon")
        self._busy[name] += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._busy[name] -= 1
            if self._busy[name] <= 0:
                del self._busy[name]
            if not self._busy:
                self._quiet.set()

    async def fence(self, connection: asyncpg.Connection, name: str) -> None:
        """Raise LeaseLostError unless our lease session holds ``name`` right now.

        Call it inside the transaction that commits work for ``name``, *after*
        locking the rows that work serialises on (the signer row): a daemon
        that takes the lease over later then blocks on those rows until this
        transaction ends, and sees what it wrote.
        """
        session = self._session
        if session is None or not self.is_held(name):
            raise LeaseLostError(f"lease of {name} is not held by this daemon")
        high, low = _lock_parts(lock_key(name))
        async with db.translate_errors():
            holds = await connection.fetchval(
                _FENCE, session.pid, high, low, session.backend_start
            )
        if not holds:
            raise LeaseLostError(
                f"lease of {name} is no longer held by lease session {session.pid}"
            )

    # --- the component -------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Hold leases until ``stopping`` is set; reconnect after any loss."""
        # held() empties the instant ``stopping`` is set, before this loop wakes.
        self._stopping = stopping
        try:
            while not stopping.is_set():
                try:
                    await self._hold(stopping)
                except Exception as exc:
                    if not db.is_unavailable(exc):
                        logger.exception("lease session failed, reconnecting")
                    else:
                        logger.warning(
                            "lease connection lost, reconnecting",
                            error=str(exc),
                        )
                self._lose_all("connection lost")
                await _wait(stopping, self._poll_s)
        finally:
            self._close_out()

    async def _hold(self, stopping: asyncio.Event) -> None:
        connection = await self._connect()
        try:
            connection.add_termination_listener(self._on_terminated)
            while not stopping.is_set() and not connection.is_closed():
                await self._tick(connection)
                await _wait(stopping, self._poll_s)
            if not stopping.is_set():
                raise DatabaseUnavailableError("lease connection closed")
            await self._drain(connection)
        finally:
            self._lose_all("stopped" if stopping.is_set() else "connection lost")
            await _close(connection)

    async def _connect(self) -> asyncpg.Connection:
        async with db.translate_errors():
            connection = await asyncpg.connect(
                self._dsn,
                timeout=_CONNECT_TIMEOUT_S,
                server_settings={
                    "application_name": self._application_name,
                    "idle_session_timeout": str(self._ttl_ms),
                },
            )
            row = await connection.fetchrow(
                "SELECT pid, backend_start FROM pg_stat_activity "
                "WHERE pid = pg_backend_pid()"
            )
        self._session = LeaseSession(row["pid"], row["backend_start"])
        self._connection = connection
        logger.info("lease session opened", lease_pid=row["pid"])
        return connection

    # --- one poll: renew, release, acquire -----------------------------------

    async def _tick(self, connection: asyncpg.Connection) -> None:
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        deadline = max(self._valid_until, sent_at + self._poll_s)
        async with db.translate_errors(), asyncio.timeout_at(deadline):
            await self._renew(connection, sent_at)
            wanted = await self._load_wanted()
            share = await self._share(connection, wanted)
            await self._release(connection, wanted, share)
            await self._acquire(connection, wanted, share)
        self._publish()

    async def _renew(self, connection: asyncpg.Connection, sent_at: float) -> None:
        rows = await connection.fetch(_HELD_KEYS)
        on_server = {(row["high"], row["low"]) for row in rows}
        for name, key in list(self._locked.items()):
            if _lock_parts(key) not in on_server:
                logger.warning("lease vanished on the server, stopping", lease=name)
                self._forget(name)
        self._valid_until = sent_at + _VALIDITY * self._ttl_ms / 1000
        self._schedule_expiry()

    async def _load_wanted(self) -> frozenset[str]:
        try:
            return frozenset(await self._wanted())
        except Exception as exc:
            if not db.is_unavailable(exc):
                raise
            # Keep what we hold; only the set of names to try is stale.
            logger.warning("lease names unavailable, keeping current leases")
            return frozenset(self._locked)

    async def _share(
        self, connection: asyncpg.Connection, wanted: frozenset[str]
    ) -> int:
        peers = await connection.fetchval(_PEERS, self._peer_prefix)
        return math.ceil(len(wanted) / max(int(peers), 1))

    async def _release(
        self, connection: asyncpg.Connection, wanted: frozenset[str], share: int
    ) -> None:
        now = asyncio.get_running_loop().time()
        keep = sorted(name for name in self._locked if name in wanted)[:share]
        for name in self._locked:
            if name not in keep and name not in self._releasing:
                logger.info("lease handing over", lease=name)
                self._releasing[name] = now + self._handover_timeout_s
        for name, give_up_at in list(self._releasing.items()):
            if self._busy[name] and now < give_up_at:
                continue
            await connection.fetchval(
                "SELECT pg_advisory_unlock($1)", self._locked[name]
            )
            self._forget(name)
            logger.info("lease released", lease=name)

    async def _acquire(
        self, connection: asyncpg.Connection, wanted: frozenset[str], share: int
    ) -> None:
        for name in sorted(wanted - frozenset(self._locked)):
            if len(self._locked) - len(self._releasing) >= share:
                return
            key = lock_key(name)
            if await connection.fetchval("SELECT pg_try_advisory_lock($1)", key):
                self._locked[name] = key
                logger.info("lease acquired", lease=name)

    # --- bookkeeping ---------------------------------------------------------

    def _forget(self, name: str) -> None:
        self._locked.pop(name, None)
        self._releasing.pop(name, None)

    def _lose_all(self, why: str) -> None:
        if self._locked and why == "stopped":
            logger.info("leases released", leases=sorted(self._locked))
        elif self._locked:
            logger.warning("leases lost", leases=sorted(self._locked), reason=why)
        self._locked.clear()
        self._releasing.clear()
        self._session = None
        self._connection = None
        self._valid_until = 0.0
        self._publish()

    def _on_terminated(self, connection: asyncpg.Connection) -> None:
        # Runs as soon as the socket closes, before the poll loop notices:
        # stop acting for every lease at once. A late call about a connection
        # already replaced changes nothing.
        if connection is not self._connection:
            return
        self._valid_until = 0.0
        self._publish()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(self._valid_until, self._publish)

    def _publish(self) -> None:
        current = self.held()
        if current == self._last_held:
            return
        self._last_held = current
        self._changed.set()
        self._changed = asyncio.Event()

    async def _drain(self, connection: asyncpg.Connection) -> None:
        # Stopping: consumers see no lease any more, but steps already running
        # finish before the locks are given up. Keep the session talking so
        # the server does not end it (and hand the locks over) meanwhile.
        self._publish()
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._handover_timeout_s
        while not self._quiet.is_set() and loop.time() < give_up_at:
            async with db.translate_errors():
                await asyncio.wait_for(connection.fetchval("SELECT 1"), self._poll_s)
            await _wait(self._quiet, self._poll_s)

    def _close_out(self) -> None:
        self._stopped = True
        if self._expiry is not None:
            self._expiry.cancel()
        self._lose_all("stopped")


class Exclusive:
    """Run one component only while this daemon holds its lease.

    The component is built afresh each time the lease is won. When the daemon
    stops, or the lease is handed to a peer, the component is asked to stop
    through its own ``stopping`` event (a handover waits at most
    ``stop_timeout_s``, then cancels). When the lease is *lost* — connection
    gone, renewal overdue — the component is cancelled at once: a peer may
    already be running it. Components must therefore be safe to cancel, as
    every daemon component is safe to SIGKILL.
    """

    def __init__(
        self,
        leases: Leases,
        lease: str,
        build: Callable[[], Runnable],
        *,
        stop_timeout_s: float,
    ) -> None:
        self.name = lease
        self._leases = leases
        self._build = build
        self._stop_timeout_s = stop_timeout_s

    async def run(self, stopping: asyncio.Event) -> None:
        """Run the component whenever the lease is held, until ``stopping``."""
        while not stopping.is_set():
            held = self._leases.held()
            if self.name in held:
                await self._run_while_held(stopping)
                continue
            await _first(self._leases.wait_changed(held), stopping.wait())

    async def _run_while_held(self, stopping: asyncio.Event) -> None:
        component = self._build()
        own_stopping = asyncio.Event()
        async with self._leases.step(self.name):
            logger.info("lease won, component starting", component=component.name)
            task = asyncio.create_task(component.run(own_stopping), name=self.name)
            try:
                await self._until_lost(task, stopping)
                own_stopping.set()
                await self._stop(task, stopping)
            finally:
                if not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def _until_lost(
        self, task: asyncio.Task[None], stopping: asyncio.Event
    ) -> None:
        while not (task.done() or stopping.is_set()):
            held = self._leases.held()
            if self.name not in held:
                return
            await _first(task, stopping.wait(), self._leases.wait_changed(held))

    async def _stop(self, task: asyncio.Task[None], stopping: asyncio.Event) -> None:
        if task.done():
            return
        if stopping.is_set():
            # The daemon's own grace period bounds this wait.
            await asyncio.wait([task])
            return
        if self._leases.is_handing_over(self.name):
            logger.info("lease handed over, component stopping", component=self.name)
            await asyncio.wait([task], timeout=self._stop_timeout_s)
            return
        logger.warning("lease lost, component cancelled", component=self.name)


async def _first(*waits: Awaitable[object]) -> None:
    """Return when any of ``waits`` is done; cancel the waits made here.

    A task passed in is watched, never cancelled: it has its own owner.
    """
    made = [
        asyncio.ensure_future(w) for w in waits if not isinstance(w, asyncio.Future)
    ]
    given = [w for w in waits if isinstance(w, asyncio.Future)]
    try:
        await asyncio.wait([*made, *given], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in made:
            task.cancel()
        await asyncio.gather(*made, return_exceptions=True)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


async def _close(connection: asyncpg.Connection) -> None:
    # Closing ends the session and so frees every lock it held. A connection
    # that cannot say goodbye in time is cut instead, which frees them too.
    try:
        await asyncio.wait_for(connection.close(), 2.0)
    except Exception as exc:
        if not db.is_unavailable(exc):
            raise
        connection.terminate()
