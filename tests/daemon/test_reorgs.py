"""Reorgs staged with ``anvil_reorg``: rollback, re-index, intents sent back.

Every reorg here keeps the head at the same height, as anvil's do, and each
asserts (in ``tailkit.reorg``) that the block hash at the fork really
changed. Confirmations are 3 and the finality depth 8.
"""

from __future__ import annotations

import pytest
from eth_utils.crypto import keccak

from harness.anvil import AnvilNode
from harness.faultproxy import running_proxy
from harness.tailkit import (
    HOLDER_KEYS,
    HOLDERS,
    ROGUE_KEY,
    Hnv,
    SignedTx,
    assert_index_matches_chain,
    checkpoint,
    nonce_of,
    rebroadcast,
    receipt,
    reorg,
    running_tailer,
    sign,
    status_of,
    submit_intent,
    tailer_settings,
    transfer_data,
    wait_for,
    wait_settled,
)
from haven import db, intents, metrics, token
from haven.daemon import alerts_outbox, attempts, confirmations
from haven.types import IntentId, Wei, intent_id_hex

pytestmark = pytest.mark.timeout(90)
HNV = 10**18
CONFIRMATIONS = 3
FINALITY = 8


async def replacements_at_fork(
    anvil: AnvilNode, hnv: Hnv, fork_block: int, depth: int, tag: str
) -> list[tuple[SignedTx, int]]:
    """A mint by a minter not ours and a holder transfer, for the new branch."""
    rogue = sign(
        ROGUE_KEY,
        await nonce_of(anvil, ROGUE_KEY, hex(fork_block)),
        hnv.address,
        token.mint_reward_data(HOLDERS[2], Wei(7 * HNV), IntentId(keccak(text=tag))),
    )
    holder = sign(
        HOLDER_KEYS[0],
        await nonce_of(anvil, HOLDER_KEYS[0], hex(fork_block)),
        hnv.address,
        transfer_data(HOLDERS[1], 1),
    )
    return [(rogue, 0), (holder, depth - 1)]


def metric(name: str) -> float:
    """Read a sample of the process's event registry; 0 before the first event."""
    return metrics.EVENTS.get_sample_value(name) or 0.0


async def alerts_for(pool: db.Pool, rule: str) -> list[alerts_outbox.Alert]:
    async with pool.acquire() as connection:
        return await alerts_outbox.find(connection, rule=rule)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6, 10])
async def test_reorg_rolls_back_reindexes_and_sends_the_lost_mint_back(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str, depth: int
) -> None:
    config = tailer_settings(
        database_url,
        [anvil.url],
        hnv,
        confirmations=CONFIRMATIONS,
        finality_depth=FINALITY,
    )
    async with running_tailer(config, pool):
        await submit_intent(
            pool, anvil, hnv, source_key="keep", wallet=HOLDERS[0], amount_wei=HNV
        )
        await anvil.mine(12)
        lost, lost_tx = await submit_intent(
            pool, anvil, hnv, source_key="lost", wallet=HOLDERS[1], amount_wei=2 * HNV
        )
        mint_block = int((await receipt(anvil, lost_tx.tx_hash))["blockNumber"], 16)
        await anvil.mine(depth - 1)
        await wait_settled(pool, anvil)
        was = await status_of(pool, lost)
        assert was == (intents.CONFIRMED if depth >= CONFIRMATIONS else intents.MINED)

        reorgs_before = metric("haven_reorgs_total")
        depths_before = metric("haven_reorg_depth_blocks_sum")
        branch = await replacements_at_fork(anvil, hnv, mint_block - 1, depth, "r")
        await reorg(anvil, depth, branch)
        await wait_settled(pool, anvil)
        await assert_index_matches_chain(pool, anvil, hnv)
        assert metric("haven_reorgs_total") == reorgs_before + 1
        assert metric("haven_reorg_depth_blocks_sum") == depths_before + depth
        assert await status_of(pool, lost) == intents.SUBMITTED
        async with pool.acquire() as connection:
            tries = await attempts.for_intent(connection, lost)
        assert [a.status for a in tries] == [attempts.BROADCAST]

        unconfirmed = await alerts_for(pool, confirmations.UNCONFIRMED_RULE)
        if was == intents.CONFIRMED:
            assert [(a.subject, a.severity) for a in unconfirmed] == [
                (intent_id_hex(lost), alerts_outbox.CRITICAL)
            ]
        else:
            assert unconfirmed == []
        deep = await alerts_for(pool, "reorg_beyond_finality")
        assert [a.severity for a in deep] == (
            [alerts_outbox.CRITICAL] if depth >= FINALITY else []
        )

        # The submitter's part: the same bytes go back and settle again.
        assert await rebroadcast(anvil, [lost_tx]) == 1
        await receipt(anvil, lost_tx.tx_hash)
        await anvil.mine(CONFIRMATIONS)
        await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert await status_of(pool, lost) == intents.CONFIRMED


async def test_mint_moved_to_another_block_settles_with_the_new_block_hash(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    config = tailer_settings(database_url, [anvil.url], hnv, confirmations=3)
    async with running_tailer(config, pool):
        moved, moved_tx = await submit_intent(
            pool, anvil, hnv, source_key="moved", wallet=HOLDERS[1], amount_wei=HNV
        )
        await anvil.mine(1)
        first = await wait_settled(pool, anvil)
        assert await status_of(pool, moved) == intents.MINED

        # Same bytes, one block later on the new branch.
        await reorg(anvil, 2, [(moved_tx, 1)])
        second = await wait_settled(pool, anvil)
        assert second.block_hash != first.block_hash
        await anvil.mine(3)
        await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    found = await receipt(anvil, moved_tx.tx_hash)
    async with pool.acquire() as connection:
        intent = await intents.get(connection, moved)
        history = await intents.history(connection, moved)
    assert intent is not None and intent.status == intents.CONFIRMED
    assert intent.block_hash == bytes.fromhex(found["blockHash"][2:])
    assert [(h["from_status"], h["to_status"]) for h in history][-4:] == [
        (intents.SUBMITTED, intents.MINED),
        (intents.MINED, intents.SUBMITTED),
        (intents.SUBMITTED, intents.MINED),
        (intents.MINED, intents.CONFIRMED),
    ]


async def test_reorg_while_catching_up_is_rolled_back_and_the_rest_indexed(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    for i in range(6):
        await submit_intent(
            pool,
            anvil,
            hnv,
            source_key=f"early-{i}",
            wallet=HOLDERS[i % 3],
            amount_wei=HNV,
        )
        await anvil.mine(30)
    head = await anvil.block_number()

    async with running_proxy(anvil.url) as proxy:
        # A node stuck 5 blocks short: the tailer catches up to it and waits.
        proxy.faults.frozen_head = head - 5
        proxy.faults.range_cap = 16
        config = tailer_settings(database_url, [proxy.url], hnv)
        async with running_tailer(config, pool):

            async def caught_up_to_frozen_head() -> bool:
                found = await checkpoint(pool)
                return found is not None and found.block_number == head - 5

            await wait_for(caught_up_to_frozen_head, timeout_s=30, what="catch-up")
            branch = await replacements_at_fork(anvil, hnv, head - 12, 12, "c")
            await reorg(anvil, 12, branch)
            proxy.clear()
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
