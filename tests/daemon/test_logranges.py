"""Adaptive eth_getLogs ranges: the wordings of real providers, staged by the
fault proxy in front of anvil, and the range arithmetic on its own."""

from __future__ import annotations

import pytest

from harness.anvil import AnvilNode
from harness.faultproxy import RANGE_WORDINGS, RESULT_WORDINGS, running_proxy
from harness.tailkit import (
    HOLDERS,
    Hnv,
    assert_index_matches_chain,
    one_block,
    running_tailer,
    submit_intent,
    tailer_settings,
    wait_settled,
)
from haven import db
from haven.chain import RANGE_TOO_LARGE, classify
from haven.daemon.logranges import (
    FIRST_SPAN_BLOCKS,
    LogRange,
    Suggestion,
    suggested_blocks,
)

pytestmark = pytest.mark.timeout(90)
HNV = 10**18


# --- the arithmetic ------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (RANGE_WORDINGS["alchemy"][1].format(cap="2K"), Suggestion(2000, True)),
        (
            "query returned more than 10000 results. "
            "Try with this block range [0x1e8480, 0x1e8c4f].",
            Suggestion(0x1E8C4F - 0x1E8480 + 1, False),
        ),
        ("query returned more than 10000 results", None),
        ("eth_getLogs is limited to a 10000 range", Suggestion(10000, True)),
        ("eth_getLogs is limited to a 10,000 blocks range", Suggestion(10000, True)),
        ("block range is too wide", None),
        ("exceed maximum block range: 5000", Suggestion(5000, True)),
        ("ranges over 800 blocks are not supported", Suggestion(800, True)),
        (
            "You can make eth_getLogs requests with up to a 2000 block range",
            Suggestion(2000, True),
        ),
    ],
)
def test_the_span_a_provider_suggests_is_read_from_its_wording(
    message: str, expected: Suggestion | None
) -> None:
    assert suggested_blocks(message) == expected
    assert classify(-32000, message) == RANGE_TOO_LARGE


def test_a_range_shrinks_to_a_suggested_cap_and_never_grows_past_it() -> None:
    span = LogRange(5000)
    span.too_large(5000, "exceed maximum block range: 1000")
    assert span.size == 1000
    for _ in range(5):
        span.succeeded(span.size, elapsed_s=0.01)
    assert span.size == 1000


def test_a_range_halves_when_the_hint_names_the_span_just_refused() -> None:
    span = LogRange(2000)
    span.too_large(2000, RANGE_WORDINGS["alchemy"][1].format(cap="2K"))
    assert span.size == 1000
    span.too_large(1, "block range is too wide")
    assert span.size == 1


def test_a_range_grows_back_after_a_timeout_while_calls_are_fast() -> None:
    span = LogRange(800)
    span.timed_out(800)
    span.timed_out(400)
    assert span.size == 200
    span.succeeded(200, elapsed_s=5.0)
    assert span.size == 200

    sizes = []
    for _ in range(40):
        span.succeeded(span.size, elapsed_s=0.01)
        sizes.append(span.size)
    # Patient before daring the refused span again, but back in the end.
    assert sizes[0] == 200
    assert sizes[-1] == 800


def test_a_density_hint_is_not_taken_as_a_cap() -> None:
    span = LogRange(1000)
    span.too_large(
        1000,
        "query returned more than 5 results. Try with this block range [0x10, 0x19].",
    )
    assert span.size == 10
    span.succeeded(10, elapsed_s=0.01)
    assert span.size == 20


def test_a_span_starts_short_and_is_fitted_to_the_logs_it_returns() -> None:
    span = LogRange(2000, max_logs=1000)
    assert span.size == FIRST_SPAN_BLOCKS

    span.succeeded(span.size, elapsed_s=0.01, logs=5000)
    assert span.size == FIRST_SPAN_BLOCKS // 5
    # Doubling would pass the bound: the span holds.
    span.succeeded(span.size, elapsed_s=0.01, logs=600)
    assert span.size == FIRST_SPAN_BLOCKS // 5
    span.succeeded(span.size, elapsed_s=0.01, logs=100)
    assert span.size == 2 * FIRST_SPAN_BLOCKS // 5


# --- against anvil through the proxy --------------------------------------------


async def spread_history(pool: db.Pool, anvil: AnvilNode, hnv: Hnv) -> None:
    """About 550 blocks: lone mints far apart and one block holding five.

    anvil slows down past a few hundred blocks, so the caps here are small.
    """
    for i in range(4):
        await submit_intent(
            pool,
            anvil,
            hnv,
            source_key=f"lone-{i}",
            wallet=HOLDERS[i % 3],
            amount_wei=HNV,
        )
        await anvil.mine(130)
    async with one_block(anvil):
        for i in range(5):
            await submit_intent(
                pool,
                anvil,
                hnv,
                source_key=f"crowd-{i}",
                wallet=HOLDERS[i % 3],
                amount_wei=HNV,
                wait=False,
            )
    await anvil.mine(20)


@pytest.mark.parametrize(
    ("wording", "cap_blocks", "hinted"),
    [
        ("alchemy", 100, True),
        ("quicknode", 60, True),
        ("maxrange", 80, True),
        ("ankr", 50, False),
    ],
)
async def test_a_block_range_cap_is_learned_from_each_provider_wording(
    anvil: AnvilNode,
    hnv: Hnv,
    pool: db.Pool,
    database_url: str,
    wording: str,
    cap_blocks: int,
    hinted: bool,
) -> None:
    await spread_history(pool, anvil, hnv)
    async with running_proxy(anvil.url) as proxy:
        proxy.faults.range_cap = cap_blocks
        proxy.faults.range_wording = wording
        config = tailer_settings(
            database_url, [proxy.url], hnv, log_range_max_blocks=5000
        )
        async with running_tailer(config, pool):
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert proxy.stats.served["range_cap"] >= 1
    assert max(proxy.stats.log_spans) <= cap_blocks
    if hinted:
        # The suggested span was used as given, and the cap never tried again.
        assert proxy.stats.log_spans[0] == cap_blocks
        assert proxy.stats.served["range_cap"] == 1


@pytest.mark.parametrize("wording", sorted(RESULT_WORDINGS))
async def test_a_result_cap_shrinks_the_range_and_a_crowded_block_is_read_by_hash(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str, wording: str
) -> None:
    await spread_history(pool, anvil, hnv)
    async with running_proxy(anvil.url) as proxy:
        # Each mint is two logs: the crowded block holds ten.
        proxy.faults.result_cap = 3
        proxy.faults.result_wording = wording
        config = tailer_settings(database_url, [proxy.url], hnv)
        async with running_tailer(config, pool):
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert proxy.stats.served["result_cap"] >= 1
    assert proxy.stats.served["by_hash"] >= 1


async def test_a_range_that_times_out_after_forwarding_is_shrunk_until_it_answers(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    await spread_history(pool, anvil, hnv)
    async with running_proxy(anvil.url) as proxy:
        proxy.faults.slow_logs_over = 100
        proxy.faults.hang_s = 1.5
        config = tailer_settings(database_url, [proxy.url], hnv, rpc_timeout_s=0.5)
        async with running_tailer(config, pool):
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert proxy.stats.served["hang"] >= 1
    # Only HAVEN_RPC_TIMEOUT_S gives up on a slow answer: with the default
    # each range would have answered late, once, and never been asked again.
    asked: dict[int, list[int]] = {}
    for first, span in proxy.stats.log_ranges:
        asked.setdefault(first, []).append(span)
    retried = [spans for spans in asked.values() if len(spans) > 1]
    assert retried and all(spans[-1] < spans[0] for spans in retried)


async def test_no_log_range_is_wider_than_the_configured_maximum(
    anvil: AnvilNode, hnv: Hnv, pool: db.Pool, database_url: str
) -> None:
    await spread_history(pool, anvil, hnv)
    async with running_proxy(anvil.url) as proxy:
        config = tailer_settings(
            database_url, [proxy.url], hnv, log_range_max_blocks=64
        )
        async with running_tailer(config, pool):
            await wait_settled(pool, anvil)

    await assert_index_matches_chain(pool, anvil, hnv)
    assert max(proxy.stats.log_spans) == 64
    assert proxy.stats.served["range_cap"] == 0
