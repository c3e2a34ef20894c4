"""The connection pool: what a released connection keeps and what it loses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from haven import db
from haven.errors import DatabaseUnavailableError


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    # One connection, so every acquire gets back the one released before.
    opened = await db.create_pool(database_url, min_size=1, max_size=1)
    yield opened
    await opened.close()


async def test_a_connection_marked_with_session_state_is_reset_on_release(pool):
    async with pool.acquire() as connection:
        db.keep_session_state(connection)
        await connection.execute("LISTEN haven_test_channel")
        await connection.execute("SELECT pg_advisory_lock(4242)")
        await connection.execute("SET application_name = 'marked'")

    async with pool.acquire() as connection:
        channels = await connection.fetch("SELECT pg_listening_channels()")
        locks = await connection.fetchval(
            "SELECT count(*) FROM pg_locks "
            "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        name = await connection.fetchval("SHOW application_name")

    assert channels == []
    assert locks == 0
    assert name != "marked"


async def test_an_unmarked_connection_is_released_without_a_reset_query(pool):
    # What a session keeps shows that no reset ran: the round trip it
    # would cost is what the pool saves on every release.
    async with pool.acquire() as connection:
        await connection.execute("SET application_name = 'unmarked'")

    async with pool.acquire() as connection:
        assert await connection.fetchval("SHOW application_name") == "unmarked"


async def test_a_transaction_left_open_is_rolled_back_on_release(pool):
    async with pool.acquire() as connection:
        await connection.execute("CREATE TABLE pool_probe (n integer)")

    # A transaction begun by hand and never ended, as a careless caller
    # would leave it: the next user of the connection must not inherit it.
    async with pool.acquire() as connection:
        await connection.execute("BEGIN")
        await connection.execute("INSERT INTO pool_probe VALUES (1)")

    async with pool.acquire() as connection:
        assert not connection.is_in_transaction()
        assert await connection.fetchval("SELECT count(*) FROM pool_probe") == 0


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        ),
        # What a connection whose backend was just terminated can raise when
        # the pool hands it out again (seen under pg_terminate_backend).
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
    ],
)
async def test_a_broken_connection_means_the_database_is_unavailable(error):
    with pytest.raises(DatabaseUnavailableError, match="PostgreSQL unavailable"):
        async with db.translate_errors():
            raise error
