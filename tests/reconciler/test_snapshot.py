"""Settled intents counted in SQL give the same run as every row matched in Python."""

from __future__ import annotations

import os

import orjson
from eth_account import Account

from haven import db, intents
from haven.reconciler import breaks, runs
from haven.types import ONE_HNV, checksum

TEN_HNV = 10 * ONE_HNV
STRANGER = checksum(Account.create().address)


async def test_settling_in_sql_gives_the_same_run_as_matching_every_row(
    book, chain, config
):
    plain = [await book.settle(TEN_HNV) for _ in range(3)]
    lowered = await book.settle(2 * TEN_HNV)
    await book.settle(TEN_HNV, minted_wei=TEN_HNV + 1)
    await book.settle(TEN_HNV, minted_to=STRANGER)
    reversed_ = await book.settle(TEN_HNV)
    doubled = await book.settle(TEN_HNV)
    await book.intent(status=intents.SUBMITTED)
    await book.intent(status=intents.READY)
    await book.hnv.mint(os.urandom(32), TEN_HNV, STRANGER)
    await book.index()
    # A wallet stored in another spelling is still the wallet minted to.
    await book.execute(
        "UPDATE intents SET wallet = lower(wallet) WHERE id = $1", lowered.id
    )
    await book.execute(
        "INSERT INTO reward_mints SELECT $1, log_index, block_number, tx_hash, "
        "intent_id, to_address, amount_wei, minter FROM reward_mints "
        "WHERE intent_id = $2",
        os.urandom(32),
        doubled.id,
    )
    async with db.transaction(book.pool) as connection:
        await intents.mark_reversed(connection, reversed_.id)
    cut = await runs.choose_cut(book.pool, chain, config)
    # Changed after the cut: its row no longer tells how it stood then.
    async with db.transaction(book.pool) as connection:
        await intents.mark_reversed(connection, plain[0].id)

    fast = await runs.compute(book.pool, chain, config, cut)
    full = await runs.compute(book.pool, chain, config, cut, every_intent=True)

    assert fast.document == full.document
    assert fast.snapshot.settled.count == 3
    assert fast.snapshot.settled.amount_wei == 4 * TEN_HNV
    assert full.snapshot.settled.count == 0
    assert len(full.snapshot.intents) - len(fast.snapshot.intents) == 3
    assert {b.cls for b in fast.found} == {
        breaks.AMOUNT_MISMATCH,
        breaks.RECIPIENT_MISMATCH,
        breaks.REVERSED_AFTER_MINT,
        breaks.DUPLICATE_MINT,
        breaks.UNEXPECTED_MINT,
        breaks.SUPPLY_DRIFT,  # the index holds one mint the chain never made
    }
    document = orjson.loads(fast.document)
    assert document["intents"]["matched"] == 4
    confirmed = next(
        row
        for row in document["intents"]["by_status"]
        if row["status"] == intents.CONFIRMED
    )
    assert confirmed["count"] == 8
