"""HNV on a benchmark's anvil: deploy it, endow holders, and fill blocks with transfers.

Transfers are sent with ``eth_sendTransaction`` from anvil's unlocked dev
accounts in JSON-RPC batches, mining paused, then mined ``per_block`` at a
time: signing hundreds of thousands of transactions in Python would take
longer than the benchmarks themselves, and packing them keeps the chain
to a few thousand blocks (anvil slows as its chain grows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from eth_utils.crypto import keccak

from benches.services import AnvilNode
from harness import chainsetup
from harness.anvil import DEV_ADDRESSES
from haven import token
from haven.types import ChecksumAddress, IntentId, Wei

TRANSFER_SELECTOR = keccak(text="transfer(address,uint256)")[:4]
TRANSFER_GAS = 100_000
MAX_FEE_WEI = 100 * 10**9
TIP_WEI = 10**9
# Dev accounts 1-4 send; 0 is the token's admin and minter.
SENDERS = DEV_ADDRESSES[1:5]
RPC_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Token:
    """HNV deployed on a benchmark's node."""

    address: ChecksumAddress
    deploy_block: int


async def deploy(node: AnvilNode) -> Token:
    """Deploy HNV (dev key 0 is admin) and make dev key 0 a minter too."""
    address, deploy_block = await chainsetup.deploy_hnv(node)
    await chainsetup.grant_minter(node, address, chainsetup.ADMIN)
    return Token(address=address, deploy_block=deploy_block)


async def endow(
    node: AnvilNode, hnv: Token, holders: Sequence[str], amount_wei: int
) -> None:
    """Mint ``amount_wei`` to each holder (one RewardMinted each), automine on."""
    for number, holder in enumerate(holders):
        intent_id = IntentId(keccak(text=f"bench:endow:{number}"))
        data = token.mint_reward_data(
            ChecksumAddress(holder), Wei(amount_wei), intent_id
        )
        await chainsetup.transact(node, chainsetup.ADMIN_KEY, to=hnv.address, data=data)


def recipient(number: int) -> str:
    """Return a deterministic holder address for ``number`` (lower-case hex)."""
    return "0x" + keccak(text=f"bench:holder:{number}")[:20].hex()


def transfer_data(to: str, amount_wei: int) -> str:
    """Return hex call data of ``transfer(to, amount_wei)``."""
    body = bytes(12) + bytes.fromhex(to[2:]) + amount_wei.to_bytes(32, "big")
    return "0x" + (TRANSFER_SELECTOR + body).hex()


async def fill(
    node: AnvilNode,
    hnv: Token,
    *,
    transfers: int,
    per_block: int,
    recipients: int,
    senders: Sequence[str] = SENDERS,
) -> int:
    """Mine ``transfers`` transfers, ``per_block`` to a block; return blocks mined.

    The senders must hold enough HNV (see :func:`endow`). Mining is paused
    while a block's transactions are sent and turned back on at the end.
    """
    nonces = {
        sender: int(await node.rpc("eth_getTransactionCount", [sender, "pending"]), 16)
        for sender in senders
    }
    await node.rpc("evm_setAutomine", [False])
    sent = blocks = 0
    timeout = aiohttp.ClientTimeout(total=RPC_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while sent < transfers:
                size = min(per_block, transfers - sent)
                calls = [
                    _transfer_call(hnv, senders, nonces, sent + n, recipients)
                    for n in range(size)
                ]
                await _batch(session, node.url, calls)
                await node.rpc("evm_mine", [])
                sent += size
                blocks += 1
    finally:
        await node.rpc("evm_setAutomine", [True])
    return blocks


def _transfer_call(
    hnv: Token,
    senders: Sequence[str],
    nonces: dict[str, int],
    number: int,
    recipients: int,
) -> dict[str, Any]:
    sender = senders[number % len(senders)]
    nonce = nonces[sender]
    nonces[sender] = nonce + 1
    tx = {
        "from": sender,
        "to": hnv.address,
        "data": transfer_data(recipient(number % recipients), 1 + number % 1000),
        "gas": hex(TRANSFER_GAS),
        "nonce": hex(nonce),
        "maxFeePerGas": hex(MAX_FEE_WEI),
        "maxPriorityFeePerGas": hex(TIP_WEI),
    }
    return {"method": "eth_sendTransaction", "params": [tx]}


async def _batch(
    session: aiohttp.ClientSession, url: str, calls: list[dict[str, Any]]
) -> list[Any]:
    payload = [
        {"jsonrpc": "2.0", "id": number, **call} for number, call in enumerate(calls)
    ]
    async with session.post(
        url, data=orjson.dumps(payload), headers={"Content-Type": "application/json"}
    ) as response:
        answers: list[dict[str, Any]] = orjson.loads(await response.read())
    refused = [a["error"] for a in answers if "error" in a]
    if refused:
        raise RuntimeError(
            f"{len(refused)} of {len(calls)} calls refused: {refused[0]}"
        )
    return [a["result"] for a in sorted(answers, key=lambda a: a["id"])]


async def logs(
    node: AnvilNode, hnv: Token, first_block: int, last_block: int
) -> list[dict[str, Any]]:
    """Return every HNV log of blocks ``first_block`` to ``last_block``."""
    found: list[dict[str, Any]] = await node.rpc(
        "eth_getLogs",
        [
            {
                "address": hnv.address,
                "fromBlock": hex(first_block),
                "toBlock": hex(last_block),
            }
        ],
    )
    return found
