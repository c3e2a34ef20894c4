"""Matching mints to intents, one test per break class, on real PostgreSQL and anvil."""

from __future__ import annotations

import os

from eth_account import Account

from harness.anvil import DEV_KEYS
from haven import intents
from haven.chain import ChainClient
from haven.reconciler import breaks, runs
from haven.reconciler.breaks import Break
from haven.reconciler.config import ReconcilerConfig
from haven.reconciler.runs import Run
from haven.types import ONE_HNV, checksum, intent_id_hex

# The same accounts as the fixtures in conftest.py: 0 is our signer, 1 a
# minter that is not ours, 2 a holder who burns; the last two never sign.
OURS_KEY, FOREIGN_KEY, HOLDER_KEY = DEV_KEYS[:3]
OURS, HOLDER = (checksum(Account.from_key(k).address) for k in (OURS_KEY, HOLDER_KEY))
STRANGER = checksum(Account.create().address)
TEN_HNV = 10 * ONE_HNV


async def reconcile(book, chain: ChainClient, config: ReconcilerConfig) -> Run:
    cut = await runs.choose_cut(book.pool, chain, config)
    return await runs.compute(book.pool, chain, config, cut)


def found(run: Run, cls: str) -> list[Break]:
    return [b for b in run.found if b.cls == cls]


def classes(run: Run) -> set[str]:
    return {b.cls for b in run.found}


async def test_a_matching_confirmed_mint_is_reconciled(book, chain, config):
    await book.settle(TEN_HNV)
    await book.index()

    run = await reconcile(book, chain, config)

    assert run.found == ()
    assert run.matching is not None and run.matching.matched == 1
    assert run.verdict == runs.RECONCILED


async def test_a_mint_without_an_intent_is_an_unexpected_p1_break(book, chain, config):
    orphan = os.urandom(32)
    await book.hnv.mint(orphan, TEN_HNV, STRANGER)
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.UNEXPECTED_MINT)
    assert brk.priority == breaks.P1
    assert brk.subject == intent_id_hex(orphan)
    assert brk.evidence["reasons"] == ["no_intent"]
    assert brk.evidence["mints"][0]["amount_wei"] == str(TEN_HNV)
    assert run.verdict == runs.BREAKS


async def test_a_mint_by_a_minter_that_is_not_ours_is_unexpected(book, chain, config):
    intent = await book.intent(status=intents.SUBMITTED)
    await book.hnv.mint(intent.id, intent.amount_wei, intent.wallet, key=FOREIGN_KEY)
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.UNEXPECTED_MINT)
    assert brk.evidence["reasons"] == ["foreign_minter"]
    assert brk.evidence["mints"][0]["minter"] != OURS
    assert classes(run) == {breaks.UNEXPECTED_MINT}


async def test_a_mint_for_a_voided_intent_is_unexpected(book, chain, config):
    intent = await book.intent(status=intents.VOIDED)
    await book.hnv.mint(intent.id, intent.amount_wei, intent.wallet)
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.UNEXPECTED_MINT)
    assert brk.evidence["reasons"] == ["intent_voided"]


async def test_two_indexed_mints_of_one_intent_are_a_duplicate_p1_break(
    book, chain, config
):
    intent = await book.settle(TEN_HNV)
    await book.index()
    # The contract refuses a second mint; a lying index could still show one.
    await book.execute(
        "INSERT INTO reward_mints SELECT $1, log_index, block_number, tx_hash, "
        "intent_id, to_address, amount_wei, minter FROM reward_mints",
        os.urandom(32),
    )

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.DUPLICATE_MINT)
    assert brk.priority == breaks.P1
    assert brk.subject == intent_id_hex(intent.id)
    assert len(brk.evidence["mints"]) == 2
    assert run.matching is not None
    assert run.matching.discrepancy_net_wei == TEN_HNV


async def test_a_confirmed_intent_whose_mint_was_reorged_out_is_a_p1_break(
    book, chain, config, anvil
):
    intent = await book.settle(TEN_HNV)
    head = await book.index()
    before = await chain.get_block(head)

    await anvil.rpc("anvil_reorg", [3, []])
    after = await chain.get_block(head)
    assert before is not None and after is not None
    assert after["hash"] != before["hash"]
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.REORGED_OUT)
    assert brk.priority == breaks.P1
    assert brk.subject == intent_id_hex(intent.id)
    assert run.matching is not None
    assert run.matching.discrepancy_net_wei == -TEN_HNV
    assert breaks.SUPPLY_DRIFT not in classes(run)


async def test_a_mint_of_another_amount_is_a_p2_amount_mismatch(book, chain, config):
    intent = await book.settle(TEN_HNV, minted_wei=TEN_HNV + 1)
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.AMOUNT_MISMATCH)
    assert brk.priority == breaks.P2
    assert brk.subject == intent_id_hex(intent.id)
    assert brk.evidence["difference_wei"] == "1"
    assert classes(run) == {breaks.AMOUNT_MISMATCH}


async def test_a_mint_to_another_wallet_is_a_p2_recipient_mismatch(book, chain, config):
    intent = await book.settle(TEN_HNV, minted_to=STRANGER)
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.RECIPIENT_MISMATCH)
    assert brk.priority == breaks.P2
    assert brk.evidence["intent_wallet"] == intent.wallet
    assert brk.evidence["minted_to"] == STRANGER


async def test_over_and_under_minting_net_to_zero_but_not_gross(book, chain, config):
    await book.settle(TEN_HNV, minted_wei=TEN_HNV + 5 * ONE_HNV)
    await book.settle(TEN_HNV, minted_wei=TEN_HNV - 5 * ONE_HNV)
    await book.index()

    run = await reconcile(book, chain, config)

    assert run.matching is not None
    assert run.matching.discrepancy_net_wei == 0
    assert run.matching.discrepancy_gross_wei == 10 * ONE_HNV
    assert len(found(run, breaks.AMOUNT_MISMATCH)) == 2
    assert run.verdict == runs.BREAKS


async def test_a_reward_reversed_after_its_mint_is_a_p2_break(book, chain, config):
    intent = await book.settle(TEN_HNV)
    await book.index()
    async with book.pool.acquire() as connection:
        await intents.mark_reversed(connection, intent.id)

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.REVERSED_AFTER_MINT)
    assert brk.priority == breaks.P2
    assert brk.evidence["reversed_at"] is not None


async def test_a_submitted_intent_with_no_mint_is_missing_only_after_the_grace(
    book, chain, config
):
    fresh = await book.intent(status=intents.SUBMITTED)
    late = await book.intent(status=intents.SUBMITTED)
    await book.backdate(late, config.missing_on_chain_grace_s + 60)
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.MISSING_ON_CHAIN)
    assert brk.priority == breaks.P3
    assert brk.subject == intent_id_hex(late.id)
    assert intent_id_hex(fresh.id) not in {b.subject for b in run.found}


async def test_a_ready_intent_never_submitted_is_stale_only_after_the_grace(
    book, chain, config
):
    fresh = await book.intent(status=intents.READY)
    stale = await book.intent(status=intents.READY)
    await book.backdate(stale, config.stale_intent_grace_s + 60)
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.STALE_INTENT)
    assert brk.priority == breaks.P3
    assert brk.subject == intent_id_hex(stale.id)
    assert intent_id_hex(fresh.id) not in {b.subject for b in run.found}


async def test_a_burn_the_index_missed_is_p1_supply_drift(book, chain, config):
    await book.settle(TEN_HNV, wallet=HOLDER)
    await book.index()
    await book.hnv.burn(ONE_HNV, key=HOLDER_KEY)
    # Index the head (so the run is complete) but drop the burn's Transfer.
    await book.index()
    await book.execute(
        "DELETE FROM token_transfers WHERE to_address = $1",
        "0x0000000000000000000000000000000000000000",
    )

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.SUPPLY_DRIFT)
    assert brk.priority == breaks.P1
    assert brk.subject == book.hnv.address
    assert brk.evidence["total_supply_wei"] == str(TEN_HNV - ONE_HNV)
    assert brk.evidence["indexed_supply_wei"] == str(TEN_HNV)
    assert brk.evidence["drift_wei"] == str(-ONE_HNV)
    assert classes(run) == {breaks.SUPPLY_DRIFT}


async def test_an_indexed_burn_keeps_the_supply_in_line(book, chain, config):
    await book.settle(TEN_HNV, wallet=HOLDER)
    await book.hnv.burn(ONE_HNV, key=HOLDER_KEY)
    await book.index()

    run = await reconcile(book, chain, config)

    assert breaks.SUPPLY_DRIFT not in classes(run)
    assert run.verdict == runs.RECONCILED


async def test_a_signer_short_of_gas_is_a_warning_that_does_not_block(
    book, chain, config
):
    broke = checksum(Account.create().address)
    await book.add_signer(broke)
    await book.settle(TEN_HNV)
    await book.index()

    run = await reconcile(book, chain, config)

    [brk] = found(run, breaks.LOW_SIGNER_BALANCE)
    assert brk.priority == breaks.WARNING
    assert brk.subject == broke
    assert brk.evidence["observed"] == {"balance_wei": "0"}
    assert run.verdict == runs.RECONCILED
