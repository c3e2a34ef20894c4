"""The tailer against real anvil and PostgreSQL: backfill, live following,
intent settlement, restarts and untrustworthy endpoints."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from loguru import logger

from harness.anvil import AnvilNode, running_anvil
from harness.faultproxy import running_proxy
from harness.tailkit import (
    HOLDER_KEYS,
    HOLDERS,
    OUR_KEY,
    OUR_SIGNER,
    ROGUE_KEY,
    Hnv,
    assert_index_matches_chain,
    balance_of,
    burn_data,
    checkpoint,
    deploy_hnv,
    fast_options,
    rebroadcast,
    running_tailer,
    send,
    spawn_tailer,
    status_of,
    submit_intent,
    tailer_settings,
    transfer_data,
    wait_for,
    wait_settled,
)
from haven import db, intents, token
from haven.daemon import attempts, confirmations, transfers
from haven.types import IntentId, Wei

pytestmark = pytest.mark.timeout(90)
HNV = 10**18
SWITCHED = "rpc endpoint switched, reading from the next"


async def make_history(
    pool: db.Pool, anvil: AnvilNode, hnv: Hnv, tag: str
) -> list[IntentId]:
    """Mint to every holder, move and burn some, and pad with empty blocks."""
    minted = []
    for i, holder in enumerate(HOLDERS):
        intent_id, _ = await submit_intent(
            pool,
            anvil,
            hnv,
            source_key=f"{tag}-{i}",
            wallet=holder,
            amount_wei=(i + 1) * HNV,
        )
        minted.append(intent_id)
        await anvil.mine(7)
    await send(anvil, HOLDER_KEYS[1], hnv.address, transfer_data(HOLDERS[0], HNV // 2))
    await send(anvil, HOLDER_KEYS[2], hnv.address, burn_data(HNV))
    return minted


async def test_backfill_hands_over_to_live_following_with_no_gap_and_no_duplicate(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    before = await make_history(pool, anvil, hnv, "before")
    await anvil.mine(200)
    config = tailer_settings(database_url, [anvil.url], hnv)

    async with running_tailer(config, pool):
        await wait_settled(pool, anvil)
        await assert_index_matches_chain(pool, anvil, hnv)
        after = await make_history(pool, anvil, hnv, "after")
        await anvil.mine(config.confirmations)
        await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    for intent_id in [*before, *after]:
        assert await status_of(pool, intent_id) == intents.CONFIRMED
    async with pool.acquire() as connection:
        held = await transfers.balances(connection)
    assert held == {h: await balance_of(anvil, hnv, h) for h in HOLDERS}


@pytest.mark.parametrize(
    ("block_number", "expected"),
    [(100, "seen"), (98, "seen"), (97, "confirmed"), (93, "final"), (5, "final")],
)
def test_a_block_is_seen_then_confirmed_then_final_as_it_deepens(
    block_number: int, expected: str
) -> None:
    state = confirmations.state(block_number, 100, confirmations=4, finality=8)
    assert state == expected


async def test_a_mint_is_confirmed_only_at_the_configured_depth(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    config = tailer_settings(database_url, [anvil.url], hnv, confirmations=4)
    async with running_tailer(config, pool):
        intent_id, _ = await submit_intent(
            pool, anvil, hnv, source_key="deep", wallet=HOLDERS[0], amount_wei=HNV
        )
        seen = []
        for _ in range(4):
            await wait_settled(pool, anvil)
            seen.append(await status_of(pool, intent_id))
            await anvil.mine(1)
        await wait_settled(pool, anvil)
        seen.append(await status_of(pool, intent_id))

    # Depths 1, 2, 3 are seen; depth 4 confirms.
    assert seen == [intents.MINED] * 3 + [intents.CONFIRMED] * 2
    async with pool.acquire() as connection:
        tries = await attempts.for_intent(connection, intent_id)
    assert [a.status for a in tries] == [attempts.MINED]


async def test_settling_a_mint_logs_the_request_id_of_its_webhook(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    config = tailer_settings(database_url, [anvil.url], hnv, confirmations=2)
    with captured_logs() as lines:
        async with running_tailer(config, pool):
            intent_id, tx = await submit_intent(
                pool,
                anvil,
                hnv,
                source_key="traced",
                wallet=HOLDERS[0],
                amount_wei=HNV,
                send=False,
            )
            async with pool.acquire() as connection:
                await connection.execute(
                    "UPDATE intents SET request_id = 'req-traced' WHERE id = $1",
                    intent_id,
                )
            assert await rebroadcast(anvil, [tx]) == 1
            await anvil.mine(2)
            await wait_settled(pool, anvil)
            assert await status_of(pool, intent_id) == intents.CONFIRMED

    settled = {
        line["message"]: line["extra"].get("request_id")
        for line in lines
        if line["extra"].get("intent_id") == "0x" + intent_id.hex()
    }
    assert settled["mint mined"] == settled["mint confirmed"] == "req-traced"


async def test_a_mint_that_differs_from_its_intent_is_indexed_but_settles_nothing(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    wrong_amount, _ = await submit_intent(
        pool,
        anvil,
        hnv,
        source_key="amount",
        wallet=HOLDERS[0],
        amount_wei=HNV,
        mint_amount_wei=2 * HNV,
    )
    wrong_minter, _ = await submit_intent(
        pool,
        anvil,
        hnv,
        source_key="minter",
        wallet=HOLDERS[1],
        amount_wei=HNV,
        key=ROGUE_KEY,
    )
    # Indexed in the same batch as the two above, and settles alone.
    right, _ = await submit_intent(
        pool, anvil, hnv, source_key="right", wallet=HOLDERS[2], amount_wei=HNV
    )
    await anvil.mine(5)
    config = tailer_settings(database_url, [anvil.url], hnv)
    async with pool.acquire() as connection:
        # The rogue minter signed it, but the intent names our signer.
        await connection.execute(
            "UPDATE intents SET signer = $2 WHERE id = $1",
            wrong_minter,
            "0x0000000000000000000000000000000000000001",
        )
        await connection.execute(
            "DELETE FROM tx_attempts WHERE intent_id = $1", wrong_minter
        )
    async with running_tailer(config, pool):
        await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert await status_of(pool, wrong_amount) == intents.SUBMITTED
    assert await status_of(pool, wrong_minter) == intents.SUBMITTED
    assert await status_of(pool, right) == intents.CONFIRMED
    async with pool.acquire() as connection:
        assert len(await transfers.mints_of(connection, wrong_amount)) == 1
        assert len(await transfers.mints_of(connection, wrong_minter)) == 1
        unsettled = {mint.intent_id for mint in await transfers.unsettled(connection)}
        tries = await attempts.for_intent(connection, right)
    assert unsettled == {wrong_amount, wrong_minter}
    assert [a.status for a in tries] == [attempts.MINED]


async def test_restarts_killed_at_random_points_of_backfill_leave_no_gap_or_duplicate(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for round_ in range(4):
        await make_history(pool, anvil, hnv, f"kill-{round_}")
        await anvil.mine(40)

    async with running_proxy(anvil.url) as proxy:
        # Small ranges and slow answers make backfill a long series of batches.
        proxy.faults.range_cap = 6
        proxy.faults.delay_s = 0.005
        config = tailer_settings(database_url, [proxy.url], hnv)
        options = fast_options()
        kills = 0
        for _ in range(3):
            child = spawn_tailer(config, options)
            before = await checkpoint(pool)

            async def progressed() -> bool:
                return await checkpoint(pool) != before  # noqa: B023

            await wait_for(progressed, timeout_s=30, what="backfill progress")
            await asyncio.sleep(rng.uniform(0, 0.3))  # a random point, not a wait
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            kills += 1
            found = await checkpoint(pool)
            assert found is not None
            await assert_index_matches_chain(
                pool, anvil, hnv, through=found.block_number
            )
            if found.block_number == await anvil.block_number():
                break
        child = spawn_tailer(config, options)
        try:
            await wait_settled(pool, anvil, timeout_s=60)
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=10)

    assert kills >= 2, f"backfill outran the kills (seed {seed})"
    await assert_index_matches_chain(pool, anvil, hnv)


async def test_a_tailer_cancelled_mid_batch_resumes_with_no_gap_or_duplicate(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for round_ in range(3):
        await make_history(pool, anvil, hnv, f"cancel-{round_}")
        await anvil.mine(30)

    async with running_proxy(anvil.url) as proxy:
        proxy.faults.range_cap = 5
        proxy.faults.delay_s = 0.003
        config = tailer_settings(database_url, [proxy.url], hnv)
        for _ in range(8):
            async with running_tailer(config, pool) as task:
                await asyncio.sleep(rng.uniform(0.05, 0.4))  # a random point
                task.cancel()
            found = await checkpoint(pool)
            if found is not None:
                await assert_index_matches_chain(
                    pool, anvil, hnv, through=found.block_number
                )
        async with running_tailer(config, pool):
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)


async def test_a_lagging_endpoint_is_not_believed_when_it_says_nothing_is_there(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    await make_history(pool, anvil, hnv, "early")
    async with running_proxy(anvil.url) as behind, running_proxy(anvil.url) as honest:
        behind.faults.lag_blocks = 15
        honest.faults.drop_rate = 1.0
        config = tailer_settings(database_url, [behind.url, honest.url], hnv)
        async with running_tailer(config, pool):
            await make_history(pool, anvil, hnv, "late")
            head = await anvil.block_number()

            async def at_lagging_head() -> bool:
                found = await checkpoint(pool)
                return found is not None and found.block_number == head - 15

            # Only the lagging node answers: the tailer goes as far as its
            # head and no further, whatever its logs say about later blocks.
            await wait_for(at_lagging_head, timeout_s=30, what="the lagging head")
            await assert_index_matches_chain(pool, anvil, hnv, through=head - 15)
            honest.clear()
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert honest.stats.calls["eth_getLogs"] >= 1


async def test_a_stalled_endpoint_is_switched_for_one_whose_head_moves(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    await make_history(pool, anvil, hnv, "early")
    async with running_proxy(anvil.url) as stalled, running_proxy(anvil.url) as moving:
        config = tailer_settings(database_url, [stalled.url, moving.url], hnv)
        async with running_tailer(config, pool):
            await wait_settled(pool, anvil)
            stalled.faults.frozen_head = await anvil.block_number()
            logs_before = moving.stats.calls["eth_getLogs"]
            await make_history(pool, anvil, hnv, "late")
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert moving.stats.calls["eth_getLogs"] > logs_before


async def test_logs_a_node_leaves_out_of_range_answers_are_taken_by_block_hash(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    async with running_proxy(anvil.url) as proxy:
        proxy.faults.empty_logs_newest = 4
        config = tailer_settings(database_url, [proxy.url], hnv)
        async with running_tailer(config, pool):
            await make_history(pool, anvil, hnv, "live")
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert proxy.stats.served["empty"] >= 1
    assert proxy.stats.served["by_hash"] >= 1


async def test_an_outage_of_every_endpoint_needs_no_restart(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    async with running_proxy(anvil.url) as proxy:
        config = tailer_settings(database_url, [proxy.url], hnv)
        async with running_tailer(config, pool) as task:
            await wait_settled(pool, anvil)
            proxy.faults.drop_rate = 1.0
            await make_history(pool, anvil, hnv, "outage")

            async def refused_a_while() -> bool:
                return proxy.stats.served["drop"] >= 5

            await wait_for(refused_a_while, timeout_s=30, what="dropped calls")
            proxy.clear()
            await wait_settled(pool, anvil)
            assert not task.done()

    await assert_index_matches_chain(pool, anvil, hnv)


async def test_an_endpoint_serving_another_chain_is_never_read(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    await make_history(pool, anvil, hnv, "right")
    async with running_anvil(chain_id=4242) as stranger:
        # Same deployer, same nonces: the token sits at the same address there.
        await deploy_hnv(stranger)
        await stranger.mine(300)
        config = tailer_settings(database_url, [stranger.url, anvil.url], hnv)
        async with running_tailer(config, pool):
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)


async def test_an_intent_submitted_after_its_mint_was_indexed_settles_on_that_mint(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    # As after a restore from backup: the intent is ready again, yet its mint
    # is on chain, and the tailer indexes that mint before anyone looks.
    async with db.transaction(pool) as connection:
        intent, _ = await intents.create(
            connection,
            partner="aurora",
            kind="booking",
            source_key="restored",
            wallet=HOLDERS[0],
            amount_wei=Wei(HNV),
            rule_version="test",
            status=intents.READY,
        )
    data = token.mint_reward_data(HOLDERS[0], Wei(HNV), intent.id)
    minted = await send(anvil, OUR_KEY, hnv.address, data)
    await anvil.mine(4)
    config = tailer_settings(database_url, [anvil.url], hnv, confirmations=3)
    async with running_tailer(config, pool):
        await wait_settled(pool, anvil)
        assert await status_of(pool, intent.id) == intents.READY

        # The submitter adopts the mint instead of signing again.
        async with db.transaction(pool) as connection:
            await intents.transition(
                connection,
                intent.id,
                from_statuses=(intents.READY,),
                to_status=intents.SUBMITTED,
                signer=OUR_SIGNER,
                tx_hash=bytes.fromhex(minted.tx_hash[2:]),
            )

        async def confirmed() -> bool:
            return await status_of(pool, intent.id) == intents.CONFIRMED

        await wait_for(confirmed, timeout_s=20, what="the intent to settle")

    async with pool.acquire() as connection:
        settled = await intents.get(connection, intent.id)
        assert await transfers.unsettled(connection) == []
    assert settled is not None
    assert settled.tx_hash == bytes.fromhex(minted.tx_hash[2:])


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """Collect the records logged inside the block, as loguru serialises them."""
    lines: list[dict[str, Any]] = []
    sink = logger.add(
        lambda message: lines.append(orjson.loads(str(message))["record"]),
        serialize=True,
        level="DEBUG",
    )
    try:
        yield lines
    finally:
        logger.remove(sink)


def logged(lines: list[dict[str, Any]], message: str) -> int:
    return sum(line["message"] == message for line in lines)


def ws_of(url: str) -> str:
    return url.replace("http://", "ws://", 1)


async def test_a_new_head_over_websocket_wakes_the_tailer_before_the_poll_interval(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    # Two minutes between polls: only the socket can make the tailer look
    # again within the test's timeout.
    config = tailer_settings(
        database_url,
        [anvil.url],
        hnv,
        poll_interval_ms=120_000,
        head_stall_s=600,
        ws_url=ws_of(anvil.url),
    )
    with captured_logs() as lines:
        async with running_tailer(config, pool):

            async def subscribed() -> bool:
                return logged(lines, "newheads subscribed") >= 1

            await wait_for(subscribed, timeout_s=20, what="the subscription")
            await wait_settled(pool, anvil)
            for tag in ("first", "second"):
                await make_history(pool, anvil, hnv, tag)
                await wait_settled(pool, anvil, timeout_s=20)

    await assert_index_matches_chain(pool, anvil, hnv)


async def test_a_dead_websocket_leaves_the_tailer_polling(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    with captured_logs() as lines:
        async with running_anvil() as doomed:
            config = tailer_settings(
                database_url, [anvil.url], hnv, ws_url=ws_of(doomed.url)
            )
            async with running_tailer(config, pool) as task:

                async def subscribed() -> bool:
                    return logged(lines, "newheads subscribed") >= 1

                await wait_for(subscribed, timeout_s=20, what="the subscription")
                doomed.process.terminate()
                await asyncio.to_thread(doomed.process.wait, 10)

                async def lost() -> bool:
                    message = "newheads socket lost, polling alone until it is back"
                    return logged(lines, message) >= 1

                await wait_for(lost, timeout_s=20, what="the socket to be lost")
                await make_history(pool, anvil, hnv, "polled")
                await wait_settled(pool, anvil)
                assert not task.done()

    await assert_index_matches_chain(pool, anvil, hnv)


async def test_an_endpoint_whose_head_stands_still_is_left_after_the_stall_limit(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    await anvil.mine(200)
    async with running_proxy(anvil.url) as frozen, running_proxy(anvil.url) as behind:
        # Far behind, but moving: once the other head stands still for
        # HAVEN_HEAD_STALL_S it is believed, lower head and all.
        behind.faults.lag_blocks = 150
        config = tailer_settings(
            database_url, [frozen.url, behind.url], hnv, head_stall_s=1.0
        )
        with captured_logs() as lines:
            async with running_tailer(config, pool) as task:
                await wait_settled(pool, anvil)
                frozen.faults.frozen_head = await anvil.block_number()

                async def switched_for_stall() -> bool:
                    await anvil.mine(1)
                    return any(
                        line["message"] == SWITCHED
                        and line["extra"].get("reason") == "head stalled"
                        for line in lines
                    )

                await wait_for(switched_for_stall, timeout_s=30, what="a switch")
                assert not task.done()
