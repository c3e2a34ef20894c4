"""Matching: every on-chain mint paired with its intent, and the breaks found.

A mint is matched to an intent only by the intent id the contract emitted,
never by amount or time; amounts must then agree to the wei and recipients
exactly (both checksummed). Matching is a pure function of a snapshot, so a
re-run of the same cut finds the same breaks in the same order.

Discrepancies are summed two ways: net (signed, mints minus what was owed)
and gross (absolute values). A mint 5 HNV too high and another 5 HNV too low
net to zero but gross to 10, and either is a break.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from haven import intents
from haven.reconciler import breaks
from haven.reconciler import evidence as ev
from haven.reconciler.breaks import Break
from haven.reconciler.config import ReconcilerConfig
from haven.reconciler.snapshot import IntentAt, Mint, Snapshot
from haven.types import Wei, intent_id_hex

# Statuses in which a mint for the intent is expected or already seen.
MINTABLE = (intents.SUBMITTED, intents.MINED, intents.CONFIRMED)


@dataclass(frozen=True)
class Matching:
    """The outcome of matching one snapshot."""

    matched: int
    pending: tuple[IntentAt, ...]
    found: tuple[Break, ...]
    discrepancy_gross_wei: Wei
    discrepancy_net_wei: Wei

    @property
    def blocking(self) -> tuple[Break, ...]:
        return tuple(b for b in self.found if b.is_blocking)


def match(snapshot: Snapshot, config: ReconcilerConfig) -> Matching:
    """Match the snapshot's mints to its intents and list every break."""
    by_intent: dict[bytes, list[Mint]] = defaultdict(list)
    for mint in snapshot.mints:
        by_intent[mint.intent_id].append(mint)
    intents_by_id = {i.id: i for i in snapshot.intents}
    ours = {s.address for s in snapshot.signers}

    found: list[Break] = []
    deltas: list[int] = []
    for intent_id, mints in sorted(by_intent.items()):
        intent = intents_by_id.get(intent_id)
        found += _check_mints(intent_id, intent, mints, ours, deltas)
    for intent in snapshot.intents:
        has_mint = bool(by_intent.get(intent.id))
        found += _check_intent(intent, snapshot, has_mint, config)
        if _is_reorged_out(intent, snapshot, has_mint):
            deltas.append(-intent.amount_wei)
    found += _check_supply(snapshot)
    found += _check_balances(snapshot, config)

    accepted = [_with_acceptance(b, snapshot.accepted) for b in found]
    broken = {b.subject for b in accepted}
    # Settled intents were matched in SQL; none of them can break, and
    # their mints agree to the wei, so they add nothing to the deltas.
    return Matching(
        matched=snapshot.settled.count
        + sum(
            1
            for i in snapshot.intents
            if i.status == intents.CONFIRMED
            and by_intent.get(i.id)
            and intent_id_hex(i.id) not in broken
        ),
        pending=tuple(
            i
            for i in snapshot.intents
            if i.is_outstanding or i.id in snapshot.later_mint_ids
        ),
        found=tuple(sorted(accepted, key=Break.sort_key)),
        discrepancy_gross_wei=Wei(sum(abs(d) for d in deltas)),
        discrepancy_net_wei=Wei(sum(deltas)),
    )


def _with_acceptance(brk: Break, accepted: dict[tuple[str, str], bytes]) -> Break:
    if accepted.get(brk.key) != brk.digest:
        return brk
    return Break(brk.cls, brk.subject, brk.evidence, accepted=True)


def mint_json(mint: Mint) -> dict[str, Any]:
    """Render a mint as evidence."""
    return {
        "block_number": mint.block_number,
        "block_hash": ev.hex_bytes(mint.block_hash),
        "log_index": mint.log_index,
        "tx_hash": ev.hex_bytes(mint.tx_hash),
        "to": mint.to_address,
        "amount_wei": str(mint.amount_wei),
        "minter": mint.minter,
    }


def _check_mints(
    intent_id: bytes,
    intent: IntentAt | None,
    mints: list[Mint],
    ours: set[str],
    deltas: list[int],
) -> list[Break]:
    subject = intent_id_hex(intent_id)
    found = []
    reasons = []
    if intent is None:
        reasons.append("no_intent")
    elif intent.status not in MINTABLE:
        reasons.append(f"intent_{intent.status}")
    if any(m.minter not in ours for m in mints):
        reasons.append("foreign_minter")
    if reasons:
        found.append(
            Break(
                breaks.UNEXPECTED_MINT,
                subject,
                {"intent_id": subject, "reasons": reasons, "mints": _mints(mints)},
            )
        )
    if intent is None or intent.status not in MINTABLE:
        deltas.extend(m.amount_wei for m in mints)
        return found

    first, *extra = mints
    deltas.append(first.amount_wei - intent.amount_wei)
    deltas.extend(m.amount_wei for m in extra)
    if extra:
        found.append(
            Break(
                breaks.DUPLICATE_MINT,
                subject,
                {
                    "intent_id": subject,
                    "intent_amount_wei": str(intent.amount_wei),
                    "mints": _mints(mints),
                },
            )
        )
    found += _check_agreement(subject, intent, first)
    return found


def _check_agreement(subject: str, intent: IntentAt, mint: Mint) -> list[Break]:
    found = []
    if mint.amount_wei != intent.amount_wei:
        found.append(
            Break(
                breaks.AMOUNT_MISMATCH,
                subject,
                {
                    "intent_id": subject,
                    "partner": intent.partner,
                    "intent_amount_wei": str(intent.amount_wei),
                    "minted_amount_wei": str(mint.amount_wei),
                    "difference_wei": str(mint.amount_wei - intent.amount_wei),
                    "mint": mint_json(mint),
                },
            )
        )
    if mint.to_address != intent.wallet:
        found.append(
            Break(
                breaks.RECIPIENT_MISMATCH,
                subject,
                {
                    "intent_id": subject,
                    "partner": intent.partner,
                    "intent_wallet": intent.wallet,
                    "minted_to": mint.to_address,
                    "mint": mint_json(mint),
                },
            )
        )
    return found


def _mints(mints: list[Mint]) -> list[dict[str, Any]]:
    return [mint_json(m) for m in mints]


def _is_reorged_out(intent: IntentAt, snapshot: Snapshot, has_mint: bool) -> bool:
    return (
        intent.status == intents.CONFIRMED
        and not has_mint
        and intent.id not in snapshot.later_mint_ids
    )


def _check_intent(
    intent: IntentAt, snapshot: Snapshot, has_mint: bool, config: ReconcilerConfig
) -> list[Break]:
    if not _may_break(intent, has_mint):
        return []
    subject = intent_id_hex(intent.id)
    facts = {
        "intent_id": subject,
        "partner": intent.partner,
        "amount_wei": str(intent.amount_wei),
    }
    since = ev.timestamp(intent.status_since)
    at = snapshot.cut.at
    found = []
    if _is_reorged_out(intent, snapshot, has_mint):
        found.append(
            Break(breaks.REORGED_OUT, subject, {**facts, "confirmed_at": since})
        )
    minted = has_mint or intent.status in (intents.MINED, intents.CONFIRMED)
    if intent.reversed_at is not None and minted:
        found.append(
            Break(
                breaks.REVERSED_AFTER_MINT,
                subject,
                {**facts, "reversed_at": ev.timestamp(intent.reversed_at)},
            )
        )
    if intent.status == intents.SUBMITTED and not has_mint:
        grace = timedelta(seconds=config.missing_on_chain_grace_s)
        if intent.status_since + grace <= at:
            found.append(
                Break(
                    breaks.MISSING_ON_CHAIN,
                    subject,
                    {**facts, "submitted_at": since, "grace_s": _seconds(grace)},
                )
            )
    if intent.status == intents.READY:
        grace = timedelta(seconds=config.stale_intent_grace_s)
        if intent.status_since + grace <= at:
            found.append(
                Break(
                    breaks.STALE_INTENT,
                    subject,
                    {**facts, "ready_since": since, "grace_s": _seconds(grace)},
                )
            )
    return found


def _may_break(intent: IntentAt, has_mint: bool) -> bool:
    """Cheap pre-check of :func:`_check_intent`: False when no rule there can apply.

    A confirmed intent with its mint and never reversed is the common case:
    a book of millions is mostly that, and builds no evidence for it.
    """
    if intent.reversed_at is not None:
        return True
    if intent.status == intents.CONFIRMED:
        return not has_mint
    return intent.status in (intents.SUBMITTED, intents.READY)


def _seconds(span: timedelta) -> int:
    return int(span.total_seconds())


def _check_supply(snapshot: Snapshot) -> list[Break]:
    if snapshot.chain is None or snapshot.token_address is None:
        return []
    minted = snapshot.minted_indexed_wei
    burned = snapshot.transfers_burned_wei
    indexed = minted - burned
    supply = snapshot.chain.total_supply_wei
    if supply == indexed:
        return []
    return [
        Break(
            breaks.SUPPLY_DRIFT,
            snapshot.token_address,
            {
                "token": snapshot.token_address,
                "total_supply_wei": str(supply),
                "indexed_minted_wei": str(minted),
                "indexed_burned_wei": str(burned),
                "indexed_supply_wei": str(indexed),
                "drift_wei": str(supply - indexed),
            },
        )
    ]


def _check_balances(snapshot: Snapshot, config: ReconcilerConfig) -> list[Break]:
    if snapshot.chain is None:
        return []
    threshold = config.low_balance_threshold_wei
    return [
        Break(
            breaks.LOW_SIGNER_BALANCE,
            address,
            {
                "signer": address,
                "threshold_wei": str(threshold),
                ev.OBSERVED: {"balance_wei": str(balance)},
            },
        )
        for address, balance in sorted(snapshot.chain.balances_wei.items())
        if balance < threshold
    ]
