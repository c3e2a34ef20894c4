"""Stuck transactions: what to do with one nonce that is ours and not yet mined.

Pure decisions over the attempts at a nonce; the submitter carries them out.
Stuck is measured in blocks: a nonce is stuck when no attempt a node
accepted has been included for ``stuck_after_blocks`` blocks since the
newest one was first accepted. Between re-pricings the same bytes are sent
again, but only when the node does not hold the nonce (its pending nonce is
not past it) — a node that holds it gains nothing from a re-send.

A stuck nonce is re-priced (:func:`haven.daemon.fees.bump`) unless our offer
already pays well above the market — then the problem is propagation, not
price, and it is re-sent and alerted instead — or no higher offer fits
under the cap — then it is re-sent and alerted, and re-priced again once
the market lets it. A nonce whose last send was refused for its price is
re-priced at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from haven import chain
from haven.daemon import fees
from haven.daemon.attempts import Attempt
from haven.daemon.fees import Fees, Market

WAIT = "wait"
RESEND = "resend"
REPRICE = "reprice"

BUMP = "bump"
PROPAGATION = "propagation"
AT_CAP = "at_cap"

# Refusals that a better price cures.
PRICE_REFUSALS = frozenset(
    {chain.FEE_CAP_BELOW_BASE_FEE, chain.REPLACEMENT_UNDERPRICED, chain.UNDERPRICED}
)


@dataclass(frozen=True)
class Rules:
    """When a nonce counts as stuck, and how far re-pricing may go."""

    stuck_after_blocks: int = 3
    max_fee_wei: int = 500 * 10**9
    # Our tip at this many times the market's means price is not the problem.
    propagation_factor: int = 2


@dataclass(frozen=True)
class Verdict:
    action: str  # WAIT, RESEND or REPRICE
    stuck: bool = False  # REPRICE because of blocks, not a refusal


@dataclass(frozen=True)
class Plan:
    action: str  # BUMP, PROPAGATION or AT_CAP
    fees: Fees | None = None


def offers(attempts: Sequence[Attempt]) -> list[Fees]:
    """Return the fees of every attempt at a nonce: all count as broadcast."""
    return [Fees(a.max_fee_wei, a.max_priority_fee_wei) for a in attempts]


def assess(
    attempts: Sequence[Attempt], *, head_block: int, node_has_nonce: bool, rules: Rules
) -> Verdict:
    """Decide between waiting, re-sending and re-pricing one pending nonce.

    ``attempts`` are all attempts at the nonce, oldest first (never empty).
    """
    newest = attempts[-1]
    if newest.error_kind in PRICE_REFUSALS:
        return Verdict(REPRICE)
    accepted = [a.sent_block for a in attempts if a.sent_block is not None]
    if accepted and head_block - max(accepted) >= rules.stuck_after_blocks:
        return Verdict(REPRICE, stuck=True)
    if not node_has_nonce:
        return Verdict(RESEND)
    return Verdict(WAIT)


def reprice(
    attempts: Sequence[Attempt], market: Market, *, stuck: bool, rules: Rules
) -> Plan:
    """Choose between a bump, a propagation alert and waiting at the cap."""
    offered = offers(attempts)
    if stuck and fees.is_well_above_market(
        offered, market, factor=rules.propagation_factor
    ):
        return Plan(PROPAGATION)
    bumped = fees.bump(offered, market, max_fee_wei=rules.max_fee_wei)
    if bumped is None:
        return Plan(AT_CAP)
    return Plan(BUMP, bumped)
