"""reconcile: a full reconciliation run over a big book, in seconds.

A fresh database is filled with ``generate_series``: ``rows`` confirmed
intents (each with its history event), the same number of RewardMinted
rows matching them one to one, and as many mint Transfers. On chain, one
mint of the same total makes the token's supply agree, and the tail
checkpoint stands at the head. The reconciler's own ``runs.compute`` is
timed against one SQL join that matches the mints to the intents. The
details also time ``haven report``'s work on the same book (a run, stored,
and the report over its last 30 days), which is not part of the ratio.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
from eth_utils.crypto import keccak

from benches import chainfill, services
from benches.context import Context
from benches.figures import Check, Figure
from harness import chainsetup
from haven import db, settings, token
from haven.chain import ChainClient
from haven.reconciler import reports, runs
from haven.reconciler.config import ReconcilerConfig
from haven.types import ChecksumAddress, IntentId, Wei, checksum

NAME = "reconcile"
FULL_ROWS = 1_000_000
# Guests earn many rewards each: one wallet per this many intents.
INTENTS_PER_WALLET = 10
AMOUNT_WEI = 1080 * 10**18
CHECKPOINT = "hnv"

BASELINE_JOIN = """
SELECT count(*) FILTER (WHERE m.amount_wei = i.amount_wei
                          AND m.to_address = i.wallet) AS matched,
       count(*) FILTER (WHERE i.id IS NULL OR m.intent_id IS NULL
                          OR m.amount_wei <> i.amount_wei
                          OR m.to_address <> i.wallet) AS unmatched,
       coalesce(sum(m.amount_wei), 0) AS minted_wei
  FROM intents i FULL JOIN reward_mints m ON m.intent_id = i.id
"""


def wallets(count: int) -> list[ChecksumAddress]:
    """Return ``count`` deterministic checksummed guest wallets."""
    return [checksum(chainfill.recipient(number)) for number in range(count)]


async def fill_book(
    connection: asyncpg.Connection,
    rows: int,
    guests: Sequence[str],
    *,
    minter: str,
    last_block: int,
) -> None:
    """Write ``rows`` confirmed intents, their mints and transfers; then analyse."""
    await connection.execute(
        """
        INSERT INTO signers (address, encrypted_key, status)
        VALUES ($1, 'not-a-key', 'active')
        """,
        minter,
    )
    await connection.execute(
        """
        INSERT INTO intents (id, partner, kind, source_key, wallet, amount_wei,
                             rule_version, status, signer, nonce, tx_hash,
                             block_number, created_at, updated_at, ready_at,
                             submitted_at, confirmed_at)
        SELECT sha256(('bench:intent:' || g)::bytea), 'aurora', 'booking',
               'BENCH-' || g, ($1::text[])[1 + g % array_length($1, 1)], $2,
               'bench-1', 'confirmed', $3, g, sha256(('bench:tx:' || g)::bytea),
               1 + g % $4, now() - interval '1 hour', now() - interval '1 hour',
               now() - interval '1 hour', now() - interval '1 hour',
               now() - interval '1 hour'
          FROM generate_series(1, $5) AS g
        """,
        list(guests),
        AMOUNT_WEI,
        minter,
        last_block,
        rows,
    )
    await connection.execute(
        """
        INSERT INTO intent_events (intent_id, from_status, to_status, at)
        SELECT id, 'mined', 'confirmed', confirmed_at FROM intents
        """
    )
    await connection.execute(
        """
        INSERT INTO reward_mints (block_hash, log_index, block_number, tx_hash,
                                  intent_id, to_address, amount_wei, minter,
                                  settled_at)
        SELECT sha256(('bench:block:' || block_number)::bytea), nonce::int,
               block_number, tx_hash, id, wallet, amount_wei, signer, now()
          FROM intents
        """
    )
    await connection.execute(
        """
        INSERT INTO token_transfers (block_hash, log_index, block_number, tx_hash,
                                     from_address, to_address, amount_wei)
        SELECT block_hash, log_index + 1, block_number, tx_hash,
               '0x0000000000000000000000000000000000000000', to_address, amount_wei
          FROM reward_mints
        """
    )
    await connection.execute("VACUUM ANALYZE")


async def _mint_total(
    node: services.AnvilNode, hnv: chainfill.Token, rows: int
) -> None:
    # One on-chain mint of the book's total makes totalSupply agree with it.
    data = token.mint_reward_data(
        chainsetup.ADMIN, Wei(AMOUNT_WEI * rows), IntentId(keccak(text="bench:book"))
    )
    await chainsetup.transact(node, chainsetup.ADMIN_KEY, to=hnv.address, data=data)


async def _checkpoint(connection: asyncpg.Connection, node: services.AnvilNode) -> int:
    head: int = await node.block_number()
    block = await node.rpc("eth_getBlockByNumber", [hex(head), False])
    await connection.execute(
        """
        INSERT INTO tail_checkpoints (name, block_number, block_hash,
                                      confirmed_through)
        VALUES ($1, $2, $3, $2)
        """,
        CHECKPOINT,
        head,
        bytes.fromhex(block["hash"][2:]),
    )
    return head


async def _time_baseline(connection: asyncpg.Connection) -> tuple[float, int]:
    started = time.perf_counter()
    row = await connection.fetchrow(BASELINE_JOIN)
    return time.perf_counter() - started, int(row["matched"])


async def measure(context: Context) -> Figure:
    """Fill the book, run the reconciler and the join, and return the figure."""
    rows = context.size(FULL_ROWS, minimum=10_000)
    guests = wallets(max(1, rows // INTENTS_PER_WALLET))
    async with services.running_anvil() as node, context.databases.fresh() as dsn:
        hnv = await chainfill.deploy(node)
        await _mint_total(node, hnv, rows)
        connection = await asyncpg.connect(dsn)
        try:
            head = await _checkpoint(connection, node)
            await fill_book(
                connection, rows, guests, minter=chainsetup.ADMIN, last_block=head
            )
            baseline_s, joined = await _time_baseline(connection)
        finally:
            await connection.close()
        run, measured_s, report_s = await _time_reconciler(dsn, node, hnv)

    if run.verdict != runs.RECONCILED or run.matching is None:
        raise AssertionError(f"verdict {run.verdict}: {run.reasons}")
    if run.matching.matched != rows or joined != rows:
        raise AssertionError(f"matched {run.matching.matched}, joined {joined}")
    return Figure(
        name=NAME,
        unit="seconds",
        measured=measured_s,
        baseline=baseline_s,
        checks=(Check("ratio", "<=", 2, measured_s / baseline_s),),
        sizes={
            "intents": rows,
            "reward_mints": rows,
            "transfers": rows,
            "intent_events": rows,
            "wallets": len(guests),
        },
        details={
            "verdict": run.verdict,
            "matched": run.matching.matched,
            "report_s": round(report_s, 3),
        },
    )


async def _time_reconciler(
    dsn: str, node: services.AnvilNode, hnv: chainfill.Token
) -> tuple[runs.Run, float, float]:
    config = ReconcilerConfig(
        token_address=hnv.address,
        start_block=hnv.deploy_block,
        confirmations=1,
        tail_checkpoint=CHECKPOINT,
    )
    pool = await db.create_pool(dsn, max_size=2)
    try:
        async with ChainClient([node.url], chain_id=node.chain_id) as chain:
            cut = await runs.choose_cut(pool, chain, config)
            started = time.perf_counter()
            run = await runs.compute(pool, chain, config, cut)
            elapsed_s = time.perf_counter() - started
            loaded = settings.load({"HAVEN_DATABASE_URL": dsn}, require=())
            started = time.perf_counter()
            report = await reports.build(pool, chain, loaded, config=config)
            report_s = time.perf_counter() - started
    finally:
        await pool.close()
    if report.verdict != run.verdict:
        raise AssertionError(f"report says {report.verdict}, the run {run.verdict}")
    return run, elapsed_s, report_s
