"""Fee arithmetic: integers only, under the cap, bumps over every earlier offer."""

from __future__ import annotations

import random

import pytest

from haven.daemon import fees
from haven.daemon.fees import Fees, Market
from haven.types import Wei

GWEI = 10**9
CAP = 500 * GWEI


def offer(max_fee: int, tip: int) -> Fees:
    return Fees(Wei(max_fee), Wei(tip))


def test_market_tip_is_the_median_reward_of_blocks_that_had_gas_used():
    history = {
        "baseFeePerGas": [hex(GWEI), hex(2 * GWEI), hex(3 * GWEI)],
        "gasUsedRatio": [0.5, 0.0],
        "reward": [[hex(7 * GWEI)], ["0x0"]],
    }

    market = fees.read_market(history, min_tip_wei=GWEI // 10)

    assert market == Market(Wei(3 * GWEI), Wei(7 * GWEI))


def test_market_with_only_empty_blocks_offers_the_minimum_tip():
    history = {
        "baseFeePerGas": ["0x64", "0x5a"],
        "gasUsedRatio": [0.0],
        "reward": [["0x0"]],
    }

    market = fees.read_market(history, min_tip_wei=123)

    assert market == Market(Wei(0x5A), Wei(123))


def test_first_offer_doubles_the_next_base_fee_and_adds_the_tip():
    first = fees.initial(Market(Wei(10 * GWEI), Wei(GWEI)), max_fee_wei=CAP)

    assert first == offer(21 * GWEI, GWEI)


def test_first_offer_never_exceeds_the_cap_and_keeps_the_tip_under_it():
    first = fees.initial(Market(Wei(400 * GWEI), Wei(GWEI)), max_fee_wei=CAP)

    assert first == offer(CAP, GWEI)
    tiny_cap = fees.initial(Market(Wei(GWEI), Wei(5 * GWEI)), max_fee_wei=3 * GWEI)
    assert tiny_cap == offer(3 * GWEI, 3 * GWEI)


@pytest.mark.parametrize("value", [0, 1, 7, 8, 9, 1_000_000_007, 3 * GWEI])
def test_raised_is_at_least_an_eighth_more_and_strictly_more(value: int):
    bumped = fees.raised(value)

    assert bumped > value
    assert bumped * 8 >= value * 9
    assert bumped == max(value + 1, -(-value * 9 // 8))


def test_bump_raises_both_prices_over_the_highest_ever_offered_not_the_last():
    earlier = [offer(30 * GWEI, 2 * GWEI), offer(20 * GWEI, 5 * GWEI)]
    quiet_market = Market(Wei(GWEI), Wei(GWEI))

    bumped = fees.bump(earlier, quiet_market, max_fee_wei=CAP)

    assert bumped is not None
    assert bumped.max_fee_wei * 8 >= 30 * GWEI * 9
    assert bumped.max_priority_fee_wei * 8 >= 5 * GWEI * 9


def test_bump_rises_to_the_market_floor_when_the_market_moved_further():
    earlier = [offer(3 * GWEI, GWEI)]
    spiked = Market(Wei(100 * GWEI), Wei(2 * GWEI))

    bumped = fees.bump(earlier, spiked, max_fee_wei=CAP)

    assert bumped == offer(202 * GWEI, 2 * GWEI)


def test_bump_gives_up_at_the_cap_instead_of_offering_too_little():
    earlier = [offer(CAP - GWEI, GWEI)]

    assert fees.bump(earlier, Market(Wei(GWEI), Wei(GWEI)), max_fee_wei=CAP) is None


def test_bump_clamps_a_market_floor_above_the_cap_when_the_raise_still_fits():
    earlier = [offer(440 * GWEI, GWEI)]
    spiked = Market(Wei(250 * GWEI), Wei(GWEI))

    bumped = fees.bump(earlier, spiked, max_fee_wei=CAP)

    assert bumped == offer(CAP, fees.raised(GWEI))


def test_random_bump_chains_respect_both_rules_and_the_cap():
    rng = random.Random(1234)
    for _ in range(200):
        offers = [offer(rng.randint(1, 50) * GWEI, rng.randint(0, 5) * GWEI)]
        while True:
            market = Market(
                Wei(rng.randint(0, 60) * GWEI), Wei(rng.randint(1, 3) * GWEI)
            )
            bumped = fees.bump(offers, market, max_fee_wei=CAP)
            if bumped is None:
                break
            top = fees.highest(offers)
            assert isinstance(bumped.max_fee_wei, int)
            assert bumped.max_fee_wei <= CAP
            assert bumped.max_priority_fee_wei <= bumped.max_fee_wei
            assert bumped.max_fee_wei * 8 >= top.max_fee_wei * 9
            assert bumped.max_priority_fee_wei * 8 >= top.max_priority_fee_wei * 9
            assert bumped.max_priority_fee_wei > top.max_priority_fee_wei
            offers.append(bumped)


def test_well_above_market_needs_an_includable_cap_and_a_high_tip():
    market = Market(Wei(10 * GWEI), Wei(GWEI))

    assert fees.is_well_above_market([offer(30 * GWEI, 2 * GWEI)], market, factor=2)
    assert not fees.is_well_above_market([offer(30 * GWEI, GWEI)], market, factor=2)
    assert not fees.is_well_above_market([offer(10 * GWEI, 5 * GWEI)], market, factor=2)
