"""The benchmarks' watch for anvil's automine stall, on a real anvil node.

The stall itself comes from a race inside anvil; it is made here on purpose
by moving the sender's nonce under a transaction queued behind a gap, which
leaves the pool in the same state: a queued transaction at its sender's
next nonce, nothing pending, and no block to come.
"""

from __future__ import annotations

import asyncio

from eth_account import Account

from harness.anvil import DEV_KEYS, AnvilNode, releasing_stalls, running_anvil


async def _queue_after_gap(node: AnvilNode, key: str) -> tuple[str, int]:
    sender = Account.from_key(key)
    nonce = int(
        await node.rpc("eth_getTransactionCount", [sender.address, "latest"]), 16
    )
    signed = sender.sign_transaction(
        {
            "type": 2,
            "chainId": node.chain_id,
            "nonce": nonce + 1,
            "to": sender.address,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    tx_hash = await node.rpc(
        "eth_sendRawTransaction", ["0x" + signed.raw_transaction.hex()]
    )
    return tx_hash, nonce


async def test_a_gap_is_not_a_stall_and_a_stall_is_released_with_the_same_hash():
    async with running_anvil() as node:
        sender = Account.from_key(DEV_KEYS[3]).address
        tx_hash, nonce = await _queue_after_gap(node, DEV_KEYS[3])

        assert await node.stalled() == {}
        await node.rpc("anvil_setNonce", [sender, hex(nonce + 1)])
        assert await node.stalled() == {sender.lower(): [tx_hash]}

        async with releasing_stalls(node, every_s=0.05) as released:
            receipt = None
            for _ in range(100):
                receipt = await node.rpc("eth_getTransactionReceipt", [tx_hash])
                if receipt is not None:
                    break
                await asyncio.sleep(0.05)

        assert released == [1]
        assert receipt is not None and int(receipt["status"], 16) == 1
        assert await node.stalled() == {}
