"""Receipts of our own transactions: a reverted mint fails its intent at depth,
and nothing else does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from harness.anvil import AnvilNode
from harness.tailkit import (
    HOLDER_KEYS,
    HOLDERS,
    Hnv,
    SignedTx,
    rebroadcast,
    receipt,
    reorg,
    running_tailer,
    status_of,
    submit_intent,
    tailer_settings,
    wait_for,
    wait_settled,
)
from haven import db, intents
from haven.chain import ChainClient
from haven.daemon import alerts_outbox, attempts, blocks, receipts
from haven.daemon.blocks import Header
from haven.types import IntentId

pytestmark = pytest.mark.timeout(60)
HNV = 10**18


@pytest.fixture
async def client(anvil: AnvilNode) -> AsyncIterator[ChainClient]:
    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as chain:
        yield chain


async def reverted_mint(pool: db.Pool, anvil: AnvilNode, hnv: Hnv) -> tuple[bytes, int]:
    """A mint signed by a key without MINTER_ROLE: mined, and reverted."""
    intent_id, _, block = await reverted_mint_tx(pool, anvil, hnv)
    return intent_id, block


async def reverted_mint_tx(
    pool: db.Pool, anvil: AnvilNode, hnv: Hnv
) -> tuple[bytes, SignedTx, int]:
    intent_id, tx = await submit_intent(
        pool,
        anvil,
        hnv,
        source_key="denied",
        wallet=HOLDERS[0],
        amount_wei=HNV,
        key=HOLDER_KEYS[0],
        succeeds=False,
    )
    found = await receipt(anvil, tx.tx_hash)
    return intent_id, tx, int(found["blockNumber"], 16)


async def test_a_reverted_mint_fails_its_intent_only_once_confirmations_deep(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, client: ChainClient
) -> None:
    intent_id, block = await reverted_mint(pool, anvil, hnv)

    shallow = await receipts.check(pool, client, tip=block + 1, confirmations=3)
    assert shallow == 0
    assert await status_of(pool, intent_id) == intents.SUBMITTED
    async with pool.acquire() as connection:
        assert await alerts_outbox.find(connection, rule=receipts.FAILED_RULE) == []

    deep = await receipts.check(pool, client, tip=block + 2, confirmations=3)
    assert deep == 1
    async with pool.acquire() as connection:
        intent = await intents.get(connection, intent_id)
        tries = await attempts.for_intent(connection, intent_id)
    assert intent is not None
    assert (intent.status, intent.status_reason) == (
        intents.FAILED,
        "AccessControlUnauthorizedAccount",
    )
    assert [(a.status, a.error) for a in tries] == [
        (attempts.FAILED, "AccessControlUnauthorizedAccount")
    ]
    async with pool.acquire() as connection:
        (alert,) = await alerts_outbox.find(connection, rule=receipts.FAILED_RULE)
    assert (alert.subject, alert.severity) == (
        "0x" + intent_id.hex(),
        alerts_outbox.CRITICAL,
    )
    assert alert.evidence["reason"] == "AccessControlUnauthorizedAccount"
    assert alert.evidence["tx_hash"] == tries[0].tx_hash


async def test_a_missing_receipt_is_not_a_failure(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, client: ChainClient
) -> None:
    intent_id, _ = await submit_intent(
        pool,
        anvil,
        hnv,
        source_key="unsent",
        wallet=HOLDERS[0],
        amount_wei=HNV,
        send=False,
    )
    await anvil.mine(10)

    assert await receipts.check(pool, client, tip=11, confirmations=1) == 0
    assert await status_of(pool, intent_id) == intents.SUBMITTED


async def test_a_reverted_receipt_off_the_held_chain_is_checked_again_later(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, client: ChainClient
) -> None:
    intent_id, block = await reverted_mint(pool, anvil, hnv)
    other = Header(
        number=block, hash=b"\x01" * 32, parent_hash=b"\x02" * 32, timestamp=0
    )
    async with db.transaction(pool) as connection:
        await blocks.insert(connection, [other])

    assert await receipts.check(pool, client, tip=block + 5, confirmations=3) == 0
    assert await status_of(pool, intent_id) == intents.SUBMITTED

    async with db.transaction(pool) as connection:
        await blocks.delete_above(connection, block - 1)
    assert await receipts.check(pool, client, tip=block + 5, confirmations=3) == 1


async def test_a_duplicate_attempt_reverting_as_already_minted_never_fails_the_intent(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, client: ChainClient
) -> None:
    intent_id, _ = await submit_intent(
        pool, anvil, hnv, source_key="twice", wallet=HOLDERS[1], amount_wei=HNV
    )
    # A second attempt at another nonce, as after a lost track of the first.
    _, duplicate = await submit_intent(
        pool,
        anvil,
        hnv,
        source_key="twice",
        wallet=HOLDERS[1],
        amount_wei=HNV,
        intent_id=intent_id,
        succeeds=False,
    )
    block = int((await receipt(anvil, duplicate.tx_hash))["blockNumber"], 16)

    # The tailer has not indexed the first mint yet: only the reason tells.
    assert await receipts.check(pool, client, tip=block, confirmations=1) == 0
    assert await status_of(pool, intent_id) == intents.SUBMITTED
    async with pool.acquire() as connection:
        tries = await attempts.for_intent(connection, intent_id)
    assert [(a.status, a.error) for a in tries] == [
        (
            attempts.BROADCAST
            if tries[0].status == attempts.BROADCAST
            else attempts.SIGNED,
            None,
        ),
        (attempts.FAILED, receipts.ALREADY_MINTED),
    ]


async def test_the_running_tailer_fails_a_reverted_mint(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    config = tailer_settings(database_url, [anvil.url], hnv, confirmations=2)
    async with running_tailer(config, pool):
        intent_id, _ = await reverted_mint(pool, anvil, hnv)
        await anvil.mine(2)

        async def failed() -> bool:
            return await status_of(pool, intent_id) == intents.FAILED

        await wait_for(failed, timeout_s=20, what="the intent to fail")


async def test_a_reverted_attempt_does_not_fail_an_intent_another_attempt_may_mint(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, client: ChainClient
) -> None:
    intent_id, block = await reverted_mint(pool, anvil, hnv)
    await submit_intent(
        pool,
        anvil,
        hnv,
        source_key="denied",
        wallet=HOLDERS[0],
        amount_wei=HNV,
        intent_id=IntentId(intent_id),
        send=False,
    )

    assert await receipts.check(pool, client, tip=block + 5, confirmations=3) == 0
    assert await status_of(pool, intent_id) == intents.SUBMITTED


async def test_a_reorg_that_takes_a_reverted_mint_away_unfails_its_intent(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    config = tailer_settings(
        database_url, [anvil.url], hnv, confirmations=2, finality_depth=8
    )
    async with running_tailer(config, pool):
        intent_id, tx, block = await reverted_mint_tx(pool, anvil, hnv)
        await anvil.mine(3)

        async def failed() -> bool:
            return await status_of(pool, intent_id) == intents.FAILED

        await wait_for(failed, timeout_s=20, what="the intent to fail")
        await wait_settled(pool, anvil)

        # Deeper than the confirmations: the reverted transaction vanishes.
        await reorg(anvil, await anvil.block_number() - block + 1)
        await wait_settled(pool, anvil)
        assert await status_of(pool, intent_id) == intents.SUBMITTED
        async with pool.acquire() as connection:
            tries = await attempts.for_intent(connection, intent_id)
            alerts = await alerts_outbox.find(connection, rule=receipts.UNFAILED_RULE)
        assert [(a.status, a.mined_block) for a in tries] == [
            (attempts.BROADCAST, None)
        ]
        assert [(a.subject, a.severity) for a in alerts] == [
            ("0x" + intent_id.hex(), alerts_outbox.CRITICAL)
        ]

        # The submitter's part: the same bytes go back, revert again, and
        # fail the intent again once deep enough.
        assert await rebroadcast(anvil, [tx]) == 1
        await receipt(anvil, tx.tx_hash)
        await anvil.mine(2)
        await wait_for(failed, timeout_s=20, what="the intent to fail again")
