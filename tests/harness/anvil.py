"""Start and stop real anvil nodes for tests.

Each node writes its state under a temporary cache directory that is removed
when the node stops: anvil otherwise keeps a file per block in the home
directory forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
ANVIL_BIN = ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"

# anvil's default mnemonic ("test test ... junk") accounts 0..9.
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)
DEV_ADDRESSES = (
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
)


def free_port() -> int:
    """Return a TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AnvilNode:
    """A running anvil process and its JSON-RPC URL."""

    url: str
    process: subprocess.Popen[bytes]
    chain_id: int

    async def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Call one JSON-RPC method and return its result, raising on error."""
        payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.url, json=payload) as response,
        ):
            body = await response.json()
        if "error" in body:
            raise RuntimeError(f"{method} failed: {body['error']}")
        return body["result"]

    async def mine(self, blocks: int = 1) -> None:
        await self.rpc("anvil_mine", [hex(blocks)])

    async def block_number(self) -> int:
        return int(await self.rpc("eth_blockNumber"), 16)

    async def stalled(self) -> dict[str, list[str]]:
        """Return the queued transactions anvil's automine will never mine.

        anvil 1.7.1 can park a transaction as queued when it arrives while
        the block that mines its predecessor is being built. Nothing
        promotes it afterwards, and automine, which mines when a transaction
        arrives, makes no further block: every later nonce of that sender
        waits behind it for good. The signature is a queued transaction at
        its sender's next nonce with nothing pending. Returned per sender,
        the hashes of all its queued transactions in nonce order; empty
        when nothing is stalled.
        """
        content = await self.rpc("txpool_content")
        if content.get("pending"):
            return {}
        stalled = {}
        for sender, by_nonce in (content.get("queued") or {}).items():
            next_nonce = await self.rpc("eth_getTransactionCount", [sender, "latest"])
            if str(int(next_nonce, 16)) in by_nonce:
                ordered = sorted(by_nonce, key=int)
                stalled[sender] = [by_nonce[nonce]["hash"] for nonce in ordered]
        return stalled

    async def release(self, stalled: dict[str, list[str]]) -> int:
        """Empty the pool and send the ``stalled`` transactions back; return how many.

        The same bytes go back, so the same hashes are mined: what a node of
        a real network does by itself when it re-checks its queue at a new
        block. Anything else in the pool is dropped with them, so call it
        only while :meth:`stalled` keeps answering the same.
        """
        raws = [
            await self.rpc("eth_getRawTransactionByHash", [tx_hash])
            for hashes in stalled.values()
            for tx_hash in hashes
        ]
        await self.rpc("anvil_dropAllTransactions")
        for raw in raws:
            await self.rpc("eth_sendRawTransaction", [raw])
        return len(raws)


async def _wait_until_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    timeout = aiohttp.ClientTimeout(total=1)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(200):
            if process.poll() is not None:
                raise RuntimeError(f"anvil exited with code {process.returncode}")
            try:
                async with session.post(url, json=payload) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            # anvil prints nothing we can wait on when silent: the port opening
            # is the only readiness signal, so poll it briefly.
            await asyncio.sleep(0.05)
    raise RuntimeError(f"anvil at {url} did not become ready")


@asynccontextmanager
async def running_anvil(
    *extra_args: str, chain_id: int = 31337, block_time_s: float | None = None
) -> AsyncIterator[AnvilNode]:
    """Run one anvil node for the duration of the block."""
    if not ANVIL_BIN.exists():
        raise RuntimeError(f"anvil not installed at {ANVIL_BIN}: run `make setup`")
    cache_dir = tempfile.mkdtemp(prefix="haven-anvil-")
    port = free_port()
    args = [
        str(ANVIL_BIN),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
        "--cache-path",
        cache_dir,
        "--silent",
    ]
    if block_time_s is not None:
        args += ["--block-time", str(block_time_s)]
    args += list(extra_args)
    env = dict(os.environ, HOME=cache_dir)
    # Forking from a large test process can take a while; keep it off the loop.
    process = await asyncio.to_thread(
        subprocess.Popen, args, env=env, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_until_ready(url, process)
        yield AnvilNode(url=url, process=process, chain_id=chain_id)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(cache_dir, ignore_errors=True)


@asynccontextmanager
async def releasing_stalls(
    node: AnvilNode, *, every_s: float = 0.5
) -> AsyncIterator[list[int]]:
    """Watch ``node`` for the block and release what stays stalled.

    A stall seen the same on two looks in a row (``every_s`` apart) is
    released with :meth:`AnvilNode.release`. Yields a list that gets the
    number of transactions of each release.
    """
    released: list[int] = []

    async def watch() -> None:
        last: dict[str, list[str]] = {}
        while True:
            await asyncio.sleep(every_s)
            now = await node.stalled()
            if now and now == last:
                released.append(await node.release(now))
                now = {}
            last = now

    watcher = asyncio.create_task(watch())
    try:
        yield released
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
