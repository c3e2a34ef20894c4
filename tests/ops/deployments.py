"""A deployment under test: HNV on anvil, a funded signer, intents, the witness.

The chain is the witness of every money test here: RewardMinted logs are
counted per intent id straight from the node, never from our own tables.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg
from eth_utils import keccak
from ops.processes import haven_environ

from harness.anvil import DEV_KEYS, AnvilNode
from haven import db, deploy, intents, settings, token
from haven.types import ChecksumAddress, IntentId, Wei, checksum

FUND_WEI = 10 * 10**18


async def deployed_environ(
    database_url: str,
    redis_prefix: str,
    node: AnvilNode,
    *,
    signers: int = 1,
    **extra: str,
) -> dict[str, str]:
    """Deploy HNV and ``signers`` funded minters; return the deployment's settings."""
    environ = haven_environ(
        database_url,
        redis_prefix,
        HAVEN_RPC_URL=node.url,
        HAVEN_CHAIN_ID=str(node.chain_id),
        HAVEN_CONFIRMATIONS="2",
        HAVEN_POLL_INTERVAL_MS="100",
        HAVEN_DEPLOYER_KEY=DEV_KEYS[0],
        **extra,
    )
    deployed = await deploy.deploy(
        settings.load(environ), fund_wei=Wei(FUND_WEI), signers=signers
    )
    return environ | {
        "HAVEN_TOKEN_ADDRESS": deployed.token_address,
        "HAVEN_START_BLOCK": str(deployed.deploy_block),
    }


def wallet_of(source_key: str) -> ChecksumAddress:
    """Return a wallet derived from ``source_key``: the same on every replay."""
    return checksum("0x" + keccak(text=f"wallet:{source_key}")[:20].hex())


async def seed_ready_intents(dsn: str, count: int, *, prefix: str) -> list[IntentId]:
    """Insert ``count`` ready intents; return their ids.

    Deterministic in ``prefix``: seeding the same prefix again is a partner
    replaying the same events, and yields the same intents.
    """
    pool = await db.create_pool(dsn, max_size=2)
    created = []
    try:
        async with db.transaction(pool) as connection:
            for index in range(count):
                source_key = f"{prefix}-{index}"
                intent, _ = await intents.create(
                    connection,
                    partner="aurora",
                    kind="booking",
                    source_key=source_key,
                    wallet=wallet_of(source_key),
                    amount_wei=Wei(10**18 + index),
                    rule_version="ops-test",
                    status=intents.READY,
                )
                created.append(intent.id)
    finally:
        await pool.close()
    return created


async def statuses(dsn: str) -> Counter[str]:
    """Return how many intents are in each status."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT status, count(*) AS n FROM intents GROUP BY status"
        )
    finally:
        await connection.close()
    return Counter({row["status"]: row["n"] for row in rows})


async def mints_per_intent(node: AnvilNode, token_address: str) -> Counter[bytes]:
    """Count RewardMinted logs per intent id, as the chain has them."""
    logs = await node.rpc(
        "eth_getLogs",
        [
            {
                "address": token_address,
                "fromBlock": "0x0",
                "toBlock": "latest",
                "topics": [token.REWARD_MINTED_TOPIC],
            }
        ],
    )
    return Counter(bytes.fromhex(log["topics"][1][2:]) for log in logs)


async def wait_confirmed(
    dsn: str, expected: int, node: AnvilNode, timeout_s: float
) -> None:
    """Mine blocks until ``expected`` intents are confirmed; fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await statuses(dsn)
        if found[intents.CONFIRMED] >= expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{expected} confirmed intents expected within {timeout_s} s, "
                f"found {dict(found)}"
            )
        # Confirmations need blocks; an automining chain only makes them
        # when something is sent.
        await node.mine(1)
        await asyncio.sleep(0.1)
