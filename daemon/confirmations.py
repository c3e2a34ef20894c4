"""Intent states that follow the indexed chain: seen → confirmed → final, and back.

A mint is *seen* once its RewardMinted is indexed (the intent goes
``submitted → mined``), *confirmed* once its block is ``confirmations`` deep
below the checkpoint (``mined → confirmed``), and *final* once it is
``finality_depth`` deep, past which its header may be pruned. A reorg that
rolls a mint back returns the intent to ``submitted`` so the submitter puts
its stored transaction back; un-confirming one raises a critical alert.

Every function here runs inside the tailer's transaction that writes or
rolls back the indexed rows, so an intent and the indexed chain never
disagree for a reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import asyncpg
from loguru import logger

from haven import intents
from haven.daemon import alerts_outbox, attempts, transfers
from haven.intents import CONFIRMED, MINED, SUBMITTED, Intent
from haven.token import RewardMinted
from haven.types import TxHash, intent_id_hex

if TYPE_CHECKING:
    from loguru import Logger

SEEN = "seen"
FINAL = "final"

UNCONFIRMED_RULE = "mint_unconfirmed_by_reorg"


def depth(block_number: int, tip: int) -> int:
    """Return how many blocks deep ``block_number`` is when ``tip`` is the newest."""
    return tip - block_number + 1


def confirmed_through(tip: int, confirmations: int) -> int:
    """Return the highest block that is ``confirmations`` deep under ``tip``.

    A depth of 0 or 1 both confirm the tip itself.
    """
    return tip - max(confirmations, 1) + 1


def state(block_number: int, tip: int, *, confirmations: int, finality: int) -> str:
    """Return seen, confirmed or final for a block under ``tip``."""
    if depth(block_number, tip) >= finality:
        return FINAL
    if block_number <= confirmed_through(tip, confirmations):
        return CONFIRMED
    return SEEN


def _bound(mint: RewardMinted, intent: Intent | None = None) -> Logger:
    """A logger for ``mint``, carrying its intent's partner request id if known."""
    log = logger.bind(
        intent_id=intent_id_hex(mint.intent_id),
        tx_hash="0x" + mint.position.tx_hash.hex(),
        block_number=mint.position.block_number,
    )
    if intent is not None and intent.request_id:
        log = log.bind(request_id=intent.request_id)
    return log


async def record_mint(connection: asyncpg.Connection, mint: RewardMinted) -> bool:
    """Move the mint's intent ``submitted → mined``; return whether it moved."""
    return bool(await record_mints(connection, [mint]))


async def record_mints(
    connection: asyncpg.Connection, mints: Sequence[RewardMinted]
) -> list[RewardMinted]:
    """Move each mint's intent ``submitted → mined``; return the mints that moved.

    A mint of an unknown intent, of an intent in another status, or one that
    differs from its intent (recipient, amount, minter) stays unsettled: it
    is tried again every round (:func:`settle_stragglers`), and the
    reconciler reports it if it never settles. A handful of statements for
    the lot, whatever its size.
    """
    return [mint for mint, _ in await _settle_each(connection, mints)]


async def settle_stragglers(
    connection: asyncpg.Connection, *, confirmed_through: int
) -> int:
    """Settle intents submitted after their canonical mint was indexed.

    After a restore from backup an intent can be ``ready`` while its old
    mint is indexed; the submitter then adopts that mint and submits the
    intent without signing again. The indexed mint is the payment: settle on
    it, and confirm it at once if it is already deep. Returns how many moved.
    """
    stragglers = await transfers.unsettled(connection)
    # Mints that cannot settle were reported when they were indexed.
    settled = await _settle_each(connection, stragglers, report=False)
    for mint, intent in settled:
        if mint.position.block_number <= confirmed_through:
            await intents.transition(
                connection, intent.id, from_statuses=(MINED,), to_status=CONFIRMED
            )
            _bound(mint, intent).info("mint confirmed")
    return len(settled)


async def _settle_each(
    connection: asyncpg.Connection,
    mints: Sequence[RewardMinted],
    *,
    report: bool = True,
) -> list[tuple[RewardMinted, Intent]]:
    """Settle every mint of ``mints`` that can settle its intent, in chain order."""
    if not mints:
        return []
    ids = list(dict.fromkeys(mint.intent_id for mint in mints))
    found = await intents.get_many(connection, ids, for_update=True)
    signers = await attempts.signers_of(connection, ids)
    settled: list[tuple[RewardMinted, Intent]] = []
    for mint in mints:
        intent = found.get(mint.intent_id)
        problem = _unsettleable(intent, mint, signers.get(mint.intent_id, set()))
        if problem is not None:
            if report:
                _bound(mint, intent).warning(
                    "mint indexed without settling an intent", problem=problem
                )
            continue
        assert intent is not None
        settled.append((mint, intent))
        # A second mint of the same intent would find it mined, as one by one.
        found[mint.intent_id] = replace(intent, status=MINED)
    if not settled:
        return []
    await intents.mark_mined(
        connection,
        [
            (
                intent.id,
                mint.position.tx_hash,
                mint.position.block_number,
                mint.position.block_hash,
            )
            for mint, intent in settled
        ],
    )
    await attempts.settle_mined_all(
        connection,
        [
            (
                intent.id,
                TxHash("0x" + mint.position.tx_hash.hex()),
                mint.position.block_number,
            )
            for mint, intent in settled
        ],
    )
    await transfers.mark_settled_all(connection, [mint for mint, _ in settled])
    for mint, intent in settled:
        _bound(mint, intent).info("mint mined")
    return settled


def _unsettleable(
    intent: Intent | None, mint: RewardMinted, attempt_signers: set[str]
) -> str | None:
    """Say why ``mint`` cannot settle ``intent``, or None when it can."""
    if intent is None:
        return "unknown intent"
    if intent.status != SUBMITTED:
        return f"intent is {intent.status}, not submitted"
    if mint.to_address != intent.wallet:
        return f"recipient {mint.to_address}, intent wallet {intent.wallet}"
    if mint.amount_wei != intent.amount_wei:
        return f"amount {mint.amount_wei} wei, intent {intent.amount_wei} wei"
    signers = {signer.lower() for signer in attempt_signers}
    if intent.signer is not None:
        signers.add(intent.signer.lower())
    if mint.minter.lower() not in signers:
        return f"minter {mint.minter} is not a signer of this intent"
    return None


async def promote(connection: asyncpg.Connection, *, after: int, through: int) -> int:
    """Confirm mined intents of blocks ``after + 1`` to ``through``; return how many."""
    if through <= after:
        return 0
    mints = await transfers.mints_between(connection, after + 1, through)
    if not mints:
        return 0
    confirmed = await intents.confirm_mined(
        connection, [(mint.intent_id, mint.position.block_hash) for mint in mints]
    )
    by_id = {intent.id: intent for intent in confirmed}
    for mint in mints:
        intent = by_id.pop(mint.intent_id, None)
        if intent is not None and intent.block_hash == mint.position.block_hash:
            _bound(mint, intent).info("mint confirmed")
    return len(confirmed)


async def unwind(
    connection: asyncpg.Connection,
    removed: list[RewardMinted],
    *,
    fork_block: int,
    old_tip: int,
    confirmations: int,
) -> int:
    """Return the intents of rolled-back mints to ``submitted``; return how many.

    Un-confirming an intent raises a critical alert: something outside may
    already have acted on that confirmation.
    """
    moved = 0
    for mint in removed:
        intent = await intents.get(connection, mint.intent_id, for_update=True)
        if (
            intent is None
            or intent.status not in (MINED, CONFIRMED)
            or intent.block_hash != mint.position.block_hash
        ):
            continue
        await intents.transition(
            connection,
            intent.id,
            from_statuses=(MINED, CONFIRMED),
            to_status=SUBMITTED,
            reason=f"mint reorged out above block {fork_block}",
            block_number=None,
            block_hash=None,
        )
        await attempts.unsettle(connection, intent.id)
        _bound(mint, intent).info("mint reorged out", previous_status=intent.status)
        if intent.status == CONFIRMED:
            await _alert_unconfirmed(
                connection, mint, intent, fork_block, old_tip, confirmations
            )
        moved += 1
    return moved


async def _alert_unconfirmed(
    connection: asyncpg.Connection,
    mint: RewardMinted,
    intent: Intent,
    fork_block: int,
    old_tip: int,
    confirmations: int,
) -> None:
    evidence = {
        "intent_id": intent_id_hex(mint.intent_id),
        "tx_hash": "0x" + mint.position.tx_hash.hex(),
        "block_number": mint.position.block_number,
        "block_hash": "0x" + mint.position.block_hash.hex(),
        "fork_block": fork_block,
        "reorg_depth": old_tip - fork_block,
        "confirmations": confirmations,
    }
    await alerts_outbox.raise_alert(
        connection,
        UNCONFIRMED_RULE,
        intent_id_hex(mint.intent_id),
        alerts_outbox.CRITICAL,
        evidence,
    )
    _bound(mint, intent).error(
        "confirmed mint reorged out; check the chain and the partner payout",
        fork_block=fork_block,
    )
