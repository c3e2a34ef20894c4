"""PostgreSQL access: the pool, and the one place asyncpg errors are translated.

Tables are owned by the module named after them; this module only hands out
connections. ``connect_pool`` refuses to start on a schema older than the code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from haven.errors import DatabaseUnavailableError

# Errors that mean "the server or the connection is gone", as opposed to a
# statement being wrong. Callers answer 503 or retry on these.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionFailureError,
    # A pooled connection whose server process was killed mid-query can be
    # handed out once more before asyncpg notices: "cannot switch to state".
    asyncpg.InternalClientError,
    # Refused at login: no such database, no such role, a wrong password.
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
)

Pool = asyncpg.Pool
Connection = asyncpg.Connection


def jsonb_text(value: Any) -> str:
    """``value`` as the text of a jsonb, as the pool's codec writes it: for
    statements that take many documents at once as a ``text[]``."""
    return orjson.dumps(value).decode()


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb",
        encoder=jsonb_text,
        decoder=orjson.loads,
        schema="pg_catalog",
    )


class HavenConnection(asyncpg.Connection):
    """A pooled connection that knows whether it carries session state.

    asyncpg resets every connection it takes back into the pool with one
    more round trip (``RESET ALL``, ``UNLISTEN *``, unlock advisory locks).
    haven keeps no state in a session except where it says so with
    :func:`keep_session_state`, so the pool skips that round trip for every
    other connection: on the webhook path it was one in six.
    """

    _haven_session_state = False

    def mark_session_state(self) -> None:
        self._haven_session_state = True


def keep_session_state(connection: asyncpg.Connection) -> None:
    """Mark ``connection`` as carrying session state (a LISTEN, a SET, a
    session lock), so that the pool resets it fully when it is released."""
    mark = getattr(connection, "mark_session_state", None)
    if mark is not None:
        mark()


async def _reset_connection(connection: asyncpg.Connection) -> None:
    # asyncpg has already rolled back an open transaction and dropped the
    # listener callbacks; what is left to undo lives in the server session.
    if getattr(connection, "_haven_session_state", False):
        await connection.execute(connection.get_reset_query())
        connection._haven_session_state = False  # type: ignore[attr-defined]


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 10.0
) -> asyncpg.Pool:
    """Open a connection pool; raise DatabaseUnavailableError if unreachable."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            command_timeout=60,
            init=_init_connection,
            reset=_reset_connection,
            connection_class=HavenConnection,
        )
    except _UNAVAILABLE as exc:
        raise DatabaseUnavailableError(f"cannot reach PostgreSQL: {exc}") from exc
    assert pool is not None
    return pool


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn connection-level asyncpg failures into DatabaseUnavailableError."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise DatabaseUnavailableError(f"PostgreSQL unavailable: {exc}") from exc


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """Yield a connection inside one transaction, committed on normal exit."""
    async with (
        translate_errors(),
        pool.acquire() as connection,
        connection.transaction(),
    ):
        yield connection


def is_unavailable(exc: BaseException) -> bool:
    """Tell whether ``exc`` means PostgreSQL is unreachable rather than a bad query."""
    return isinstance(exc, (DatabaseUnavailableError, *_UNAVAILABLE))


def record(row: asyncpg.Record | None) -> dict[str, Any] | None:
    """Return a plain dict of ``row``, or None."""
    return dict(row) if row is not None else None
