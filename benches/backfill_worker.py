"""The indexing process of the backfill and reorg benchmarks.

``python -m benches.backfill_worker`` with a spec on stdin runs one of:

* ``tailer``   — the real :class:`~haven.daemon.tailer.Tailer` from the
  deployment block until its checkpoint reaches ``head``;
* ``baseline`` — raw ``eth_getLogs`` over the same blocks, in the tailer's
  largest range, and a binary ``COPY`` of the same rows.

Either answers the seconds it took, the events stored and this process's
peak resident memory.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import asyncpg
import orjson
import uvloop

from benches import services
from haven import db, logs, settings
from haven.chain import ChainClient
from haven.daemon import checkpoints, transfers
from haven.daemon.tailer import Tailer
from haven.token import REWARD_MINTED_TOPIC, TRANSFER_TOPIC
from haven.types import checksum

TAILER = "tailer"
BASELINE = "baseline"
CHECKPOINT_POLL_S = 0.01
RPC_TIMEOUT_S = 120.0


def tailer_settings(spec: Mapping[str, Any]) -> settings.Settings:
    """Settings of a production-like tailer on the spec's database and node."""
    return settings.load(
        {},
        overrides={
            "database_url": spec["database_url"],
            "rpc_url": [spec["rpc_url"]],
            "chain_id": spec["chain_id"],
            "token_address": spec["token_address"],
            "start_block": spec["start_block"],
            "log_format": "json",
        },
        require=("database_url", "rpc_url", "chain_id"),
    )


async def index_with_tailer(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run the real tailer until its checkpoint is at ``head``; time it."""
    loaded = tailer_settings(spec)
    logs.configure(loaded, process="daemon")
    pool = await db.create_pool(loaded.database_url.reveal(), max_size=8)
    chain = ChainClient(loaded.rpc_url, chain_id=loaded.chain_id)
    stopping = asyncio.Event()
    try:
        started_rss_mb = services.peak_rss_mb()
        started = time.perf_counter()
        tailer = Tailer(loaded, pool, chain)
        task = asyncio.create_task(tailer.run(stopping), name="tailer")
        await _wait_checkpoint(pool, int(spec["head"]), task)
        elapsed_s = time.perf_counter() - started
        stopping.set()
        await task
        events = await _stored_events(pool)
    finally:
        await chain.close()
        await pool.close()
    return {
        "elapsed_s": elapsed_s,
        "events": events,
        "peak_rss_mb": services.peak_rss_mb(),
        "started_rss_mb": started_rss_mb,
    }


async def _wait_checkpoint(pool: db.Pool, head: int, task: asyncio.Task[None]) -> None:
    while not task.done():
        async with pool.acquire() as connection:
            found = await checkpoints.load(connection, "hnv")
        if found is not None and found.block_number >= head:
            return
        await asyncio.sleep(CHECKPOINT_POLL_S)
    raise services.WorkerError("the tailer stopped before reaching the head")


async def _stored_events(pool: db.Pool) -> int:
    async with pool.acquire() as connection:
        count: int = await connection.fetchval(
            "SELECT (SELECT count(*) FROM token_transfers)"
            " + (SELECT count(*) FROM reward_mints)"
        )
    return count


@functools.lru_cache(maxsize=1 << 16)
def _address(topic: str) -> str:
    return checksum("0x" + topic[-40:])


def rows_of(
    found: list[dict[str, Any]],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Return the token_transfers and reward_mints rows of raw HNV logs."""
    moves, mints = [], []
    for log in found:
        topics = log["topics"]
        key = (
            bytes.fromhex(log["blockHash"][2:]),
            int(log["logIndex"], 16),
            int(log["blockNumber"], 16),
            bytes.fromhex(log["transactionHash"][2:]),
        )
        amount_wei = int(log["data"], 16)
        if topics[0] == TRANSFER_TOPIC:
            moves.append((*key, _address(topics[1]), _address(topics[2]), amount_wei))
        elif topics[0] == REWARD_MINTED_TOPIC:
            intent_id = bytes.fromhex(topics[1][2:])
            mints.append(
                (*key, intent_id, _address(topics[2]), amount_wei, _address(topics[3]))
            )
    return moves, mints


async def index_with_baseline(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Read the same logs with raw eth_getLogs and COPY the same rows; time it."""
    connection = await asyncpg.connect(spec["database_url"])
    timeout = aiohttp.ClientTimeout(total=RPC_TIMEOUT_S)
    events = 0
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            range_blocks = tailer_settings(spec).log_range_max_blocks
            started_rss_mb = services.peak_rss_mb()
            started = time.perf_counter()
            first, head = int(spec["start_block"]), int(spec["head"])
            while first <= head:
                last = min(head, first + range_blocks - 1)
                found = await _get_logs(session, spec, first, last)
                events += await copy_rows(connection, found)
                first = last + 1
            elapsed_s = time.perf_counter() - started
    finally:
        await connection.close()
    return {
        "elapsed_s": elapsed_s,
        "events": events,
        "peak_rss_mb": services.peak_rss_mb(),
        "started_rss_mb": started_rss_mb,
    }


async def _get_logs(
    session: aiohttp.ClientSession, spec: Mapping[str, Any], first: int, last: int
) -> list[dict[str, Any]]:
    query = {
        "address": spec["token_address"],
        "fromBlock": hex(first),
        "toBlock": hex(last),
        "topics": [[TRANSFER_TOPIC, REWARD_MINTED_TOPIC]],
    }
    payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [query]}
    async with session.post(
        spec["rpc_url"],
        data=orjson.dumps(payload),
        headers={"Content-Type": "application/json"},
    ) as response:
        body = orjson.loads(await response.read())
    found: list[dict[str, Any]] = body["result"]
    return found


async def copy_rows(connection: asyncpg.Connection, found: list[dict[str, Any]]) -> int:
    """COPY the rows of raw logs in one transaction; return how many."""
    moves, mints = rows_of(found)
    async with connection.transaction():
        if moves:
            await connection.copy_records_to_table(
                "token_transfers", columns=transfers.TRANSFER_COLUMNS, records=moves
            )
        if mints:
            await connection.copy_records_to_table(
                "reward_mints", columns=transfers.MINT_COLUMNS, records=mints
            )
    return len(moves) + len(mints)


async def main(spec: Mapping[str, Any]) -> dict[str, Any]:
    if spec["mode"] == TAILER:
        return await index_with_tailer(spec)
    return await index_with_baseline(spec)


if __name__ == "__main__":
    # The loop of ``haven run``.
    services.answer(uvloop.run(main(services.read_spec())))
