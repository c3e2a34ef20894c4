"""reorg: seconds for the real tailer to roll back and re-index a 64-block reorg.

A chain of ``HISTORY_BLOCKS`` blocks of transfers is indexed by a Tailer
driven step by step in this process. ``anvil_reorg`` then replaces the
newest 64 blocks with as many blocks of other transfers, and the clock runs
from there until the tailer's step says it is caught up again; the index
is then compared with ``eth_getLogs`` over the whole chain. The baseline
does the same physical work with no checks: delete the rows above the fork,
read the new blocks' logs in one call and COPY them.

64 is also the default finality depth, so the run raises the tailer's
``reorg_beyond_finality`` alert as production would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from benches import chainfill, services
from benches.backfill_worker import copy_rows, tailer_settings
from benches.context import Context
from benches.figures import Check, Figure
from harness.anvil import DEV_ADDRESSES
from harness.tailkit import Hnv, assert_index_matches_chain
from haven import db
from haven.chain import ChainClient
from haven.daemon.tailer import Tailer

NAME = "reorg"
DEPTH = 64
HISTORY_BLOCKS = 256
FULL_EVENTS_PER_BLOCK = 50
MAX_STEPS = 100
HOLDER_HNV_WEI = 10**30
# The history is sent by one holder, the replacement blocks by another,
# whose nonces the reorg does not roll back.
HISTORY_SENDER = DEV_ADDRESSES[1]
REORG_SENDER = DEV_ADDRESSES[2]


async def _catch_up(tailer: Tailer) -> int:
    """Step the tailer until it says nothing is waiting; return the steps taken."""
    for steps in range(1, MAX_STEPS + 1):
        if not await tailer.step():
            return steps
    raise AssertionError(f"the tailer was not caught up after {MAX_STEPS} steps")


async def _reorg(
    node: services.AnvilNode, hnv: chainfill.Token, per_block: int
) -> None:
    head = await node.block_number()
    before = await node.rpc("eth_getBlockByNumber", [hex(head - DEPTH + 1), False])
    nonce = int(await node.rpc("eth_getTransactionCount", [REORG_SENDER, "latest"]), 16)
    replacements: list[list[Any]] = []
    for offset in range(DEPTH):
        for number in range(per_block):
            tx = {
                "from": REORG_SENDER,
                "to": hnv.address,
                "data": chainfill.transfer_data(
                    chainfill.recipient(offset * per_block + number), 7
                ),
                "gas": hex(chainfill.TRANSFER_GAS),
                "nonce": hex(nonce),
                "maxFeePerGas": hex(chainfill.MAX_FEE_WEI),
                "maxPriorityFeePerGas": hex(chainfill.TIP_WEI),
            }
            replacements.append([tx, offset])
            nonce += 1
    await node.rpc("anvil_reorg", [DEPTH, replacements])
    after = await node.rpc("eth_getBlockByNumber", [hex(head - DEPTH + 1), False])
    if after["hash"] == before["hash"] or await node.block_number() != head:
        raise AssertionError("anvil_reorg did not replace the newest blocks")


async def _baseline(dsn: str, node: services.AnvilNode, hnv: chainfill.Token) -> float:
    head = await node.block_number()
    fork = head - DEPTH
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        async with connection.transaction():
            await connection.execute(
                "DELETE FROM token_transfers WHERE block_number > $1", fork
            )
            found = await chainfill.logs(node, hnv, fork + 1, head)
            await copy_rows(connection, found)
        elapsed_s = time.perf_counter() - started
    finally:
        await connection.close()
    return elapsed_s


async def measure(context: Context) -> Figure:
    """Index a chain, reorganise it, time the repair; return the figure."""
    per_block = context.size(FULL_EVENTS_PER_BLOCK, minimum=2)
    async with services.running_anvil() as node, context.databases.fresh() as dsn:
        hnv = await chainfill.deploy(node)
        await chainfill.endow(node, hnv, (HISTORY_SENDER, REORG_SENDER), HOLDER_HNV_WEI)
        await chainfill.fill(
            node,
            hnv,
            transfers=HISTORY_BLOCKS * per_block,
            per_block=per_block,
            recipients=HISTORY_BLOCKS * per_block,
            senders=(HISTORY_SENDER,),
        )
        measured_s, steps = await _time_tailer(dsn, node, hnv, per_block)
        baseline_s = await _baseline(dsn, node, hnv)

    return Figure(
        name=NAME,
        unit="seconds",
        measured=measured_s,
        baseline=baseline_s,
        checks=(Check("seconds", "<", 1, measured_s),),
        sizes={
            "depth": DEPTH,
            "history_blocks": HISTORY_BLOCKS,
            "events_per_block": per_block,
            "reorged_events": DEPTH * per_block,
        },
        details={"tailer_steps": steps},
    )


async def _time_tailer(
    dsn: str, node: services.AnvilNode, hnv: chainfill.Token, per_block: int
) -> tuple[float, int]:
    spec = {
        "database_url": dsn,
        "rpc_url": node.url,
        "chain_id": node.chain_id,
        "token_address": hnv.address,
        "start_block": hnv.deploy_block,
    }
    loaded = tailer_settings(spec)
    pool = await db.create_pool(dsn, max_size=8)
    chain = ChainClient(loaded.rpc_url, chain_id=loaded.chain_id)
    tailer = Tailer(loaded, pool, chain)
    try:
        await _catch_up(tailer)
        await _reorg(node, hnv, per_block)
        started = time.perf_counter()
        steps = await _catch_up(tailer)
        elapsed_s = time.perf_counter() - started
        await assert_index_matches_chain(
            pool, node, Hnv(address=hnv.address, deploy_block=hnv.deploy_block)
        )
    finally:
        await _close(tailer)
        await chain.close()
        await pool.close()
    return elapsed_s, steps


async def _close(tailer: Tailer) -> None:
    # run() with the stop already set returns at once and closes the
    # tailer's own clients on its way out.
    stopped = asyncio.Event()
    stopped.set()
    await tailer.run(stopped)
