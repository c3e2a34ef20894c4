"""HNV on anvil for the tailer's tests: deploy, sign, mint, reorg, compare.

The tests play the submitter's part themselves: they sign ``mintReward``
with a dev key holding MINTER_ROLE, record the intent as ``submitted`` with
its attempt, and send the bytes. They also play the chain's part (transfers,
burns, reorgs with ``anvil_reorg``) and finally compare what the tailer
stored with ``eth_getLogs`` over the whole chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
from eth_abi.abi import encode
from eth_account import Account
from eth_utils.crypto import keccak

from harness import chainsetup
from harness.anvil import DEV_KEYS, AnvilNode
from harness.minting import wait_for
from haven import db, intents, settings, token
from haven.chain import ChainClient
from haven.daemon import attempts, checkpoints, transfers
from haven.daemon.tailer import Tailer, TailerOptions
from haven.settings import Settings
from haven.types import ChecksumAddress, IntentId, Nonce, TxHash, Wei, checksum

ROOT = Path(__file__).resolve().parents[2]

# Key 0 deploys HNV and is our hot wallet; key 4 is a minter that is not
# ours; keys 1-3 are holders that move and burn tokens.
OUR_KEY = DEV_KEYS[0]
ROGUE_KEY = DEV_KEYS[4]
HOLDER_KEYS = DEV_KEYS[1:4]
OUR_SIGNER = ChecksumAddress(Account.from_key(OUR_KEY).address)
ROGUE_SIGNER = ChecksumAddress(Account.from_key(ROGUE_KEY).address)
HOLDERS = tuple(ChecksumAddress(Account.from_key(k).address) for k in HOLDER_KEYS)

CHECKPOINT = "hnv"
_TRANSFER = keccak(text="transfer(address,uint256)")[:4]
_BURN = keccak(text="burn(uint256)")[:4]
TOPICS = [[token.TRANSFER_TOPIC, token.REWARD_MINTED_TOPIC]]
MAX_FEE_WEI = 100 * 10**9
GAS = 200_000


@dataclass(frozen=True)
class SignedTx:
    raw: str
    tx_hash: TxHash
    sender: ChecksumAddress
    nonce: int


@dataclass(frozen=True)
class Hnv:
    address: ChecksumAddress
    deploy_block: int


# --- signing and sending ------------------------------------------------------


def sign(
    key: str,
    nonce: int,
    to: str | None,
    data: bytes,
    gas: int = GAS,
    value_wei: int = 0,
) -> SignedTx:
    """Sign an EIP-1559 transaction with fixed gas and fees."""
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": 31337,
        "nonce": nonce,
        "gas": gas,
        "maxFeePerGas": MAX_FEE_WEI,
        "maxPriorityFeePerGas": 10**9,
        "value": value_wei,
        "data": data,
    }
    if to is not None:
        tx["to"] = to
    signed = Account.sign_transaction(tx, key)
    return SignedTx(
        raw="0x" + signed.raw_transaction.hex().removeprefix("0x"),
        tx_hash=TxHash("0x" + signed.hash.hex().removeprefix("0x")),
        sender=ChecksumAddress(Account.from_key(key).address),
        nonce=nonce,
    )


async def nonce_of(node: AnvilNode, key: str, block: str = "pending") -> int:
    address = Account.from_key(key).address
    return int(await node.rpc("eth_getTransactionCount", [address, block]), 16)


async def receipt(node: AnvilNode, tx_hash: str) -> dict[str, Any]:
    """Wait for the receipt of ``tx_hash``; anvil mines asynchronously."""

    async def fetch() -> dict[str, Any] | None:
        found: dict[str, Any] | None = await node.rpc(
            "eth_getTransactionReceipt", [tx_hash]
        )
        return found

    return await wait_for(fetch, timeout_s=10, what=f"receipt of {tx_hash}")


async def send(
    node: AnvilNode,
    key: str,
    to: str | None,
    data: bytes,
    *,
    wait: bool = True,
    gas: int = GAS,
) -> SignedTx:
    """Sign and send; with ``wait``, assert the transaction succeeded."""
    signed = sign(key, await nonce_of(node, key), to, data, gas)
    await node.rpc("eth_sendRawTransaction", [signed.raw])
    if wait:
        found = await receipt(node, signed.tx_hash)
        assert found["status"] == "0x1", f"transaction {signed.tx_hash} reverted"
    return signed


@asynccontextmanager
async def one_block(node: AnvilNode) -> AsyncIterator[None]:
    """Mine every transaction sent inside the block into one block."""
    await node.rpc("evm_setAutomine", [False])
    try:
        yield
        await node.rpc("evm_mine", [])
    finally:
        await node.rpc("evm_setAutomine", [True])


async def rebroadcast(node: AnvilNode, txs: list[SignedTx]) -> int:
    """Send again, in nonce order, every tx of ``txs`` not on chain; return how many."""
    sent = 0
    for tx in sorted(txs, key=lambda t: (t.sender, t.nonce)):
        if await node.rpc("eth_getTransactionReceipt", [tx.tx_hash]) is not None:
            continue
        try:
            await node.rpc("eth_sendRawTransaction", [tx.raw])
            sent += 1
        except RuntimeError:
            continue  # its nonce was taken by another transaction
    return sent


# --- the token ----------------------------------------------------------------


async def deploy_hnv(node: AnvilNode) -> Hnv:
    """Deploy HNV with key 0 as admin; grant MINTER_ROLE to keys 0 and 4."""
    address, deploy_block = await chainsetup.deploy_hnv(node)
    for minter in (OUR_SIGNER, ROGUE_SIGNER):
        await chainsetup.grant_minter(node, address, minter)
    return Hnv(address=address, deploy_block=deploy_block)


def transfer_data(to: str, amount_wei: int) -> bytes:
    return _TRANSFER + encode(["address", "uint256"], [to, amount_wei])


def burn_data(amount_wei: int) -> bytes:
    return _BURN + encode(["uint256"], [amount_wei])


async def balance_of(node: AnvilNode, hnv: Hnv, holder: str) -> int:
    data = token.balance_of_data(checksum(holder))
    call = {"to": hnv.address, "data": "0x" + data.hex()}
    return int(await node.rpc("eth_call", [call, "latest"]), 16)


async def total_supply(node: AnvilNode, hnv: Hnv, block: str = "latest") -> int:
    call = {"to": hnv.address, "data": "0x" + token.total_supply_data().hex()}
    return int(await node.rpc("eth_call", [call, block]), 16)


# --- intents the way the submitter records them ----------------------------------


async def submit_intent(
    pool: db.Pool,
    node: AnvilNode,
    hnv: Hnv,
    *,
    source_key: str,
    wallet: ChecksumAddress,
    amount_wei: int,
    key: str = OUR_KEY,
    mint_amount_wei: int | None = None,
    intent_id: IntentId | None = None,
    send: bool = True,
    wait: bool = True,
    succeeds: bool = True,
) -> tuple[IntentId, SignedTx]:
    """Record a submitted intent with its signed attempt, then send the mint.

    With ``intent_id``, record one more attempt of that existing intent.
    """
    new = intent_id is None
    intent_id = intent_id or intents.derive_id("aurora", "booking", source_key)
    data = token.mint_reward_data(wallet, Wei(mint_amount_wei or amount_wei), intent_id)
    signed = sign(key, await nonce_of(node, key), hnv.address, data)
    async with db.transaction(pool) as connection:
        await connection.execute(
            "INSERT INTO signers (address, encrypted_key, status) "
            "VALUES ($1, $2, 'active') ON CONFLICT DO NOTHING",
            signed.sender,
            b"not-a-key",
        )
        if new:
            await _record_intent(connection, signed, source_key, wallet, amount_wei)
        await attempts.record(
            connection,
            intent_id=intent_id,
            signer=signed.sender,
            nonce=Nonce(signed.nonce),
            tx_hash=signed.tx_hash,
            raw_tx=bytes.fromhex(signed.raw[2:]),
            max_fee_wei=Wei(MAX_FEE_WEI),
            max_priority_fee_wei=Wei(10**9),
            gas_limit=GAS,
        )
    if send:
        await node.rpc("eth_sendRawTransaction", [signed.raw])
    if send and wait:
        found = await receipt(node, signed.tx_hash)
        assert found["status"] == ("0x1" if succeeds else "0x0")
    return intent_id, signed


async def _record_intent(
    connection: asyncpg.Connection,
    signed: SignedTx,
    source_key: str,
    wallet: ChecksumAddress,
    amount_wei: int,
) -> None:
    intent, _ = await intents.create(
        connection,
        partner="aurora",
        kind="booking",
        source_key=source_key,
        wallet=wallet,
        amount_wei=Wei(amount_wei),
        rule_version="test",
        status=intents.READY,
    )
    await intents.transition(
        connection,
        intent.id,
        from_statuses=(intents.READY,),
        to_status=intents.SUBMITTED,
        signer=signed.sender,
        nonce=signed.nonce,
        tx_hash=bytes.fromhex(signed.tx_hash[2:]),
    )


async def status_of(pool: db.Pool, intent_id: bytes) -> str:
    async with pool.acquire() as connection:
        intent = await intents.get(connection, intent_id)
    assert intent is not None
    return intent.status


# --- reorgs -------------------------------------------------------------------


async def block_hash(node: AnvilNode, number: int) -> str:
    block = await node.rpc("eth_getBlockByNumber", [hex(number), False])
    return str(block["hash"])


async def reorg(
    node: AnvilNode,
    depth: int,
    replacements: Sequence[tuple[SignedTx, int]] = (),
) -> None:
    """Replace the newest ``depth`` blocks; assert the block hash really changed."""
    head = await node.block_number()
    lowest = head - depth + 1
    before = await block_hash(node, lowest)
    await node.rpc(
        "anvil_reorg", [depth, [[tx.raw, offset] for tx, offset in replacements]]
    )
    assert await node.block_number() == head, "anvil_reorg moved the head"
    assert await block_hash(node, lowest) != before, f"block {lowest} kept its hash"


# --- comparing ----------------------------------------------------------------


async def canonical_logs(node: AnvilNode, hnv: Hnv) -> list[dict[str, Any]]:
    query = {
        "address": hnv.address,
        "fromBlock": hex(hnv.deploy_block),
        "toBlock": "latest",
        "topics": TOPICS,
    }
    logs: list[dict[str, Any]] = await node.rpc("eth_getLogs", [query])
    return logs


async def checkpoint(pool: db.Pool) -> checkpoints.Checkpoint | None:
    async with pool.acquire() as connection:
        return await checkpoints.load(connection, CHECKPOINT)


async def wait_settled(
    pool: db.Pool, node: AnvilNode, *, timeout_s: float = 30
) -> checkpoints.Checkpoint:
    """Wait until the checkpoint is the node's head block, by number and hash."""

    async def settled() -> checkpoints.Checkpoint | None:
        head = await node.block_number()
        found = await checkpoint(pool)
        if found is None or found.block_number != head:
            return None
        if "0x" + found.block_hash.hex() != await block_hash(node, head):
            return None
        return found

    return await wait_for(settled, timeout_s=timeout_s, what="the tailer to settle")


async def assert_index_matches_chain(
    pool: db.Pool, node: AnvilNode, hnv: Hnv, *, through: int | None = None
) -> None:
    """Stored events equal eth_getLogs over the chain, by (block hash, log index).

    With ``through``, only blocks up to it count: what a checkpoint covers.
    """
    logs = [
        log
        for log in await canonical_logs(node, hnv)
        if through is None or int(log["blockNumber"], 16) <= through
    ]
    expected = sorted(
        (bytes.fromhex(log["blockHash"][2:]), int(log["logIndex"], 16)) for log in logs
    )
    async with pool.acquire() as connection:
        stored = sorted(await transfers.positions(connection))
        minted = await transfers.minted_total(connection)
        supply = await transfers.supply_from_transfers(connection)
    assert stored == expected, _difference(stored, expected)
    rewards = [
        token.decode_uint(bytes.fromhex(log["data"][2:]))
        for log in logs
        if log["topics"][0] == token.REWARD_MINTED_TOPIC
    ]
    assert minted == sum(rewards)
    block = "latest" if through is None else hex(through)
    assert supply == await total_supply(node, hnv, block)


def _difference(stored: list[Any], expected: list[Any]) -> str:
    missing = sorted(set(expected) - set(stored))[:5]
    extra = sorted(set(stored) - set(expected))[:5]
    return (
        f"{len(stored)} stored, {len(expected)} on chain; "
        f"missing {missing}, extra {extra}, duplicates {len(stored) - len(set(stored))}"
    )


# --- running the tailer -----------------------------------------------------------


def tailer_settings(
    database_url: str,
    rpc_urls: list[str],
    hnv: Hnv,
    *,
    confirmations: int = 3,
    finality_depth: int = 8,
    poll_interval_ms: int = 50,
    rpc_timeout_s: float = 1.0,
    head_stall_s: float = 2.0,
    log_range_max_blocks: int = 2000,
    ws_url: str | None = None,
) -> Settings:
    """Settings of a tailer that fails fast: short timeouts and stall limit."""
    return settings.load(
        {},
        overrides={
            "database_url": database_url,
            "rpc_url": rpc_urls,
            "chain_id": 31337,
            "token_address": hnv.address,
            "start_block": hnv.deploy_block,
            "confirmations": confirmations,
            "finality_depth": finality_depth,
            "poll_interval_ms": poll_interval_ms,
            "rpc_timeout_s": rpc_timeout_s,
            "head_stall_s": head_stall_s,
            "log_range_max_blocks": log_range_max_blocks,
            "ws_url": ws_url,
        },
        require=("database_url", "rpc_url", "chain_id"),
    )


def fast_options(**changes: Any) -> TailerOptions:
    """Options that fail fast: a short backoff."""
    fast = TailerOptions(max_backoff_s=0.5)
    return replace(fast, **changes)


class TailerTask:
    """A Tailer run as a task of the test's loop, to stop, cancel and restart."""

    def __init__(
        self, config: Settings, pool: db.Pool, options: TailerOptions | None = None
    ) -> None:
        self._config = config
        self._pool = pool
        self._options = options or fast_options()
        self._stopping = asyncio.Event()
        self._chain: ChainClient | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._stopping = asyncio.Event()
        self._chain = ChainClient(self._config.rpc_url, chain_id=self._config.chain_id)
        tailer = Tailer(self._config, self._pool, self._chain, options=self._options)
        self.task = asyncio.create_task(tailer.run(self._stopping), name="tailer")
        return self.task

    async def cancel(self) -> None:
        """Cancel wherever it is, as a crash would stop it."""
        assert self.task is not None and self._chain is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self._chain.close()

    async def stop(self) -> None:
        """Stop it cleanly; fail if it does not stop or had raised."""
        assert self.task is not None and self._chain is not None
        self._stopping.set()
        done, _ = await asyncio.wait([self.task], timeout=10)
        await self._chain.close()
        if not done:
            self.task.cancel()
            raise AssertionError("the tailer did not stop within 10 s")
        if not self.task.cancelled() and self.task.exception() is not None:
            raise AssertionError("the tailer raised") from self.task.exception()


@asynccontextmanager
async def running_tailer(
    config: Settings, pool: db.Pool, options: TailerOptions | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a Tailer task for the duration of the block; stop it cleanly after."""
    runner = TailerTask(config, pool, options)
    task = runner.start()
    try:
        yield task
    finally:
        await runner.stop()


def spawn_tailer(config: Settings, options: TailerOptions) -> subprocess.Popen[bytes]:
    """Start a tailer in a child process (see harness.tailrun), to kill with SIGKILL."""
    spec = {
        "database_url": config.database_url.reveal(),
        "rpc_url": list(config.rpc_url),
        "token_address": config.token_address,
        "start_block": config.start_block,
        "confirmations": config.confirmations,
        "finality_depth": config.finality_depth,
        "poll_interval_ms": config.poll_interval_ms,
        "rpc_timeout_s": config.rpc_timeout_s,
        "head_stall_s": config.head_stall_s,
        "log_range_max_blocks": config.log_range_max_blocks,
        "ws_url": config.ws_url,
        "options": asdict(options),
    }
    env = dict(
        os.environ, HAVENTEST_TAILER=json.dumps(spec), PYTHONPATH=str(ROOT / "tests")
    )
    return subprocess.Popen(
        [sys.executable, "-m", "harness.tailrun"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
