"""Stuck transactions on anvil: bumps on schedule past geth's rule, refills, fee caps.

anvil includes any pending transaction in the next block it mines, so a
transaction that stays out of blocks is staged with the proxy holding it
(a node that never propagates it) while the test mines empty blocks. The
proxy also enforces geth's replacement rule, which anvil does not.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from eth_account import Account

from harness import chainsetup
from harness.anvil import DEV_KEYS
from harness.minting import Rig, wait_for
from harness.rpcproxy import UNDERPRICED_MESSAGE, running_proxy
from haven import chain, token
from haven.daemon import attempts, submitter
from haven.daemon.submitter import SubmitterOptions
from haven.errors import RpcResponseError
from haven.types import IntentId

pytestmark = pytest.mark.timeout(120)
GWEI = 10**9


async def send_recorded(rig: Rig, intent_id: IntentId) -> bool:
    return any(a.sent_block is not None for a in await rig.attempts_of(intent_id))


async def attempt_count(rig: Rig, intent_id: IntentId, wanted: int) -> bool:
    return len(await rig.attempts_of(intent_id)) >= wanted


async def alert_seen(rig: Rig, rule: str, occurrences: int = 1) -> bool:
    return any(a.occurrences >= occurrences for a in await rig.alerts(rule))


def assert_each_bump_beats_every_earlier_offer(tried: list[attempts.Attempt]) -> None:
    for index in range(1, len(tried)):
        earlier = tried[:index]
        top_fee = max(a.max_fee_wei for a in earlier)
        top_tip = max(a.max_priority_fee_wei for a in earlier)
        assert tried[index].max_fee_wei * 8 >= top_fee * 9
        assert tried[index].max_priority_fee_wei * 8 >= top_tip * 9
        assert tried[index].nonce == tried[0].nonce


async def test_a_stuck_mint_is_bumped_on_schedule_until_price_is_not_the_problem(
    rig: Rig,
):
    every = 2
    (intent_id,) = await rig.add_intents(1)
    options = SubmitterOptions(breaker_reset_s=0.2, stuck_after_blocks=every)
    async with running_proxy(rig.node.url, replacement_rule=True) as proxy:
        proxy.hold_sends = True
        async with rig.running(rig.submitter(rpc_url=proxy.url, options=options)):
            # Blocks mined before the send is recorded would date it after them.
            await wait_for(lambda: send_recorded(rig, intent_id), what="a send")
            rounds = 0
            while not await alert_seen(rig, submitter.TX_PROPAGATION):
                rounds += 1
                assert rounds < 20, "never recognised that price is not the problem"
                await rig.node.mine(every)
                await wait_for(
                    lambda n=rounds: bumped_or_alerted(rig, intent_id, n + 1),
                    what=f"bump {rounds} or a propagation alert",
                )
            bumps = len(await rig.attempts_of(intent_id))
            await rig.node.mine(every)
            await wait_for(
                lambda: alert_seen(rig, submitter.TX_PROPAGATION, 2),
                what="the stuck nonce assessed again",
            )
            assert len(await rig.attempts_of(intent_id)) == bumps
            await proxy.release_held()
            await rig.wait_minted([intent_id])

    tried = await rig.attempts_of(intent_id)
    assert len(tried) >= 4
    assert_each_bump_beats_every_earlier_offer(tried)
    sent = [a.sent_block or 0 for a in tried]
    assert all(a.sent_block is not None for a in tried)
    assert all(b - a >= every for a, b in itertools.pairwise(sent))
    assert proxy.refused() == []
    (mint,) = await chainsetup.mints(rig.node, rig.token, rig.deploy_block)
    assert mint.tx_hash == tried[-1].tx_hash


async def bumped_or_alerted(rig: Rig, intent_id: IntentId, wanted: int) -> bool:
    if await attempt_count(rig, intent_id, wanted):
        return True
    return await alert_seen(rig, submitter.TX_PROPAGATION)


async def test_the_proxy_refuses_what_geth_refuses_and_anvil_would_accept(rig: Rig):
    key = DEV_KEYS[2]
    sender = Account.from_key(key)
    await rig.node.rpc("evm_setAutomine", [False])

    def signed(tip_gwei: float, cap_gwei: float, **extra: Any) -> bytes:
        tx = {
            "type": 2,
            "chainId": rig.node.chain_id,
            "nonce": 0,
            "to": sender.address,
            "value": 0,
            "gas": 21_000,
            "maxPriorityFeePerGas": int(tip_gwei * GWEI),
            "maxFeePerGas": int(cap_gwei * GWEI),
            "data": b"",
        } | extra
        return bytes(sender.sign_transaction(tx).raw_transaction)

    async with running_proxy(rig.node.url, replacement_rule=True) as proxy:
        client = rig.chain(proxy.url)
        await client.send_raw_transaction(signed(1, 10))
        refusals: list[RpcResponseError] = []
        for tip, cap in ((1.05, 11), (1.1, 10.5), (1, 10 + 1e-9)):
            with pytest.raises(RpcResponseError) as caught:
                await client.send_raw_transaction(signed(tip, cap))
            refusals.append(caught.value)
        await client.send_raw_transaction(signed(1.1, 11))

    assert all(UNDERPRICED_MESSAGE in str(exc) for exc in refusals)
    assert {exc.kind for exc in refusals} == {chain.REPLACEMENT_UNDERPRICED}
    # anvil on its own takes a fee cap one wei higher as a replacement.
    direct = rig.chain()
    await direct.send_raw_transaction(signed(1.1, 11, maxFeePerGas=11 * GWEI + 1))


async def test_a_dropped_transaction_is_put_back_with_the_same_bytes(rig: Rig):
    await rig.node.rpc("evm_setAutomine", [False])
    (intent_id,) = await rig.add_intents(1)
    async with rig.running(rig.submitter()):
        first = await wait_for(
            lambda: in_node_pool(rig, intent_id), what="the mint in the pool"
        )
        await rig.node.rpc("anvil_dropTransaction", [first])
        assert await rig.node.rpc("eth_getTransactionByHash", [first]) is None
        again = await wait_for(
            lambda: in_node_pool(rig, intent_id), what="the mint put back"
        )
        await rig.node.mine(1)
        await rig.wait_minted([intent_id])

    assert again == first
    assert len(await rig.attempts_of(intent_id)) == 1


async def in_node_pool(rig: Rig, intent_id: IntentId) -> str | None:
    for attempt in await rig.attempts_of(intent_id):
        found = await rig.node.rpc("eth_getTransactionByHash", [attempt.tx_hash])
        if found is not None:
            return attempt.tx_hash
    return None


async def test_a_base_fee_spike_that_evicts_a_mint_gets_it_repriced_and_mined_once(
    rig: Rig,
):
    await rig.node.rpc("evm_setAutomine", [False])
    (intent_id,) = await rig.add_intents(1)
    async with rig.running(rig.submitter()):
        await wait_for(
            lambda: in_node_pool(rig, intent_id), what="the mint in the pool"
        )
        await rig.node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(100 * GWEI)])
        await rig.node.mine(1)
        await wait_for(lambda: attempt_count(rig, intent_id, 2), what="a re-price")
        await wait_for(lambda: in_node_pool(rig, intent_id), what="the bump pooled")
        await rig.node.mine(1)
        await rig.wait_minted([intent_id])

    first, bumped = await rig.attempts_of(intent_id)
    assert first.max_fee_wei < 100 * GWEI < bumped.max_fee_wei
    assert first.error_kind == chain.FEE_CAP_BELOW_BASE_FEE
    (mint,) = await chainsetup.mints(rig.node, rig.token, rig.deploy_block)
    assert mint.tx_hash == bumped.tx_hash


async def test_at_the_fee_cap_it_alerts_keeps_re_sending_and_recovers_when_fees_fall(
    rig: Rig,
):
    await rig.node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(100 * GWEI)])
    await rig.node.mine(1)
    (intent_id,) = await rig.add_intents(1)
    worker = rig.submitter(max_fee_wei=str(20 * GWEI))
    async with rig.running(worker) as task:
        await wait_for(
            lambda: alert_seen(rig, submitter.FEE_CAP_REACHED, 2),
            what="the fee cap alert, twice",
        )
        assert not task.done()
        await rig.node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])
        await rig.node.mine(1)
        await rig.wait_minted([intent_id])

    (only,) = await rig.attempts_of(intent_id)
    assert only.max_fee_wei == 20 * GWEI
    assert only.status == attempts.BROADCAST


async def test_a_reverted_mint_is_observed_and_never_sent_again_nor_failed_here(
    rig: Rig,
):
    assert rig.signer is not None
    revoke = token.revoke_role_data(token.MINTER_ROLE, rig.signer)

    async with rig.running(rig.submitter()):
        # The role is withdrawn under a running daemon that has seen it held.
        await rig.wait_minted(await rig.add_intents(1))
        await chainsetup.transact(
            rig.node, chainsetup.ADMIN_KEY, to=rig.token, data=revoke
        )
        (intent_id,) = await rig.add_intents(1)
        await wait_for(lambda: receipt_seen(rig, intent_id), what="the receipt seen")
        more = await rig.add_intents(1)
        await wait_for(lambda: attempt_count(rig, more[0], 1), what="the next mint")

    (only,) = await rig.attempts_of(intent_id)
    assert only.receipt_status == 0
    assert only.status != attempts.FAILED
    assert (await rig.mint_counts())[intent_id] == 0


async def receipt_seen(rig: Rig, intent_id: IntentId) -> bool:
    return any(a.receipt_block is not None for a in await rig.attempts_of(intent_id))
