"""The crash matrix: the submitter killed with SIGKILL at each step of the send path.

The submitter runs as a subprocess (tests/harness/submitter_runner.py) and
kills itself at an armed crash point (``HAVENTEST_CRASH_AT=<point>:<n>``, on
the n-th time it gets there, n drawn from a seeded generator). After every
crash a new process picks up where the dead one left. At the end every
intent must be minted exactly once on chain, the signer's nonce must have no
gap, and the database must agree with the chain.

Intents arrive a run at a time while the submitter works, as webhooks
bring them: a cycle takes whatever is ready, so with the whole batch ready
at once a few cycles would mint it all and leave later crash points, such
as the n-th round of receipts, nothing to reach. The last, uncrashed
process then gets a burst that brings the total to 200 intents. With
``HAVENTEST_FULL=1`` (``make test-full``) there are five crashes per point
and 1,000 intents. ``HAVENTEST_SEED`` replays a run's schedule; the seed is
printed on failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from harness import chainsetup
from harness.minting import Rig, wait_for
from harness.rpcproxy import running_proxy
from haven.daemon.submitter import CRASH_ENV
from haven.types import IntentId

FULL = os.environ.get("HAVENTEST_FULL") == "1"
INTENTS = 1000 if FULL else 200
MAX_INTENTS = 2 * INTENTS
CRASHES_PER_POINT = 5 if FULL else 1
# Intents added at a time whenever fewer are ready: one run's worth.
BATCH = 8
FEED_POLL_S = 0.02
POINTS = ("after_allocate", "after_commit", "after_send", "after_receipt")

pytestmark = pytest.mark.timeout(1500 if FULL else 180)


async def exit_code(
    process: subprocess.Popen[bytes], *, timeout_s: float
) -> int | None:
    """Return the process's exit code once it exits; None (and kill it) on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while process.poll() is None:
        if loop.time() > deadline:
            process.kill()
            process.wait()
            return None
        # Popen offers no awaitable exit; poll it.
        await asyncio.sleep(0.05)
    return process.returncode


async def stop(process: subprocess.Popen[bytes]) -> int | None:
    process.send_signal(signal.SIGTERM)
    return await exit_code(process, timeout_s=30)


async def receipts_recorded(rig: Rig) -> bool:
    """Every mint's transaction carries the receipt the submitter saw, in the DB."""
    for mint in await chainsetup.mints(rig.node, rig.token, rig.deploy_block):
        seen = {a.tx_hash: a for a in await rig.attempts_of(mint.intent_id)}
        attempt = seen.get(mint.tx_hash)
        if attempt is None or attempt.receipt_block != mint.block_number:
            return False
    return True


async def feed(rig: Rig, ids: list[IntentId], stopping: asyncio.Event) -> None:
    """Keep a run's worth of intents ready until stopped or MAX_INTENTS came."""
    while not stopping.is_set() and len(ids) < MAX_INTENTS:
        async with rig.pool.acquire() as connection:
            ready = await connection.fetchval(
                "SELECT count(*) FROM intents WHERE status = 'ready'"
            )
        if ready < BATCH:
            ids.extend(await rig.add_intents(BATCH))
        # The database pushes nothing on a status change: poll it.
        await asyncio.sleep(FEED_POLL_S)


async def test_killed_at_every_step_each_intent_is_minted_exactly_once(
    rig: Rig, tmp_path: Path
):
    seed = int(os.environ.get("HAVENTEST_SEED") or random.randrange(2**32))
    print(f"crash matrix: seed {seed}, up to {MAX_INTENTS} intents, log {tmp_path}")
    rng = random.Random(seed)
    log = tmp_path / "submitter.log"
    schedule = [point for point in POINTS for _ in range(CRASHES_PER_POINT)]
    rng.shuffle(schedule)
    ids: list[IntentId] = []
    stopping = asyncio.Event()
    feeding = asyncio.create_task(feed(rig, ids, stopping))
    try:
        for point in schedule:
            armed = f"{point}:{rng.randint(1, 4)}"
            process = rig.spawn(log, **{CRASH_ENV: armed})
            code = await exit_code(process, timeout_s=60)
            assert code == -signal.SIGKILL, f"{armed} never reached (seed {seed})"
    finally:
        stopping.set()
        await feeding

    ids.extend(await rig.add_intents(max(0, INTENTS - len(ids))))
    final = rig.spawn(log)
    try:
        await rig.wait_minted(ids, timeout_s=120)
        await wait_for(lambda: receipts_recorded(rig), what="receipts recorded")
    finally:
        assert await stop(final) == 0, f"clean stop failed (seed {seed})"

    await rig.assert_paid_once(ids)
    for intent_id in ids:
        # No crash makes the daemon sign an intent again at another nonce.
        # A replacement at the same nonce may happen: anvil's automine can
        # leave the last of a burst of sends pending until another
        # transaction arrives, and the submitter then bumps it as stuck.
        tried = await rig.attempts_of(intent_id)
        assert len({a.nonce for a in tried}) == 1, f"seed {seed}"


async def test_killed_between_a_bump_and_its_send_the_bump_is_superseded_not_lost(
    rig: Rig, tmp_path: Path
):
    every = 3  # the default HAVEN_STUCK_AFTER_BLOCKS
    (intent_id,) = await rig.add_intents(1)
    log = tmp_path / "submitter.log"
    async with running_proxy(rig.node.url, replacement_rule=True) as proxy:
        proxy.hold_sends = True
        process = rig.spawn(log, rpc_url=proxy.url, **{CRASH_ENV: "after_bump"})
        # Blocks mined before the send is recorded would date it after them.
        await wait_for(lambda: first_send_recorded(rig, intent_id), what="a send")
        await rig.node.mine(every)
        assert await exit_code(process, timeout_s=60) == -signal.SIGKILL
        orphan = (await rig.attempts_of(intent_id))[-1]

        final = rig.spawn(log, rpc_url=proxy.url)
        try:
            await rig.node.mine(every)
            await wait_for(lambda: attempts_at_least(rig, intent_id, 3), what="rebump")
            await proxy.release_held()
            await rig.wait_minted([intent_id])
        finally:
            assert await stop(final) == 0

    tried = await rig.attempts_of(intent_id)
    assert orphan.sent_block is None and orphan.tx_hash in {a.tx_hash for a in tried}
    assert orphan.tx_hash not in {s.tx.tx_hash for s in proxy.sends}
    assert proxy.refused() == []
    (mint,) = await chainsetup.mints(rig.node, rig.token, rig.deploy_block)
    mined = next(a for a in tried if a.tx_hash == mint.tx_hash)
    assert mined.id > orphan.id
    assert mined.max_fee_wei * 8 >= orphan.max_fee_wei * 9


async def first_send_recorded(rig: Rig, intent_id: bytes) -> bool:
    tried = await rig.attempts_of(intent_id)
    return bool(tried) and tried[0].sent_block is not None


async def attempts_at_least(rig: Rig, intent_id: bytes, count: int) -> bool:
    return len(await rig.attempts_of(intent_id)) >= count
