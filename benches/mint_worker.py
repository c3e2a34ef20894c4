"""The minting process of the mint benchmark: ``python -m benches.mint_worker``.

With a spec on stdin it runs one of:

* ``daemon``   — the real daemon (``haven.daemon.service.run``) with its
  Submitter and Tailer, until every intent in the database is confirmed;
* ``baseline`` — signs the same number of ``mintReward`` transactions
  before the clock starts, then sends them in a loop, as many unmined at
  once as the daemon may have, and waits for the last receipt.

Either answers the seconds it took and this process's peak memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import uvloop
from eth_account import Account
from eth_utils.crypto import keccak

from benches import services
from haven import db, logs, settings, token
from haven.chain import ChainClient
from haven.daemon import service
from haven.daemon.service import Component
from haven.daemon.submitter import Submitter
from haven.daemon.tailer import Tailer
from haven.types import ChecksumAddress, IntentId, Wei

DAEMON = "daemon"
BASELINE = "baseline"
POLL_S = 0.02
RECEIPT_POLL_S = 0.005
GAS = 200_000
MAX_FEE_WEI = 100 * 10**9
TIP_WEI = 10**9


async def _components(
    loaded: settings.Settings, pool: db.Pool, chain: ChainClient
) -> list[Component]:
    return [Submitter(loaded, pool, chain), Tailer(loaded, pool, chain)]


async def mint_with_daemon(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run the daemon until ``count`` intents are confirmed; time it."""
    loaded = settings.load(spec["environ"])
    logs.configure(loaded, process="daemon")
    count = int(spec["count"])
    stopping = asyncio.Event()
    watcher = await db.create_pool(loaded.database_url.reveal(), max_size=1)
    try:
        started, cpu_started = time.perf_counter(), services.cpu_s()
        daemon = asyncio.create_task(
            service.run(loaded, components=_components, stopping=stopping, grace_s=10)
        )
        await _wait_confirmed(watcher, count, daemon)
        elapsed_s = time.perf_counter() - started
        cpu_used_s = services.cpu_s() - cpu_started
        stopping.set()
        await daemon
    finally:
        await watcher.close()
    return {
        "elapsed_s": elapsed_s,
        "cpu_s": cpu_used_s,
        "peak_rss_mb": services.peak_rss_mb(),
    }


async def _wait_confirmed(
    pool: db.Pool, count: int, daemon: asyncio.Task[None]
) -> None:
    while not daemon.done():
        confirmed = await pool.fetchval(
            "SELECT count(*) FROM intents WHERE status = 'confirmed'"
        )
        if confirmed >= count:
            return
        await asyncio.sleep(POLL_S)
    daemon.result()
    raise services.WorkerError("the daemon stopped before every intent confirmed")


def presign(spec: Mapping[str, Any], first_nonce: int) -> list[bytes]:
    """Sign ``count`` mintReward transactions like the submitter's, in nonce order."""
    wallet = ChecksumAddress(spec["wallet"])
    signed = []
    for number in range(int(spec["count"])):
        intent_id = IntentId(keccak(text=f"bench:baseline:{number}"))
        tx = {
            "type": 2,
            "chainId": int(spec["chain_id"]),
            "nonce": first_nonce + number,
            "to": spec["token_address"],
            "value": 0,
            "gas": GAS,
            "maxFeePerGas": MAX_FEE_WEI,
            "maxPriorityFeePerGas": TIP_WEI,
            "data": token.mint_reward_data(wallet, Wei(10**18), intent_id),
            "accessList": [],
        }
        raw = Account.sign_transaction(tx, spec["key"]).raw_transaction
        signed.append(bytes(raw))
    return signed


async def mint_with_baseline(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Send pre-signed mints, at most ``in_flight`` unmined, until all are mined.

    The bound is the daemon's own (``HAVEN_MAX_IN_FLIGHT``); it also keeps
    anvil's automine going, which stalls with a pool of thousands.
    """
    sender = Account.from_key(spec["key"]).address
    in_flight = int(spec["in_flight"])
    async with ChainClient([spec["rpc_url"]], chain_id=int(spec["chain_id"])) as chain:
        first_nonce = await chain.get_transaction_count(sender, "pending")
        signed = presign(spec, first_nonce)
        started, cpu_started = time.perf_counter(), services.cpu_s()
        hashes: list[str] = []
        for raw in signed:
            if len(hashes) >= in_flight:
                await _mined(chain, hashes[-in_flight])
            hashes.append(await chain.send_raw_transaction(raw))
        await _mined(chain, hashes[-1])
        elapsed_s = time.perf_counter() - started
        cpu_used_s = services.cpu_s() - cpu_started
        mined = await chain.get_transaction_count(sender, "latest")
    if mined != first_nonce + len(signed):
        raise services.WorkerError(f"{mined - first_nonce} of {len(signed)} mined")
    return {
        "elapsed_s": elapsed_s,
        "cpu_s": cpu_used_s,
        "peak_rss_mb": services.peak_rss_mb(),
    }


async def _mined(chain: ChainClient, tx_hash: str) -> None:
    # anvil mines asynchronously and pushes nothing over HTTP: poll.
    while await chain.get_receipt(tx_hash) is None:  # noqa: ASYNC110
        await asyncio.sleep(RECEIPT_POLL_S)


async def main(spec: Mapping[str, Any]) -> dict[str, Any]:
    if spec["mode"] == DAEMON:
        return await mint_with_daemon(spec)
    return await mint_with_baseline(spec)


if __name__ == "__main__":
    # The loop of ``haven run``.
    services.answer(uvloop.run(main(services.read_spec())))
