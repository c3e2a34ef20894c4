"""HNV on a test anvil: deploy it, fund and authorise minters, read what was minted.

Every transaction here is signed by dev key 0 (the token's admin) with
eth-account and sent as raw bytes, so the helpers work on any node and
through any proxy. They assume the node mines on its own (automine or
interval mining); with mining paused, mine before waiting for a receipt.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from eth_abi import encode
from eth_account import Account

from harness.anvil import DEV_KEYS, AnvilNode
from haven import contracts, token
from haven.types import ChecksumAddress, IntentId, checksum

ADMIN_KEY = DEV_KEYS[0]
ADMIN = checksum(Account.from_key(ADMIN_KEY).address)
RECEIPT_TIMEOUT_S = 30.0
TIP_WEI = 10**9


@dataclass(frozen=True)
class Mint:
    """One RewardMinted log."""

    intent_id: IntentId
    to_address: ChecksumAddress
    amount_wei: int
    minter: ChecksumAddress
    tx_hash: str
    block_number: int


async def send_raw(
    node: AnvilNode,
    key: str,
    *,
    to: str | None,
    data: bytes = b"",
    value: int = 0,
    gas: int | None = None,
    nonce: int | None = None,
) -> str:
    """Sign and send one EIP-1559 transaction from ``key``; return its hash."""
    account = Account.from_key(key)
    if nonce is None:
        nonce = int(
            await node.rpc("eth_getTransactionCount", [account.address, "pending"]), 16
        )
    block = await node.rpc("eth_getBlockByNumber", ["latest", False])
    base_fee = int(block["baseFeePerGas"], 16)
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": node.chain_id,
        "nonce": nonce,
        "value": value,
        "data": data,
        "maxPriorityFeePerGas": TIP_WEI,
        "maxFeePerGas": 2 * base_fee + TIP_WEI,
    }
    if to is not None:
        tx["to"] = checksum(to)
    tx["gas"] = gas if gas is not None else await _estimate(node, account.address, tx)
    signed = account.sign_transaction(tx)
    tx_hash: str = await node.rpc(
        "eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()]
    )
    return tx_hash


async def _estimate(node: AnvilNode, sender: str, tx: dict[str, Any]) -> int:
    call = {"from": sender, "data": "0x" + tx["data"].hex(), "value": hex(tx["value"])}
    if "to" in tx:
        call["to"] = tx["to"]
    return int(await node.rpc("eth_estimateGas", [call]), 16) * 12 // 10


async def wait_receipt(
    node: AnvilNode, tx_hash: str, *, timeout_s: float = RECEIPT_TIMEOUT_S
) -> dict[str, Any]:
    """Return the receipt of ``tx_hash`` once mined; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        receipt: dict[str, Any] | None = await node.rpc(
            "eth_getTransactionReceipt", [tx_hash]
        )
        if receipt is not None:
            return receipt
        if loop.time() > deadline:
            raise AssertionError(f"{tx_hash} not mined within {timeout_s} s")
        # anvil mines asynchronously and has no push over HTTP.
        await asyncio.sleep(0.02)


async def transact(node: AnvilNode, key: str, **fields: Any) -> dict[str, Any]:
    """Send a transaction and return its receipt; fail if it reverted."""
    receipt = await wait_receipt(node, await send_raw(node, key, **fields))
    if int(receipt["status"], 16) != 1:
        raise AssertionError(f"{receipt['transactionHash']} reverted")
    return receipt


async def deploy_hnv(node: AnvilNode) -> tuple[ChecksumAddress, int]:
    """Deploy HNV with dev key 0 as admin; return (token address, deploy block)."""
    bytecode = bytes.fromhex(contracts.bytecode().removeprefix("0x"))
    data = bytecode + encode(["address"], [ADMIN])
    receipt = await transact(node, ADMIN_KEY, to=None, data=data, gas=5_000_000)
    return checksum(receipt["contractAddress"]), int(receipt["blockNumber"], 16)


async def fund(node: AnvilNode, address: str, wei: int) -> None:
    """Send ``wei`` of ETH from dev key 0 to ``address``."""
    await transact(node, ADMIN_KEY, to=address, value=wei, gas=21_000)


async def grant_minter(node: AnvilNode, token_address: str, address: str) -> None:
    """Grant MINTER_ROLE on ``token_address`` to ``address`` (as dev key 0)."""
    data = token.grant_role_data(token.MINTER_ROLE, checksum(address))
    await transact(node, ADMIN_KEY, to=token_address, data=data)


async def has_minter_role(node: AnvilNode, token_address: str, address: str) -> bool:
    data = token.has_role_data(token.MINTER_ROLE, checksum(address))
    return token.decode_bool(await _call(node, token_address, data))


async def is_minted(node: AnvilNode, token_address: str, intent_id: bytes) -> bool:
    """Ask the contract whether ``intent_id`` was minted (latest block)."""
    data = token.is_minted_data(IntentId(intent_id))
    return token.decode_bool(await _call(node, token_address, data))


async def _call(node: AnvilNode, to: str, data: bytes) -> bytes:
    result = await node.rpc(
        "eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"]
    )
    return bytes.fromhex(result[2:])


async def mints(node: AnvilNode, token_address: str, from_block: int = 0) -> list[Mint]:
    """Return every RewardMinted log of ``token_address`` on the chain."""
    logs = await node.rpc(
        "eth_getLogs",
        [
            {
                "address": token_address,
                "fromBlock": hex(from_block),
                "toBlock": "latest",
                "topics": [token.REWARD_MINTED_TOPIC],
            }
        ],
    )
    found = []
    for log in logs:
        event = token.decode_log(log, checksum(token_address))
        assert isinstance(event, token.RewardMinted)
        found.append(
            Mint(
                intent_id=event.intent_id,
                to_address=event.to_address,
                amount_wei=event.amount_wei,
                minter=event.minter,
                tx_hash="0x" + event.position.tx_hash.hex(),
                block_number=event.position.block_number,
            )
        )
    return found


async def mint_counts(
    node: AnvilNode, token_address: str, from_block: int = 0
) -> Counter[bytes]:
    """Return how many RewardMinted logs each intent id has."""
    return Counter(m.intent_id for m in await mints(node, token_address, from_block))


async def nonce_of(node: AnvilNode, address: str, block: str = "latest") -> int:
    return int(await node.rpc("eth_getTransactionCount", [address, block]), 16)
