"""Receipts of our own transactions: where a reverted mint fails its intent.

A successful mint settles its intent through its RewardMinted log, which
the tailer indexes; a reverted one emits no log, so its receipt is the only
evidence. A missing receipt is never a failure: the transaction may be
pending, dropped or reorged out, which is the submitter's to sort out. A
reverted receipt fails its intent only once it is ``confirmations`` deep on
the block the tailer holds as canonical at that height; a receipt from any
other block is left to be checked again on a later round. A reorg deeper
than ``confirmations`` that takes the reverted transaction away returns the
intent to ``submitted`` and raises a critical alert, as it does for a
confirmed mint.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
from loguru import logger

from haven import db, intents, token
from haven.chain import ChainClient, from_hex
from haven.daemon import alerts_outbox, attempts, blocks, transfers
from haven.daemon.attempts import Attempt
from haven.daemon.confirmations import confirmed_through
from haven.errors import RpcResponseError
from haven.intents import FAILED, SUBMITTED

if TYPE_CHECKING:
    from loguru import Logger

ALREADY_MINTED = "IntentAlreadyMinted"
UNFAILED_RULE = "mint_unfailed_by_reorg"
FAILED_RULE = "mint_reverted"


async def check(
    pool: db.Pool,
    client: ChainClient,
    *,
    tip: int,
    confirmations: int,
    concurrency: int = 8,
) -> int:
    """Fail the intents whose transaction reverted at depth; return how many.

    ``tip`` is the tailer's checkpoint block. Safe to retry and to cancel:
    each failure is written in its own transaction.
    """
    async with db.translate_errors(), pool.acquire() as connection:
        live = await attempts.live(connection)
    gate = asyncio.Semaphore(concurrency)

    async def receipt_of(attempt: Attempt) -> dict[str, Any] | None:
        async with gate:
            return await client.get_receipt(attempt.tx_hash)

    receipts = await asyncio.gather(*(receipt_of(a) for a in live))
    deepest = confirmed_through(tip, confirmations)
    failed = 0
    for attempt, receipt in zip(live, receipts, strict=True):
        if receipt is None or from_hex(receipt.get("status")) != 0:
            continue
        if from_hex(receipt["blockNumber"]) > deepest:
            continue
        if not await _is_canonical(pool, client, receipt):
            continue
        reason = await _revert_reason(client, attempt, receipt)
        block_number = from_hex(receipt["blockNumber"])
        async with db.transaction(pool) as connection:
            failed += await _fail(connection, attempt, reason, block_number)
    return failed


async def unwind(
    connection: asyncpg.Connection,
    *,
    fork_block: int,
    old_tip: int,
    confirmations: int,
) -> int:
    """Undo the failures whose reverted receipt lay above ``fork_block``.

    Must run in the tailer's rollback transaction. The intent goes back to
    ``submitted`` and its attempts at that nonce are live again, so the
    submitter puts the transaction back and the receipt is judged anew at
    depth. Raises a critical alert per intent: someone may already have
    acted on the failure. Returns how many intents moved.
    """
    moved = 0
    for attempt in await attempts.failed_above(connection, fork_block):
        log = _bound(attempt)
        intent = await intents.transition(
            connection,
            attempt.intent_id,
            from_statuses=(FAILED,),
            to_status=SUBMITTED,
            reason=f"reverted mint reorged out above block {fork_block}",
        )
        if intent is None:
            # Spared when it reverted, or retried since: nothing to undo.
            await attempts.forget_block(connection, attempt.tx_hash)
            log.debug("reverted attempt reorged out, intent left as it is")
            continue
        await attempts.unfail(connection, attempt)
        await _alert_unfailed(connection, attempt, fork_block, old_tip, confirmations)
        log.info("mint revert reorged out")
        moved += 1
    return moved


async def _alert_unfailed(
    connection: asyncpg.Connection,
    attempt: Attempt,
    fork_block: int,
    old_tip: int,
    confirmations: int,
) -> None:
    evidence = {
        "intent_id": "0x" + attempt.intent_id.hex(),
        "tx_hash": attempt.tx_hash,
        "block_number": attempt.mined_block,
        "fork_block": fork_block,
        "reorg_depth": old_tip - fork_block,
        "confirmations": confirmations,
    }
    await alerts_outbox.raise_alert(
        connection,
        UNFAILED_RULE,
        "0x" + attempt.intent_id.hex(),
        alerts_outbox.CRITICAL,
        evidence,
    )


async def _is_canonical(
    pool: db.Pool, client: ChainClient, receipt: dict[str, Any]
) -> bool:
    number = from_hex(receipt["blockNumber"])
    async with db.translate_errors(), pool.acquire() as connection:
        stored = await blocks.get(connection, number)
    if stored is not None:
        canonical = stored.hash_hex
    else:
        block = await client.get_block(number)
        if block is None:
            return False
        canonical = block["hash"]
    if canonical.lower() != str(receipt["blockHash"]).lower():
        logger.debug(
            "reverted receipt is off the canonical chain, checking again later",
            tx_hash=receipt["transactionHash"],
            block_number=number,
        )
        return False
    return True


async def _revert_reason(
    client: ChainClient, attempt: Attempt, receipt: dict[str, Any]
) -> str:
    # Replaying on the parent block's state misses transactions earlier in
    # the same block, so the replay may pass; "reverted" is all we know then.
    number = from_hex(receipt["blockNumber"])
    tx = await client.get_transaction(attempt.tx_hash)
    if tx is None or not tx.get("to"):
        return "reverted"
    try:
        await client.eth_call(
            tx["to"],
            bytes.fromhex(tx["input"][2:]),
            max(number - 1, 0),
            sender=tx["from"],
        )
    except RpcResponseError as exc:
        data = getattr(exc, "data", None)
        if isinstance(data, str) and data.startswith("0x"):
            return token.revert_reason(bytes.fromhex(data[2:]))
        return "reverted"
    return "reverted"


def _bound(attempt: Attempt) -> Logger:
    return logger.bind(
        intent_id="0x" + attempt.intent_id.hex(),
        tx_hash=attempt.tx_hash,
        nonce=attempt.nonce,
    )


async def _fail(
    connection: asyncpg.Connection, attempt: Attempt, reason: str, block_number: int
) -> int:
    log = _bound(attempt)
    await attempts.fail_mined(
        connection, attempt.tx_hash, block_number=block_number, error=reason
    )
    for sibling in await attempts.at_nonce(connection, attempt.signer, attempt.nonce):
        if sibling.tx_hash != attempt.tx_hash and sibling.status in attempts.LIVE:
            await attempts.set_status(connection, sibling.tx_hash, attempts.REPLACED)

    spared = await _spared(connection, attempt, reason)
    if spared is not None:
        log.warning("mint attempt reverted, intent left as it is", why=spared)
        return 0
    moved = await intents.transition(
        connection,
        attempt.intent_id,
        from_statuses=(SUBMITTED,),
        to_status=FAILED,
        reason=reason,
    )
    if moved is None:
        log.warning("reverted attempt of an intent not submitted", reason=reason)
        return 0
    await alerts_outbox.raise_alert(
        connection,
        FAILED_RULE,
        "0x" + attempt.intent_id.hex(),
        alerts_outbox.CRITICAL,
        {
            "intent_id": "0x" + attempt.intent_id.hex(),
            "tx_hash": attempt.tx_hash,
            "signer": attempt.signer,
            "nonce": attempt.nonce,
            "block_number": block_number,
            "reason": reason,
        },
    )
    log.error("mint reverted; intent failed", reason=reason)
    return 1


async def _spared(
    connection: asyncpg.Connection, attempt: Attempt, reason: str
) -> str | None:
    """Say why the intent must not fail with this attempt, or None."""
    # A minted intent is paid, whatever this attempt did: one reverting with
    # IntentAlreadyMinted is the on-chain guard working.
    if reason == ALREADY_MINTED or await transfers.mints_of(
        connection, attempt.intent_id
    ):
        return "the intent is minted; its mint settles it"
    for other in await attempts.for_intent(connection, attempt.intent_id):
        if other.status in attempts.LIVE and (other.signer, other.nonce) != (
            attempt.signer,
            attempt.nonce,
        ):
            return f"attempt {other.tx_hash} at another nonce may still mint it"
    return None
