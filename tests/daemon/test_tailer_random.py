"""A seeded random mix of mints, transfers, burns, reorgs, restarts and RPC
faults; after it settles, the index must equal the chain and every intent
must be confirmed on its canonical mint.

The default run is short. ``HAVENTEST_FULL=1`` runs many more and longer
scenarios; ``HAVENTEST_SEED=<n>`` replays one (its seed is printed when it
fails).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from eth_utils.crypto import keccak

from harness.anvil import AnvilNode
from harness.faultproxy import (
    RANGE_WORDINGS,
    RESULT_WORDINGS,
    FaultProxy,
    running_proxy,
)
from harness.tailkit import (
    HOLDER_KEYS,
    HOLDERS,
    OUR_KEY,
    ROGUE_KEY,
    Hnv,
    SignedTx,
    TailerTask,
    assert_index_matches_chain,
    burn_data,
    deploy_hnv,
    fast_options,
    nonce_of,
    one_block,
    rebroadcast,
    receipt,
    reorg,
    sign,
    submit_intent,
    tailer_settings,
    transfer_data,
    wait_settled,
)
from haven import db, intents, token
from haven.daemon import alerts_outbox, attempts, confirmations
from haven.types import IntentId, Wei, intent_id_hex

FULL = os.environ.get("HAVENTEST_FULL") == "1"
RUNS = 12 if FULL else 2
STEPS = 60 if FULL else 20
CONFIRMATIONS = 3
FINALITY = 8
HNV = 10**18

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900 if FULL else 120)]


@dataclass
class World:
    """What the scenario did, to put lost transactions back and to check."""

    rng: random.Random
    anvil: AnvilNode
    hnv: Hnv
    pool: db.Pool
    proxies: list[FaultProxy]
    ours: dict[IntentId, SignedTx] = field(default_factory=dict)
    reorgs: int = 0
    restarts: int = 0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    pool = await db.create_pool(database_url, max_size=8)
    yield pool
    await pool.close()


def base_seed() -> int:
    fixed = os.environ.get("HAVENTEST_SEED")
    return int(fixed) if fixed else random.randrange(2**32)


@pytest.mark.parametrize("run", range(RUNS))
async def test_random_reorgs_restarts_and_faults_leave_the_index_equal_to_the_chain(
    anvil: AnvilNode, pool: db.Pool, database_url: str, run: int
) -> None:
    seed = base_seed() + run
    try:
        await scenario(seed, anvil, pool, database_url)
    except BaseException:
        print(f"randomised tailer run failed: replay with HAVENTEST_SEED={seed}")
        raise


async def scenario(
    seed: int, anvil: AnvilNode, pool: db.Pool, database_url: str
) -> None:
    rng = random.Random(seed)
    hnv = await deploy_hnv(anvil)
    await anvil.mine(20)
    async with (
        running_proxy(anvil.url, seed=seed) as first,
        running_proxy(anvil.url, seed=seed + 1) as second,
    ):
        world = World(rng, anvil, hnv, pool, [first, second])
        config = tailer_settings(
            database_url,
            [first.url, second.url],
            hnv,
            confirmations=CONFIRMATIONS,
            finality_depth=FINALITY,
            rpc_timeout_s=0.5,
            log_range_max_blocks=rng.choice([8, 64, 2000]),
        )
        tailer = TailerTask(config, pool, fast_options())
        tailer.start()
        for step in range(STEPS):
            action = rng.choices(ACTIONS, weights=[w for _, w in ACTIONS])[0][0]
            await action(world, step)
            if rng.random() < 0.3:
                await tailer.cancel()
                tailer.start()
                world.restarts += 1
            # A random pause lets the tailer run between chain changes.
            await asyncio.sleep(rng.uniform(0, 0.15))

        for proxy in world.proxies:
            proxy.clear()
        await rebroadcast(anvil, list(world.ours.values()))
        await anvil.mine(CONFIRMATIONS + 1)
        await wait_settled(pool, anvil, timeout_s=60)
        assert tailer.task is not None and not tailer.task.done()
        await tailer.stop()

    await assert_index_matches_chain(pool, anvil, hnv)
    undone = await assert_intents_settled(world)
    served = sum((p.stats.served for p in world.proxies), Counter[str]())
    print(
        f"seed {seed}: {len(world.ours)} mints, {world.reorgs} reorgs, "
        f"{world.restarts} restarts, {undone} mints undone, "
        f"faults served {dict(served)}"
    )


async def assert_intents_settled(world: World) -> int:
    """Check every intent is confirmed on its mint; return how many were undone."""
    undone = 0
    async with world.pool.acquire() as connection:
        for intent_id, tx in world.ours.items():
            found = await receipt(world.anvil, tx.tx_hash)
            intent = await intents.get(connection, intent_id)
            assert intent is not None
            assert intent.status == intents.CONFIRMED, intent_id_hex(intent_id)
            assert intent.block_hash == bytes.fromhex(found["blockHash"][2:])
            tries = await attempts.for_intent(connection, intent_id)
            assert [a.status for a in tries] == [attempts.MINED]

            history = await intents.history(connection, intent_id)
            unconfirmed = any(
                (h["from_status"], h["to_status"])
                == (intents.CONFIRMED, intents.SUBMITTED)
                for h in history
            )
            alerts = await alerts_outbox.find(
                connection,
                rule=confirmations.UNCONFIRMED_RULE,
                subject=intent_id_hex(intent_id),
            )
            assert bool(alerts) == unconfirmed
            undone += sum(h["to_status"] == intents.SUBMITTED for h in history[2:])
    return undone


# --- actions ------------------------------------------------------------------


async def mint(world: World, step: int) -> None:
    count = world.rng.randint(1, 3)
    together = world.rng.random() < 0.5
    if together:
        async with one_block(world.anvil):
            for i in range(count):
                await _mint_one(world, f"{step}-{i}", wait=False)
    else:
        for i in range(count):
            await _mint_one(world, f"{step}-{i}", wait=True)


async def _mint_one(world: World, key: str, *, wait: bool) -> None:
    intent_id, tx = await submit_intent(
        world.pool,
        world.anvil,
        world.hnv,
        source_key=f"random-{key}",
        wallet=world.rng.choice(HOLDERS),
        amount_wei=world.rng.randint(1, 50) * HNV // 10,
        wait=wait,
    )
    world.ours[intent_id] = tx


async def move(world: World, step: int) -> None:
    sender = world.rng.randrange(len(HOLDER_KEYS))
    if world.rng.random() < 0.3:
        data = burn_data(world.rng.randint(1, 10) * HNV // 100)
    else:
        receiver = world.rng.choice(HOLDERS)
        data = transfer_data(receiver, world.rng.randint(1, 10) * HNV // 100)
    key = HOLDER_KEYS[sender]
    # May revert for want of balance: then it logs nothing, which is fine.
    tx = sign(key, await nonce_of(world.anvil, key), world.hnv.address, data)
    await world.anvil.rpc("eth_sendRawTransaction", [tx.raw])
    await receipt(world.anvil, tx.tx_hash)


async def mine(world: World, step: int) -> None:
    await world.anvil.mine(world.rng.randint(1, 12))


async def fork(world: World, step: int) -> None:
    head = await world.anvil.block_number()
    deepest = min(head - world.hnv.deploy_block - 4, 2 * CONFIRMATIONS)
    if world.rng.random() < 0.15:
        deepest = min(head - world.hnv.deploy_block - 4, FINALITY + 2)
    if deepest < 1:
        return
    depth = world.rng.randint(1, deepest)
    fork_block = head - depth
    branch = await _branch(world, fork_block, depth)
    await reorg(world.anvil, depth, branch)
    world.reorgs += 1
    # The submitter's part: whatever of ours was lost goes back, in order.
    await rebroadcast(world.anvil, list(world.ours.values()))
    for tx in list(world.ours.values()):
        await receipt(world.anvil, tx.tx_hash)


async def _branch(
    world: World, fork_block: int, depth: int
) -> list[tuple[SignedTx, int]]:
    rng = world.rng
    rogue_nonce = await nonce_of(world.anvil, ROGUE_KEY, hex(fork_block))
    # An empty block rebuilt with nothing in it keeps its hash: a payment of
    # a random amount makes the first block of the branch a new one.
    marker = sign(
        ROGUE_KEY, rogue_nonce, HOLDERS[0], b"", 21_000, rng.randint(1, 10**9)
    )
    branch: list[tuple[SignedTx, int]] = [(marker, 0)]
    if rng.random() < 0.6:
        rogue = sign(
            ROGUE_KEY,
            rogue_nonce + 1,
            world.hnv.address,
            token.mint_reward_data(
                rng.choice(HOLDERS),
                Wei(rng.randint(1, 9) * HNV),
                IntentId(keccak(text=f"rogue-{rng.random()}")),
            ),
        )
        branch.append((rogue, rng.randrange(depth)))
    if rng.random() < 0.5:
        # Some of our lost mints land again, in nonce order, on the new branch.
        fork_nonce = await nonce_of(world.anvil, OUR_KEY, hex(fork_block))
        lost = sorted(
            (tx for tx in world.ours.values() if tx.nonce >= fork_nonce),
            key=lambda tx: tx.nonce,
        )
        kept = lost[: rng.randint(0, len(lost))]
        offsets = sorted(rng.randrange(depth) for _ in kept)
        branch.extend(zip(kept, offsets, strict=True))
    return branch


async def fault(world: World, step: int) -> None:
    rng = world.rng
    proxy = rng.choice(world.proxies)
    choice = rng.randrange(8)
    if choice == 0:
        proxy.clear()
    elif choice == 1:
        proxy.faults.range_cap = rng.randint(3, 40)
        proxy.faults.range_wording = rng.choice(sorted(RANGE_WORDINGS))
    elif choice == 2:
        proxy.faults.result_cap = rng.randint(2, 6)
        proxy.faults.result_wording = rng.choice(sorted(RESULT_WORDINGS))
    elif choice == 3:
        proxy.faults.lag_blocks = rng.randint(1, 6)
    elif choice == 4:
        proxy.faults.empty_logs_newest = rng.randint(1, 4)
    elif choice == 5:
        proxy.faults.hang_rate = 0.05
        proxy.faults.hang_s = 1.0
    elif choice == 6:
        proxy.faults.drop_rate = 0.2
    else:
        proxy.faults.frozen_head = await world.anvil.block_number()


ACTIONS = [(mint, 4), (move, 2), (mine, 3), (fork, 3), (fault, 3)]
