"""Reconciliation runs: the cut, byte-identical re-runs, the verdict ladder and
break state over time."""

from __future__ import annotations

import os

import orjson

from harness.anvil import free_port
from haven import intents
from haven.chain import ChainClient
from haven.reconciler import alerts, breaks, runs
from haven.types import ONE_HNV, intent_id_hex

TEN_HNV = 10 * ONE_HNV


async def test_a_run_records_its_cut_and_a_canonical_document(book, chain, config):
    await book.settle(TEN_HNV)
    head = await book.index()

    run = await runs.execute(book.pool, chain, config)

    stored = await runs.get(book.pool, run.id)
    assert stored is not None
    assert stored.document == run.document
    assert stored.cut.block_number == head
    assert stored.cut.at == run.cut.at
    document = orjson.loads(run.document)
    assert document["cut"]["block_number"] == head
    assert document["verdict"] == runs.RECONCILED
    assert document["totals"]["minted_indexed_wei"] == str(TEN_HNV)
    assert document["totals"]["db_confirmed_wei"] == str(TEN_HNV)
    assert run.document == runs.render_document(
        run.snapshot, run.matching, run.verdict, run.reasons
    )


async def test_re_running_a_stored_cut_gives_byte_identical_output(book, chain, config):
    await book.settle(TEN_HNV)
    moving = await book.intent(status=intents.READY)
    stale = await book.intent(status=intents.READY)
    await book.backdate(stale, config.stale_intent_grace_s + 60)
    await book.index()
    first = await runs.execute(book.pool, chain, config)

    # After the cut: a new mint in a later block, a new intent, a transition.
    await book.settle(3 * ONE_HNV)
    await book.move(moving, intents.SUBMITTED)
    await book.hnv.mint(os.urandom(32), ONE_HNV, moving.wallet)
    await book.index()
    assert first.id is not None
    again = await runs.rerun(book.pool, chain, config, first.id)
    now = await runs.execute(book.pool, chain, config)

    assert again.document == first.document
    assert now.document != first.document
    assert {b.cls for b in first.found} == {breaks.STALE_INTENT}


async def test_the_verdict_is_reconciled_when_minted_equals_confirmed_and_nothing_waits(
    book, chain, config
):
    await book.settle(TEN_HNV)
    await book.settle(2 * ONE_HNV, partner="tribe")
    await book.index()

    run = await runs.execute(book.pool, chain, config)

    assert run.verdict == runs.RECONCILED
    assert run.reasons == ()


async def test_an_outstanding_intent_makes_it_reconciled_with_pending(
    book, chain, config
):
    await book.settle(TEN_HNV)
    await book.intent(status=intents.READY)
    await book.index()

    run = await runs.execute(book.pool, chain, config)

    assert run.verdict == runs.PENDING


async def test_a_break_outranks_pending(book, chain, config):
    await book.settle(TEN_HNV, minted_wei=TEN_HNV + 1)
    await book.intent(status=intents.READY)
    await book.index()

    run = await runs.execute(book.pool, chain, config)

    assert run.verdict == runs.BREAKS


async def test_a_tailer_far_behind_the_cut_outranks_breaks_as_incomplete(
    book, chain, config, anvil
):
    await book.settle(TEN_HNV, minted_wei=TEN_HNV + 1)
    await book.index()
    await anvil.mine(config.max_tail_lag_blocks + 5)

    run = await runs.execute(book.pool, chain, config)

    assert run.verdict == runs.INCOMPLETE
    assert run.reasons[0].startswith("tailer_behind")
    assert run.found == ()


async def test_a_tailer_a_few_blocks_behind_is_waited_for_by_cutting_at_it(
    book, chain, config, anvil
):
    await book.settle(TEN_HNV)
    indexed = await book.index()
    await anvil.mine(3)

    run = await runs.execute(book.pool, chain, config)

    assert run.cut.block_number == indexed
    assert run.verdict == runs.RECONCILED


async def test_an_unreachable_chain_makes_the_run_incomplete_and_raises_an_alert(
    book, config
):
    await book.settle(TEN_HNV)
    indexed = await book.index()

    async with ChainClient(
        [f"http://127.0.0.1:{free_port()}"], chain_id=31337, timeout_s=2
    ) as dead:
        run = await runs.execute(book.pool, dead, config)

    assert run.verdict == runs.INCOMPLETE
    # Where the tailer last counted blocks confirmed: the index's own cut.
    assert run.cut.block_number == indexed
    assert run.reasons == ("chain_unreachable: RpcUnavailableError",)
    async with book.pool.acquire() as connection:
        [alert] = await alerts.find(connection, rule=runs.INCOMPLETE_RULE)
    assert alert.status == alerts.OPEN
    assert alert.evidence["problems"] == ["chain_unreachable"]


async def test_totals_that_disagree_with_nothing_pending_are_breaks(
    book, chain, config
):
    # An accepted over-mint no longer blocks as a break, but the minted total
    # still differs from the confirmed total.
    intent = await book.settle(TEN_HNV, minted_wei=TEN_HNV + 1)
    await book.index()
    first = await runs.execute(book.pool, chain, config)
    async with book.pool.acquire() as connection:
        [alert] = await alerts.find(
            connection, rule="break.amount_mismatch", subject=intent_id_hex(intent.id)
        )
        await alerts.accept(connection, alert.id, by="ops", note="partner agreed")

    second = await runs.execute(book.pool, chain, config)

    assert first.verdict == runs.BREAKS
    assert [b.accepted for b in second.found] == [True]
    assert second.verdict == runs.BREAKS
    assert second.reasons[0].startswith("totals disagree")


async def test_an_accepted_reversal_lets_the_books_reconcile(book, chain, config):
    intent = await book.settle(TEN_HNV)
    await book.index()
    async with book.pool.acquire() as connection:
        await intents.mark_reversed(connection, intent.id)
    first = await runs.execute(book.pool, chain, config)
    async with book.pool.acquire() as connection:
        [alert] = await alerts.find(connection, rule="break.reversed_after_mint")
        await alerts.accept(connection, alert.id, by="ops", note="clawback waived")

    second = await runs.execute(book.pool, chain, config)

    assert first.verdict == runs.BREAKS
    assert second.verdict == runs.RECONCILED
    assert [b.cls for b in second.found] == [breaks.REVERSED_AFTER_MINT]


async def test_breaks_keep_their_first_sighting_and_resolve_when_gone(
    book, chain, config
):
    stale = await book.intent(status=intents.READY)
    await book.backdate(stale, config.stale_intent_grace_s + 60)
    await book.index()
    first = await runs.execute(book.pool, chain, config)
    second = await runs.execute(book.pool, chain, config)
    async with book.pool.acquire() as connection:
        seen = await breaks.get(
            connection, breaks.STALE_INTENT, intent_id_hex(stale.id)
        )

    await book.move(stale, intents.VOIDED)
    third = await runs.execute(book.pool, chain, config)
    async with book.pool.acquire() as connection:
        gone = await breaks.get(
            connection, breaks.STALE_INTENT, intent_id_hex(stale.id)
        )
        [alert] = await alerts.find(connection, rule="break.stale_intent")

    assert [b.cls for b in first.opened] == [breaks.STALE_INTENT]
    assert second.opened == ()
    assert seen is not None and gone is not None
    assert seen.first_seen_at == first.cut.at
    assert seen.last_seen_at == second.cut.at
    assert seen.resolved_at is None
    assert third.resolved == ((breaks.STALE_INTENT, intent_id_hex(stale.id)),)
    assert gone.resolved_at == third.cut.at
    assert alert.status == alerts.RESOLVED
    assert alert.occurrences == 2


async def test_an_incomplete_run_leaves_break_state_alone(book, chain, config, anvil):
    stale = await book.intent(status=intents.READY)
    await book.backdate(stale, config.stale_intent_grace_s + 60)
    await book.index()
    await runs.execute(book.pool, chain, config)
    await anvil.mine(config.max_tail_lag_blocks + 5)

    run = await runs.execute(book.pool, chain, config)

    assert run.verdict == runs.INCOMPLETE
    async with book.pool.acquire() as connection:
        [still] = await breaks.open_breaks(connection)
    assert still.subject == intent_id_hex(stale.id)
