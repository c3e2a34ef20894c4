"""The submitter end to end on anvil and PostgreSQL: sign, persist, send, mint once.

The tailer does not run here, so intents stay ``submitted``; what was paid
is read from the chain itself (RewardMinted logs per intent id, the
signer's nonce) and compared with the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
import pytest
from eth_account import Account
from loguru import logger

from harness import chainsetup
from harness.anvil import DEV_KEYS
from harness.minting import GUEST, Rig, wait_for
from harness.rpcproxy import DROP, DROP_RESPONSE, ERROR, RpcProxy, running_proxy
from haven import db, intents, metrics, token
from haven.daemon import attempts, signers, submitter
from haven.daemon.custody import Signer
from haven.daemon.submitter import SubmitterOptions
from haven.errors import ChainMismatchError
from haven.types import ONE_HNV, IntentId, Wei, intent_id_hex

pytestmark = pytest.mark.timeout(120)


async def test_ready_intents_are_each_minted_exactly_once(rig: Rig):
    ids = await rig.add_intents(5)

    async with rig.running(rig.submitter()):
        await rig.wait_minted(ids)

    await rig.assert_paid_once(ids)
    for intent_id in ids:
        assert len(await rig.attempts_of(intent_id)) == 1


@pytest.mark.parametrize("fault", [DROP, DROP_RESPONSE])
async def test_committed_attempts_are_sent_again_from_their_stored_bytes_on_restart(
    rig: Rig, fault: str
):
    ids = await rig.add_intents(3)
    async with running_proxy(rig.node.url) as proxy:
        # The node never gets (DROP) or never answers (DROP_RESPONSE) a send.
        proxy.add_rule(fault, "eth_sendRawTransaction")
        async with rig.running(rig.submitter(rpc_url=proxy.url)):
            await wait_for(lambda: signed_count(rig, ids, 1), what="one attempt")
    before = {i: [a.tx_hash for a in await rig.attempts_of(i)] for i in ids}

    async with rig.running(rig.submitter()):
        await rig.wait_minted(ids)

    await rig.assert_paid_once(ids)
    for intent_id in ids:
        after = [a.tx_hash for a in await rig.attempts_of(intent_id)]
        assert len(after) == 1
        assert after[: len(before[intent_id])] == before[intent_id]


async def signed_count(rig: Rig, ids: Sequence[IntentId], wanted: int) -> bool:
    found = [len(await rig.attempts_of(i)) for i in ids]
    return sum(found) >= wanted


SEND_REFUSALS = [
    # (node message, alert rule expected, re-priced?)
    (
        "Insufficient funds for gas * price + value",
        submitter.SIGNER_OUT_OF_FUNDS,
        False,
    ),
    ("intrinsic gas too low", submitter.TX_MISCONFIGURED, False),
    ("Nonce too high", None, False),
    ("txpool is full", None, False),
    ("already known", None, False),
    ("a wording no client ever used", submitter.RPC_UNEXPECTED, False),
    ("max fee per gas less than block base fee", None, True),
    ("replacement transaction underpriced", None, True),
]


@pytest.mark.parametrize(("message", "rule", "repriced"), SEND_REFUSALS)
async def test_each_send_refusal_is_handled_deliberately_and_nothing_fails(
    rig: Rig, message: str, rule: str | None, repriced: bool
):
    ids = await rig.add_intents(1)
    async with running_proxy(rig.node.url) as proxy:
        proxy.add_rule(ERROR, "eth_sendRawTransaction", message=message, times=2)
        async with rig.running(rig.submitter(rpc_url=proxy.url)):
            await rig.wait_minted(ids)

    tried = await rig.attempts_of(ids[0])
    await rig.assert_paid_once(ids)
    assert all(a.status != attempts.FAILED for a in tried)
    assert (len(tried) > 1) is repriced
    raised = [a.rule for a in await rig.alerts()]
    assert raised == ([rule] if rule else [])


async def test_a_node_on_another_chain_stops_the_submitter_with_a_clear_error(
    rig: Rig,
):
    await rig.add_intents(1)
    async with running_proxy(rig.node.url) as proxy:
        proxy.add_rule(
            ERROR, "eth_sendRawTransaction", message="invalid chain id for signer"
        )
        task = asyncio.create_task(
            rig.submitter(rpc_url=proxy.url).run(asyncio.Event())
        )
        with pytest.raises(ChainMismatchError, match="HAVEN_CHAIN_ID"):
            await asyncio.wait_for(task, 30)


async def test_nonces_used_outside_the_daemon_before_start_are_skipped_with_an_alert(
    rig: Rig,
):
    key = await rig.local_signer()
    for nonce in range(2):
        await send_self_transfer(rig, key, nonce)
    ids = await rig.add_intents(3)

    async with rig.running(rig.submitter()):
        await rig.wait_minted(ids)

    (alert,) = await rig.alerts(submitter.NONCE_USED_OUTSIDE)
    assert alert.evidence["first_nonce"] == 0
    assert alert.evidence["last_nonce"] == 1
    assert await rig.next_nonce() == 5
    assert await chainsetup.nonce_of(rig.node, rig.signer or "") == 5
    counts = await rig.mint_counts()
    assert [counts[i] for i in ids] == [1, 1, 1]


async def test_a_nonce_taken_by_an_outside_transaction_moves_its_intent_not_jams(
    rig: Rig,
):
    ids = await rig.add_intents(1)
    async with running_proxy(rig.node.url) as proxy:
        blackhole = proxy.add_rule(DROP, "eth_sendRawTransaction")
        async with rig.running(rig.submitter(rpc_url=proxy.url)):
            await wait_for(lambda: signed_count(rig, ids, 1), what="nonce 0 signed")
            await send_self_transfer(rig, await rig.local_signer(), 0)
            proxy.remove_rule(blackhole)
            await rig.wait_minted(ids)
            more = await rig.add_intents(2)
            await rig.wait_minted(more)

    (alert,) = await rig.alerts(submitter.NONCE_USED_OUTSIDE)
    assert alert.evidence["nonce"] == 0
    moved = await rig.intent(ids[0])
    assert moved.nonce == 1
    statuses = sorted(a.status for a in await rig.attempts_of(ids[0]))
    assert statuses == [attempts.BROADCAST, attempts.DROPPED]
    counts = await rig.mint_counts()
    assert [counts[i] for i in ids + more] == [1, 1, 1]
    assert await chainsetup.nonce_of(rig.node, rig.signer or "") == 4


async def test_a_skipped_nonce_freed_by_a_reorg_is_filled_with_a_ready_intent(
    rig: Rig,
):
    before_outsider = await rig.node.rpc("evm_snapshot", [])
    await send_self_transfer(rig, await rig.local_signer(), 0)
    early = await rig.add_intents(2)
    async with rig.running(rig.submitter()):
        await rig.wait_minted(early)
    # The outside transaction at nonce 0 and our mints at 1 and 2 are undone:
    # nonce 0 is free again and no attempt of ours ever used it.
    assert await rig.node.rpc("evm_revert", [before_outsider]) is True
    assert await chainsetup.nonce_of(rig.node, rig.signer or "") == 0
    late = await rig.add_intents(1)

    async with rig.running(rig.submitter()):
        await rig.wait_minted(early + late)

    assert (await rig.intent(late[0])).nonce == 0
    assert await rig.alerts(submitter.NONCE_GAP) == []
    await rig.assert_paid_once(early + late)


async def test_a_signer_without_the_minter_role_takes_no_intent_until_granted(
    rig: Rig,
):
    minter = rig.signer
    stranger = await rig.add_signer(minter=False)
    # More than one signer's in-flight cap, so both would be given work.
    ids = await rig.add_intents(40)

    async with rig.running(rig.submitter()):
        await rig.wait_minted(ids)
        await chainsetup.grant_minter(rig.node, rig.token, stranger)
        async with rig.pool.acquire() as conn:  # only the newcomer may take more
            await signers.set_status(conn, minter or "", signers.DRAINING)
        later = await rig.add_intents(12)
        await rig.wait_minted(later)

    mints = await chainsetup.mints(rig.node, rig.token, rig.deploy_block)
    assert {m.minter for m in mints if m.intent_id in ids} == {minter}
    assert {m.minter for m in mints if m.intent_id in later} == {stranger}
    assert sorted(m.intent_id for m in mints) == sorted(ids + later)


async def send_self_transfer(rig: Rig, key: Signer, nonce: int) -> None:
    """Use the signer's key outside the daemon: a plain transfer to itself."""
    block = await rig.node.rpc("eth_getBlockByNumber", ["latest", False])
    tx = {
        "type": 2,
        "chainId": rig.node.chain_id,
        "nonce": nonce,
        "to": key.address,
        "value": 0,
        "gas": 21_000,
        "maxFeePerGas": 2 * int(block["baseFeePerGas"], 16) + 10**9,
        "maxPriorityFeePerGas": 10**9,
        "data": b"",
    }
    signed = await key.sign_transaction(tx)
    tx_hash = await rig.node.rpc("eth_sendRawTransaction", ["0x" + signed.raw_tx.hex()])
    await chainsetup.wait_receipt(rig.node, tx_hash)


async def test_an_rpc_outage_mid_batch_pauses_work_and_marks_nothing_failed(
    rig: Rig,
):
    first = await rig.add_intents(20)
    async with running_proxy(rig.node.url) as proxy:
        worker = rig.submitter(rpc_url=proxy.url)
        async with rig.running(worker) as task:
            await wait_for(lambda: minted_at_least(rig, first, 5), what="5 minted")
            proxy.down = True
            later = await rig.add_intents(10)
            await wait_for(
                lambda: is_open(worker), what="the circuit to open during the outage"
            )
            proxy.down = False
            await rig.wait_minted(first + later)
            assert not task.done()

    await rig.assert_paid_once(first + later)
    for intent_id in first + later:
        assert all(
            a.status != attempts.FAILED for a in await rig.attempts_of(intent_id)
        )


async def minted_at_least(rig: Rig, ids: Sequence[IntentId], count: int) -> bool:
    counts = await rig.mint_counts()
    return sum(1 for i in ids if counts[i]) >= count


async def is_open(worker: submitter.Submitter) -> bool:
    return worker.breaker.state != "closed"


async def test_killed_database_connections_mid_batch_do_not_stop_the_submitter(
    rig: Rig,
):
    ids = await rig.add_intents(45)
    own_pool = await db.create_pool(rig.database_url, max_size=4)
    try:
        async with rig.running(rig.submitter(pool=own_pool)) as task:
            for round_ in range(1, 4):
                await wait_for(
                    lambda n=round_: minted_at_least(rig, ids, 10 * n),
                    what=f"{10 * round_} minted",
                )
                assert await terminate_backends(rig.database_url) > 0
            await rig.wait_minted(ids)
            assert not task.done()
    finally:
        await own_pool.close()

    await rig.assert_paid_once(ids)


async def terminate_backends(database_url: str) -> int:
    """Kill every other connection to the test database; return how many."""
    conn = await asyncpg.connect(database_url)
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return len(killed)


async def test_a_burst_of_200_intents_never_exceeds_the_in_flight_cap(rig: Rig):
    cap = 16
    await rig.node.rpc("evm_setAutomine", [False])
    ids = await rig.add_intents(200)
    async with running_proxy(rig.node.url, track_in_flight=True) as proxy:
        worker = rig.submitter(rpc_url=proxy.url, max_in_flight=str(cap))
        await saturate_and_mine(rig, worker, ids, cap)

    in_flight = [s.in_flight for s in proxy.sends if s.in_flight is not None]
    assert max(in_flight) == cap
    await rig.assert_paid_once(ids)


@pytest.mark.parametrize(("budget", "minted"), [(64, 9), (4, 4)])
async def test_a_cycle_sends_past_the_in_flight_cap_as_the_node_mines_up_to_a_budget(
    rig: Rig, budget: int, minted: int
):
    # The node mines each transaction before answering its send, so the
    # room max_in_flight leaves is free again after every run.
    await rig.node.rpc("evm_setAutomine", [False])
    ids = await rig.add_intents(9)
    options = SubmitterOptions(breaker_reset_s=0.2, cycle_budget=budget)
    async with running_proxy(
        rig.node.url, mine_each_send=True, track_in_flight=True
    ) as proxy:
        worker = rig.submitter(rpc_url=proxy.url, options=options, max_in_flight="2")
        assert await worker.step()

    counts = await rig.mint_counts()
    assert sorted(counts[i] for i in ids) == [0] * (9 - minted) + [1] * minted
    assert max(s.in_flight or 0 for s in proxy.sends) <= 2
    await rig.node.rpc("evm_setAutomine", [True])
    async with rig.running(rig.submitter()):
        await rig.wait_minted(ids)
    await rig.assert_paid_once(ids)


async def test_a_send_is_dated_no_earlier_than_the_head_that_took_it(rig: Rig):
    # Automine gives each transaction a block of its own as it arrives: a
    # run dated by the head read before it would look blocks old at once,
    # and be re-priced as stuck while the node still held it.
    ids = await rig.add_intents(8)
    async with running_proxy(rig.node.url, track_head=True) as proxy:
        assert await rig.submitter(rpc_url=proxy.url).step()

    took = {sent.tx.tx_hash: sent.head for sent in proxy.sends}
    assert len(took) == 8
    for intent_id in ids:
        [attempt] = await rig.attempts_of(intent_id)
        head = took[attempt.tx_hash]
        assert attempt.sent_block is not None and head is not None
        assert attempt.sent_block >= head


async def saturate_and_mine(
    rig: Rig, worker: submitter.Submitter, ids: Sequence[IntentId], cap: int
) -> None:
    """Mine one block each time the submitter has filled the pool up to ``cap``."""
    async with rig.running(worker):
        while not await rig.all_minted(ids):
            await wait_for(lambda: pool_full(rig, cap, len(ids)), what="full pool")
            # Let the submitter run two whole cycles against the full pool:
            # one that started before it filled may still be sending.
            seen = worker.completed_cycles
            await wait_for(
                lambda s=seen: cycles_since(worker, s, 2), what="two more cycles"
            )
            assert await pooled(rig) <= cap
            await rig.node.mine(1)


async def cycles_since(worker: submitter.Submitter, seen: int, count: int) -> bool:
    return worker.completed_cycles >= seen + count


async def pooled(rig: Rig) -> int:
    status = await rig.node.rpc("txpool_status")
    return int(status["pending"], 16) + int(status["queued"], 16)


async def pool_full(rig: Rig, cap: int, total: int) -> bool:
    """The node holds as many of our transactions as the cap lets the daemon send."""
    latest = await chainsetup.nonce_of(rig.node, rig.signer or "")
    status = await rig.node.rpc("txpool_status")
    return int(status["pending"], 16) >= min(cap, total - latest)


async def test_a_draining_signer_finishes_its_nonces_and_gets_no_new_intents(
    rig: Rig,
):
    second = await rig.add_signer()
    async with db.transaction(rig.pool) as conn:
        await conn.execute(
            "UPDATE signers SET status = 'draining' WHERE address = $1", rig.signer
        )
    ids = await rig.add_intents(4)

    async with rig.running(rig.submitter()):
        await rig.wait_minted(ids)

    for intent_id in ids:
        assert (await rig.intent(intent_id)).signer == second
    assert await rig.next_nonce(rig.signer) == 0


async def test_a_ready_intent_already_minted_by_us_is_adopted_never_signed_again(
    rig: Rig,
):
    (intent_id,) = await rig.add_intents(1)
    async with rig.running(rig.submitter()):
        await rig.wait_minted([intent_id])
    (mint,) = await chainsetup.mints(rig.node, rig.token, rig.deploy_block)
    # A database restored from before the mint: the intent is ready again and
    # neither its attempt nor the nonce it used are known.
    async with db.transaction(rig.pool) as conn:
        await conn.execute("DELETE FROM tx_attempts")
        await conn.execute("UPDATE signers SET next_nonce = 0")
        await conn.execute(
            "UPDATE intents SET status = 'ready', signer = NULL, nonce = NULL, "
            "tx_hash = NULL"
        )

    async with rig.running(rig.submitter()):
        await wait_for(lambda: is_submitted(rig, intent_id), what="the mint adopted")

    adopted = await rig.intent(intent_id)
    assert adopted.signer == rig.signer
    assert adopted.tx_hash is not None and "0x" + adopted.tx_hash.hex() == mint.tx_hash
    assert await rig.attempts_of(intent_id) == []
    assert (await rig.mint_counts())[intent_id] == 1
    assert await chainsetup.nonce_of(rig.node, rig.signer or "") == 1


async def is_submitted(rig: Rig, intent_id: IntentId) -> bool:
    return (await rig.intent(intent_id)).status == intents.SUBMITTED


async def test_a_ready_intent_minted_by_a_stranger_is_held_with_an_alert(rig: Rig):
    stranger_key = DEV_KEYS[2]
    stranger = Account.from_key(stranger_key).address
    await chainsetup.grant_minter(rig.node, rig.token, stranger)
    intent_id = intents.derive_id("aurora", "booking", "FOREIGN-1")
    data = token.mint_reward_data(GUEST, Wei(ONE_HNV), intent_id)
    await chainsetup.transact(rig.node, stranger_key, to=rig.token, data=data)
    async with db.transaction(rig.pool) as conn:
        await intents.create(
            conn,
            partner="aurora",
            kind="booking",
            source_key="FOREIGN-1",
            wallet=GUEST,
            amount_wei=Wei(ONE_HNV),
            rule_version="rig-1",
            status=intents.READY,
        )

    async with rig.running(rig.submitter()):
        await wait_for(
            lambda: alerted(rig, submitter.FOREIGN_MINT), what="the foreign mint alert"
        )

    held = await rig.intent(intent_id)
    assert held.status == intents.APPROVAL
    assert held.status_reason is not None and stranger in held.status_reason
    assert await rig.attempts_of(intent_id) == []
    assert await rig.next_nonce() == 0


async def alerted(rig: Rig, rule: str) -> bool:
    return bool(await rig.alerts(rule))


# --- what operators see -------------------------------------------------------

REQUEST_ID = "req-aurora-7f3a2c91"


async def tried(rig: Rig, intent_id: IntentId, count: int) -> bool:
    return len(await rig.attempts_of(intent_id)) >= count


async def sent(rig: Rig, intent_id: IntentId) -> bool:
    """A node took an attempt of the intent, and the send is recorded."""
    return any(a.sent_block is not None for a in await rig.attempts_of(intent_id))


def gas_bumps(signer: str) -> float:
    found = metrics.EVENTS.get_sample_value("haven_gas_bumps_total", {"signer": signer})
    return found or 0.0


async def test_a_bump_is_counted_and_each_log_line_of_an_intent_has_its_request_id(
    rig: Rig,
):
    async with db.transaction(rig.pool) as conn:
        intent, _ = await intents.create(
            conn,
            partner="aurora",
            kind="booking",
            source_key="CORRELATED-1",
            wallet=GUEST,
            amount_wei=Wei(ONE_HNV),
            rule_version="rig-1",
            status=intents.READY,
            request_id=REQUEST_ID,
        )
    signer = rig.signer or ""
    bumps_before = gas_bumps(signer)
    lines: list[dict[str, Any]] = []
    sink = logger.add(
        lambda message: lines.append(orjson.loads(str(message))["record"]),
        serialize=True,
        level="DEBUG",
    )
    options = SubmitterOptions(breaker_reset_s=0.2, stuck_after_blocks=1)
    try:
        async with running_proxy(rig.node.url, replacement_rule=True) as proxy:
            proxy.hold_sends = True
            async with rig.running(rig.submitter(rpc_url=proxy.url, options=options)):
                # Blocks mined before the send is recorded would date it after them.
                await wait_for(lambda: sent(rig, intent.id), what="a send")
                await rig.node.mine(2)
                await wait_for(lambda: tried(rig, intent.id, 2), what="a bump")
                await proxy.release_held()
                await rig.wait_minted([intent.id])
                await wait_for(lambda: logged(lines, "tx mined"), what="the receipt")
    finally:
        logger.remove(sink)

    signed = await rig.attempts_of(intent.id)
    assert gas_bumps(signer) - bumps_before == len(signed) - 1 >= 1
    of_intent = [
        line
        for line in lines
        if line["extra"].get("intent_id") == intent_id_hex(intent.id)
    ]
    messages = {line["message"] for line in of_intent}
    assert {"tx signed", "tx broadcast", "tx bumped", "tx mined"} <= messages
    assert {line["extra"].get("request_id") for line in of_intent} == {REQUEST_ID}


async def logged(lines: list[dict[str, Any]], message: str) -> bool:
    return any(line["message"] == message for line in lines)


def first_send_nonces(proxy: RpcProxy, since: int = 0) -> list[int]:
    """Nonces in the order the node first heard of them, from send ``since`` on."""
    seen: list[int] = []
    for sent in proxy.sends[since:]:
        if sent.tx.nonce not in seen:
            seen.append(sent.tx.nonce)
    return seen


async def nonces_sent(proxy: RpcProxy, count: int, since: int = 0) -> bool:
    return len(first_send_nonces(proxy, since)) >= count


async def test_transactions_reach_the_node_in_nonce_order_and_again_after_a_drop(
    rig: Rig,
):
    count = 12
    await rig.node.rpc("evm_setAutomine", [False])
    ids = await rig.add_intents(count)
    async with (
        running_proxy(rig.node.url) as proxy,
        rig.running(rig.submitter(rpc_url=proxy.url)),
    ):
        await wait_for(lambda: nonces_sent(proxy, count), what=f"{count} sent")
        first = first_send_nonces(proxy)
        # The node forgets every pending transaction: each is sent again from
        # its stored bytes, and a later nonce must not overtake an earlier one.
        await rig.node.rpc("anvil_dropAllTransactions")
        dropped_at = len(proxy.sends)
        await wait_for(
            lambda: nonces_sent(proxy, count, dropped_at), what="every nonce resent"
        )
        again = first_send_nonces(proxy, dropped_at)
        await rig.node.rpc("evm_setAutomine", [True])
        await rig.node.mine(1)
        await rig.wait_minted(ids)

    assert first == list(range(first[0], first[0] + count))
    assert again == first
    await rig.assert_paid_once(ids)
