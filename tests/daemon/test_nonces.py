"""Nonce allocation on real PostgreSQL: contiguous, unique, never skipped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from eth_account import Account

from haven import db
from haven.daemon import nonces, signers
from haven.types import ChecksumAddress, checksum

ADDRESS = checksum(Account.create().address)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    created = await db.create_pool(database_url, max_size=10)
    async with db.transaction(created) as conn:
        await signers.insert(conn, ChecksumAddress(ADDRESS), b"ciphertext")
    yield created
    await created.close()


async def allocate_and_commit(pool: db.Pool) -> int | None:
    async with db.transaction(pool) as conn:
        taken = await nonces.allocate(conn, ADDRESS)
        # Hold the transaction open across a scheduling point, as the real
        # one does while it signs and records the attempt.
        await asyncio.sleep(0)
        return taken


async def next_nonce(pool: db.Pool) -> int:
    async with pool.acquire() as conn:
        row = await signers.get(conn, ADDRESS)
    assert row is not None
    return row.next_nonce


async def test_twenty_concurrent_allocations_are_contiguous_and_unique(pool: db.Pool):
    taken = await asyncio.gather(*(allocate_and_commit(pool) for _ in range(20)))

    assert sorted(n for n in taken if n is not None) == list(range(20))
    assert await next_nonce(pool) == 20


async def test_a_rolled_back_allocation_gives_its_nonce_back(pool: db.Pool):
    with pytest.raises(RuntimeError):
        async with db.transaction(pool) as conn:
            assert await nonces.allocate(conn, ADDRESS) == 0
            raise RuntimeError("signing failed")

    assert await allocate_and_commit(pool) == 0
    assert await allocate_and_commit(pool) == 1


async def test_a_draining_signer_gets_nonces_only_when_finishing_its_work(
    pool: db.Pool,
):
    async with db.transaction(pool) as conn:
        await signers.set_status(conn, ADDRESS, signers.DRAINING)

    async with db.transaction(pool) as conn:
        refused = await nonces.allocate(conn, ADDRESS)
        allowed = await nonces.allocate(conn, ADDRESS, statuses=signers.WORKING)

    assert refused is None
    assert allowed == 0


async def test_nonces_mined_outside_are_skipped_once_and_never_backwards(
    pool: db.Pool,
):
    await allocate_and_commit(pool)

    async with db.transaction(pool) as conn:
        skipped = await nonces.skip_used(conn, ADDRESS, 4)
        again = await nonces.skip_used(conn, ADDRESS, 4)
        backwards = await nonces.skip_used(conn, ADDRESS, 2)

    assert list(skipped) == [1, 2, 3]
    assert list(again) == list(backwards) == []
    assert await next_nonce(pool) == 4


def test_in_flight_counts_allocated_nonces_not_yet_mined():
    assert nonces.in_flight(next_nonce=10, latest=7) == 3
    assert nonces.in_flight(next_nonce=7, latest=9) == 0
