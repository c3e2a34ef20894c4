"""mint: intents taken from ready to confirmed per second by the real daemon.

Two fresh anvil nodes with HNV deployed the same way. On one, the daemon
(Submitter and Tailer, in their own process) signs, sends and follows
``count`` ready intents until the database says every one is confirmed;
on the other, a loop sends the same number of pre-signed ``mintReward``
transactions, no more unmined at once than the daemon's ``max_in_flight``,
and waits for the last receipt. Confirmation depth is 1 (a
mined and indexed mint counts), since automine makes no blocks but ours.

anvil 1.7.1's automine now and then parks a transaction as queued for
good, and with it every later one of the sender (see
:meth:`harness.anvil.AnvilNode.stalled`); a node of a real network would
mine it at its next block. Both sides run under the same watch, which
sends such transactions back after a second of standing still, and the
details say how many each side needed (``stalls_released``); the time lost
stays in the figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet
from eth_account import Account

from benches import chainfill, services
from benches.context import Context
from benches.figures import Check, Figure
from benches.mint_worker import BASELINE, DAEMON
from harness import chainsetup
from harness.anvil import DEV_KEYS, releasing_stalls
from harness.minting import GUEST, daemon_env
from haven import db, intents, settings
from haven.daemon import custody
from haven.types import Wei, checksum

NAME = "mint"
FULL_INTENTS = 2_000
POLL_INTERVAL_MS = 100
# The daemon's default HAVEN_MAX_IN_FLIGHT, set explicitly for both sides.
MAX_IN_FLIGHT = 16
SIGNER_FUNDS_WEI = 1_000 * 10**18
WORKER_TIMEOUT_S = 600.0
BASELINE_KEY = DEV_KEYS[2]


async def _daemon_run(context: Context, count: int) -> dict[str, Any]:
    async with services.running_anvil() as node, context.databases.fresh() as dsn:
        hnv = await chainfill.deploy(node)
        environ = daemon_env(
            dsn,
            master_key=Fernet.generate_key().decode(),
            rpc_url=node.url,
            token_address=hnv.address,
            start_block=hnv.deploy_block,
            poll_interval_ms=POLL_INTERVAL_MS,
            max_in_flight=MAX_IN_FLIGHT,
            log_format="json",
        )
        loaded = settings.load(environ)
        pool = await db.create_pool(dsn, max_size=2)
        try:
            signer = await custody.create_signer(pool, loaded)
            await chainsetup.fund(node, signer, SIGNER_FUNDS_WEI)
            await chainsetup.grant_minter(node, hnv.address, signer)
            await _ready_intents(pool, count)
            async with releasing_stalls(node) as released:
                run = await services.run_worker(
                    "mint_worker",
                    {"mode": DAEMON, "environ": environ, "count": count},
                    timeout_s=WORKER_TIMEOUT_S,
                )
            minted = len(await chainsetup.mints(node, hnv.address, hnv.deploy_block))
        finally:
            await pool.close()
    if minted != count:
        raise AssertionError(f"{minted} mints on chain for {count} intents")
    return {**run, "stalls_released": released}


async def _ready_intents(pool: db.Pool, count: int) -> None:
    async with db.transaction(pool) as connection:
        for number in range(count):
            await intents.create(
                connection,
                partner="aurora",
                kind="booking",
                source_key=f"BENCH-{number:07d}",
                wallet=GUEST,
                amount_wei=Wei(10**18),
                rule_version="bench-1",
                status=intents.READY,
            )


async def _baseline_run(count: int) -> dict[str, Any]:
    async with services.running_anvil() as node:
        hnv = await chainfill.deploy(node)
        minter = checksum(Account.from_key(BASELINE_KEY).address)
        await chainsetup.grant_minter(node, hnv.address, minter)
        spec = {
            "mode": BASELINE,
            "rpc_url": node.url,
            "chain_id": node.chain_id,
            "token_address": hnv.address,
            "key": BASELINE_KEY,
            "wallet": GUEST,
            "count": count,
            "in_flight": MAX_IN_FLIGHT,
        }
        async with releasing_stalls(node) as released:
            run = await services.run_worker(
                "mint_worker", spec, timeout_s=WORKER_TIMEOUT_S
            )
    return {**run, "stalls_released": released}


async def measure(context: Context) -> Figure:
    """Mint with the daemon and with the baseline loop; return the figure."""
    count = context.size(FULL_INTENTS, minimum=20)
    baseline = await _baseline_run(count)
    daemon = await _daemon_run(context, count)
    measured = count / daemon["elapsed_s"]
    reference = count / baseline["elapsed_s"]
    return Figure(
        name=NAME,
        unit="mints/s",
        measured=measured,
        baseline=reference,
        checks=(Check("ratio", ">=", 0.5, measured / reference),),
        sizes={
            "intents": count,
            "signers": 1,
            "confirmations": 1,
            "poll_interval_ms": POLL_INTERVAL_MS,
            "max_in_flight": MAX_IN_FLIGHT,
        },
        details={"daemon": _summary(daemon), "baseline": _summary(baseline)},
    )


def _summary(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "elapsed_s": round(run["elapsed_s"], 3),
        "cpu_s": round(run["cpu_s"], 3),
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
        "stalls_released": run["stalls_released"],
    }
