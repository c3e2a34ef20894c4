"""backfill: HNV Transfer events indexed per second by the real tailer.

A chain of ``events`` transfers, ``PER_BLOCK`` to a block among
``RECIPIENTS`` holders, is indexed from the deployment block into a fresh
database twice, each in its own process: by raw ``eth_getLogs`` and a
binary ``COPY`` of the same rows (the baseline), then by the real Tailer.
"""

from __future__ import annotations

import math

from benches import chainfill, services
from benches.backfill_worker import BASELINE, TAILER
from benches.context import Context
from benches.figures import Check, Figure

NAME = "backfill"
FULL_EVENTS = 200_000
PER_BLOCK = 200
RECIPIENTS = 10_000
WORKER_TIMEOUT_S = 900.0
HOLDER_HNV_WEI = 10**30


async def measure(context: Context) -> Figure:
    """Fill a chain, index it both ways, and return the figure."""
    transfers = context.size(FULL_EVENTS, minimum=2_000)
    async with services.running_anvil() as node:
        hnv = await chainfill.deploy(node)
        await chainfill.endow(node, hnv, chainfill.SENDERS, HOLDER_HNV_WEI)
        blocks = await chainfill.fill(
            node,
            hnv,
            transfers=transfers,
            per_block=PER_BLOCK,
            recipients=min(RECIPIENTS, transfers),
        )
        spec = {
            "rpc_url": node.url,
            "chain_id": node.chain_id,
            "token_address": hnv.address,
            "start_block": hnv.deploy_block,
            "head": await node.block_number(),
        }
        async with context.databases.fresh() as dsn:
            baseline = await services.run_worker(
                "backfill_worker",
                {**spec, "mode": BASELINE, "database_url": dsn},
                timeout_s=WORKER_TIMEOUT_S,
            )
        async with context.databases.fresh() as dsn:
            tailer = await services.run_worker(
                "backfill_worker",
                {**spec, "mode": TAILER, "database_url": dsn},
                timeout_s=WORKER_TIMEOUT_S,
            )

    if tailer["events"] != baseline["events"]:
        raise AssertionError(
            f"tailer stored {tailer['events']} events, baseline {baseline['events']}"
        )
    measured = tailer["events"] / tailer["elapsed_s"]
    reference = baseline["events"] / baseline["elapsed_s"]
    return Figure(
        name=NAME,
        unit="events/s",
        measured=measured,
        baseline=reference,
        checks=(
            Check("ratio", ">=", 0.7, measured / reference),
            Check("events_per_s", ">=", 20_000, measured),
            Check("peak_rss_mb", "<", 300, tailer["peak_rss_mb"]),
        ),
        sizes={
            "events": tailer["events"],
            "transfers": transfers,
            "blocks": blocks,
            "events_per_block": PER_BLOCK,
            "recipients": min(RECIPIENTS, transfers),
        },
        details={
            "tailer": _summary(tailer),
            "baseline": _summary(baseline),
            "chain_blocks": math.ceil(transfers / PER_BLOCK) + len(chainfill.SENDERS),
        },
    )


def _summary(run: dict[str, float]) -> dict[str, float]:
    return {
        "elapsed_s": round(run["elapsed_s"], 3),
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
        "started_rss_mb": round(run["started_rss_mb"], 1),
    }
