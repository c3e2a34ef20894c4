"""EIP-1559 fees: what to offer first, and how to re-price a transaction.

Pure integer arithmetic in wei; no I/O. The market is read from
``eth_feeHistory``: the tip is a percentile of recent blocks' rewards, the
next base fee is the last entry of ``baseFeePerGas``. The fee cap leaves
room for the base fee to double (two full blocks) before the transaction
stops being includable. Nothing here ever exceeds the configured cap.

A replacement raises both the tip and the fee cap by at least 12.5% over the
highest values ever offered at that nonce: geth asks for 10%, some clients
for strictly more, and a node may still hold any one of our earlier
attempts.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from haven.types import Wei

HISTORY_BLOCKS = 10
TIP_PERCENTILE = 50
# 9/8 = +12.5%, in integers: ceil(x * 9 / 8).
BUMP_NUMERATOR = 9
BUMP_DENOMINATOR = 8
BASE_FEE_HEADROOM = 2


@dataclass(frozen=True)
class Fees:
    """The two EIP-1559 prices of one transaction, in wei per gas."""

    max_fee_wei: Wei
    max_priority_fee_wei: Wei


@dataclass(frozen=True)
class Market:
    """What the chain asks right now: the next block's base fee and a going tip."""

    next_base_fee_wei: Wei
    tip_wei: Wei

    @property
    def floor(self) -> Fees:
        """The least offer that is includable with headroom at today's prices."""
        cap = BASE_FEE_HEADROOM * self.next_base_fee_wei + self.tip_wei
        return Fees(Wei(cap), self.tip_wei)


def read_market(history: Mapping[str, Any], *, min_tip_wei: int) -> Market:
    """Read a Market from an ``eth_feeHistory`` answer (one reward percentile).

    Blocks with no gas used say nothing about tips and are left out; with no
    evidence at all the tip is ``min_tip_wei``, which is also its floor.
    """
    base_fees = history.get("baseFeePerGas") or ["0x0"]
    ratios = history.get("gasUsedRatio") or []
    rewards = history.get("reward") or []
    tips = [
        int(reward[0], 16)
        for reward, ratio in zip(rewards, ratios, strict=False)
        if reward and ratio > 0
    ]
    tip = statistics.median_low(tips) if tips else 0
    return Market(Wei(int(base_fees[-1], 16)), Wei(max(tip, min_tip_wei)))


def initial(market: Market, *, max_fee_wei: int) -> Fees:
    """Return the first offer for a new transaction, capped at ``max_fee_wei``."""
    floor = market.floor
    cap = min(floor.max_fee_wei, max_fee_wei)
    tip = min(floor.max_priority_fee_wei, cap)
    return Fees(Wei(cap), Wei(tip))


def raised(value_wei: int) -> int:
    """Return the least value at least 12.5% above ``value_wei``, and above it."""
    scaled = -(-value_wei * BUMP_NUMERATOR // BUMP_DENOMINATOR)
    return max(value_wei + 1, scaled)


def highest(offers: Sequence[Fees]) -> Fees:
    """Return the highest fee cap and the highest tip ever offered (separately)."""
    if not offers:
        raise ValueError("no offers to compare")
    return Fees(
        Wei(max(o.max_fee_wei for o in offers)),
        Wei(max(o.max_priority_fee_wei for o in offers)),
    )


def bump(offers: Sequence[Fees], market: Market, *, max_fee_wei: int) -> Fees | None:
    """Return a replacement offer over every earlier one, or None at the cap.

    Both prices rise at least 12.5% over the highest ever offered at the
    nonce, and to at least the market floor. None means no such offer fits
    under ``max_fee_wei``: keep re-sending the last one and wait for fees to
    fall.
    """
    top = highest(offers)
    floor = market.floor
    tip = max(raised(top.max_priority_fee_wei), floor.max_priority_fee_wei)
    cap = max(raised(top.max_fee_wei), floor.max_fee_wei, tip)
    if cap > max_fee_wei:
        cap = max_fee_wei
    if cap < raised(top.max_fee_wei) or tip > cap:
        return None
    return Fees(Wei(cap), Wei(tip))


def is_well_above_market(
    offers: Sequence[Fees], market: Market, *, factor: int
) -> bool:
    """Tell whether our best offer already pays ``factor`` times the going tip.

    Such a transaction is not stuck for want of money: it is includable at
    today's base fee, so bumping again would only burn fees.
    """
    top = highest(offers)
    includable = top.max_fee_wei >= market.next_base_fee_wei + market.tip_wei
    return includable and top.max_priority_fee_wei >= factor * market.tip_wei
