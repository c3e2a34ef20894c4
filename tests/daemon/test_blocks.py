"""Block headers: the logs bloom as anvil builds it, and stored headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from harness.anvil import AnvilNode
from harness.tailkit import (
    HOLDER_KEYS,
    HOLDERS,
    Hnv,
    receipt,
    send,
    submit_intent,
    transfer_data,
)
from haven import db, token
from haven.chain import ChainClient
from haven.daemon import blocks

pytestmark = pytest.mark.timeout(60)
TOPICS = tuple(
    bytes.fromhex(t[2:]) for t in (token.TRANSFER_TOPIC, token.REWARD_MINTED_TOPIC)
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    pool = await db.create_pool(database_url, max_size=2)
    yield pool
    await pool.close()


async def header_of(anvil: AnvilNode, number: int) -> blocks.Header:
    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as client:
        found = await blocks.fetch(client, [number])
    header = found[number]
    assert header is not None
    return header


async def test_the_bloom_admits_the_token_events_and_rules_out_other_blocks(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool
) -> None:
    address = bytes.fromhex(hnv.address[2:])
    _, minted = await submit_intent(
        pool, anvil, hnv, source_key="bloom", wallet=HOLDERS[0], amount_wei=10**18
    )
    moved = await send(anvil, HOLDER_KEYS[0], hnv.address, transfer_data(HOLDERS[1], 1))
    await anvil.mine(1)
    empty = await anvil.block_number()

    for tx in (minted, moved):
        number = int((await receipt(anvil, tx.tx_hash))["blockNumber"], 16)
        assert (await header_of(anvil, number)).may_contain(address, TOPICS)
    # Granting a role logs from the token, but neither topic.
    assert not (await header_of(anvil, hnv.deploy_block + 1)).may_contain(
        address, TOPICS
    )
    assert not (await header_of(anvil, empty)).may_contain(address, TOPICS)


async def test_stored_headers_round_trip_and_roll_back_above_a_fork(
    anvil: AnvilNode, pool: db.Pool
) -> None:
    await anvil.mine(5)
    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as client:
        found = await blocks.fetch(client, range(1, 6))
    headers = [h for h in found.values() if h is not None]
    assert [h.number for h in headers] == [1, 2, 3, 4, 5]

    async with db.transaction(pool) as connection:
        await blocks.insert(connection, headers)
        assert await blocks.delete_above(connection, 3) == 2
        assert await blocks.prune_below(connection, 2) == 1
        kept = await blocks.below(connection, 10, limit=10)
    assert [(h.number, h.hash, h.parent_hash) for h in kept] == [
        (h.number, h.hash, h.parent_hash) for h in reversed(headers[1:3])
    ]
    assert kept[0].parent_hash == kept[1].hash
