"""Receipts of our own transactions: where a reverted mint fails its intent.

A successful mint settles its intent through its RewardMinted log, which
the tailer indexes; a reverted one emits no log, so its receipt is the only
evidence. A missing receipt is never a failure: the transaction may be
pending, dropped or reorged out, which is the submitter's to sort out. A
reverted receipt fails its intent only once it is ``confirmations`` deep on
the block the tailer holds as canonical at that height; a receipt from any
other block is left to be checked again on a later round.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from loguru import logger

from haven import db, intents, token
from haven.chain import ChainClient, from_hex
from haven.daemon import attempts, blocks, transfers
from haven.daemon.attempts import Attempt
from haven.daemon.confirmations import confirmed_through
from haven.errors import RpcResponseError
from haven.intents import FAILED, SUBMITTED

ALREADY_MINTED = "IntentAlreadyMinted"


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
        async with db.transaction(pool) as connection:
            failed += await _fail(connection, attempt, reason)
    return failed


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


async def _fail(connection: asyncpg.Connection, attempt: Attempt, reason: str) -> int:
    log = logger.bind(
        intent_id="0x" + attempt.intent_id.hex(),
        tx_hash=attempt.tx_hash,
        nonce=attempt.nonce,
    )
    await attempts.set_status(
        connection, attempt.tx_hash, attempts.FAILED, error=reason
    )
    for sibling in await attempts.at_nonce(connection, attempt.signer, attempt.nonce):
        if sibling.tx_hash != attempt.tx_hash and sibling.status in attempts.LIVE:
            await attempts.set_status(connection, sibling.tx_hash, attempts.REPLACED)

    spared = await _spared(connection, attempt, reason)
    if spared is not None:
        log.warning("mint attempt reverted, intent left as it is", why=spared)
        return 0
    # TODO: un-fail the intent when a reorg deeper than `confirmations` takes
    # the reverted transaction away — until then it stays failed and only the
    # reconciler can notice.
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
    log.info("mint reverted", reason=reason)
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
