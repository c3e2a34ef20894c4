"""Indexed HNV events: the only module that talks SQL to ``token_transfers``
and ``reward_mints``.

Every row is an event of the canonical chain up to the tail checkpoint, keyed
by its natural position (block hash, log index). Rows are written and rolled
back only in the transaction that moves the checkpoint, so the tables never
hold a block the checkpoint does not cover. Sums here are exact integers in
base units.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from haven.token import LogPosition, RewardMinted, Transfer
from haven.types import ZERO_ADDRESS, ChecksumAddress, IntentId, Wei

Event = Transfer | RewardMinted

# Column order of the COPY into each table, matching the records built below.
TRANSFER_COLUMNS = (
    "block_hash",
    "log_index",
    "block_number",
    "tx_hash",
    "from_address",
    "to_address",
    "amount_wei",
)
MINT_COLUMNS = (
    "block_hash",
    "log_index",
    "block_number",
    "tx_hash",
    "intent_id",
    "to_address",
    "amount_wei",
    "minter",
)


async def insert(connection: asyncpg.Connection, events: Sequence[Event]) -> None:
    """Store decoded events; must run in the transaction that moves the checkpoint.

    Not idempotent on purpose: a position already stored means a rollback
    was missed, and the primary key refuses it.
    """
    moves = [e for e in events if isinstance(e, Transfer)]
    mints = [e for e in events if isinstance(e, RewardMinted)]
    if moves:
        await connection.copy_records_to_table(
            "token_transfers",
            columns=TRANSFER_COLUMNS,
            records=[
                (*_key(e.position), e.from_address, e.to_address, e.amount_wei)
                for e in moves
            ],
        )
    if mints:
        await connection.copy_records_to_table(
            "reward_mints",
            columns=MINT_COLUMNS,
            records=[
                (*_key(e.position), e.intent_id, e.to_address, e.amount_wei, e.minter)
                for e in mints
            ],
        )


def _key(position: LogPosition) -> tuple[bytes, int, int, bytes]:
    return (
        position.block_hash,
        position.log_index,
        position.block_number,
        position.tx_hash,
    )


async def delete_above(
    connection: asyncpg.Connection, block_number: int
) -> list[RewardMinted]:
    """Delete every event above ``block_number``; return the mints removed."""
    await connection.execute(
        "DELETE FROM token_transfers WHERE block_number > $1", block_number
    )
    rows = await connection.fetch(
        "DELETE FROM reward_mints WHERE block_number > $1 RETURNING *", block_number
    )
    return sorted((_mint(row) for row in rows), key=_order)


async def mints_between(
    connection: asyncpg.Connection, low: int, high: int
) -> list[RewardMinted]:
    """Return the stored mints of blocks ``low`` to ``high``, in chain order."""
    rows = await connection.fetch(
        "SELECT * FROM reward_mints WHERE block_number BETWEEN $1 AND $2 "
        "ORDER BY block_number, log_index",
        low,
        high,
    )
    return [_mint(row) for row in rows]


async def mints_of(
    connection: asyncpg.Connection, intent_id: bytes
) -> list[RewardMinted]:
    """Return the stored mints carrying ``intent_id`` (at most one when sane)."""
    rows = await connection.fetch(
        "SELECT * FROM reward_mints WHERE intent_id = $1 "
        "ORDER BY block_number, log_index",
        intent_id,
    )
    return [_mint(row) for row in rows]


async def unsettled(connection: asyncpg.Connection) -> list[RewardMinted]:
    """Return the stored mints that have not settled an intent, in chain order."""
    rows = await connection.fetch(
        "SELECT * FROM reward_mints WHERE settled_at IS NULL "
        "ORDER BY block_number, log_index"
    )
    return [_mint(row) for row in rows]


async def mark_settled(connection: asyncpg.Connection, mint: RewardMinted) -> None:
    """Record that ``mint`` settled its intent; idempotent."""
    await mark_settled_all(connection, [mint])


async def mark_settled_all(
    connection: asyncpg.Connection, mints: Sequence[RewardMinted]
) -> None:
    """Record that each of ``mints`` settled its intent, in one statement."""
    await connection.execute(
        """
        UPDATE reward_mints AS r SET settled_at = coalesce(r.settled_at, now())
          FROM unnest($1::bytea[], $2::int[]) AS m(block_hash, log_index)
         WHERE r.block_hash = m.block_hash AND r.log_index = m.log_index
        """,
        [mint.position.block_hash for mint in mints],
        [mint.position.log_index for mint in mints],
    )


async def minted_total(connection: asyncpg.Connection) -> int:
    """Return the sum of RewardMinted amounts on the indexed canonical chain, in wei."""
    total = await connection.fetchval(
        "SELECT coalesce(sum(amount_wei), 0) FROM reward_mints"
    )
    return int(total)


async def supply_from_transfers(connection: asyncpg.Connection) -> int:
    """Return mints minus burns over indexed Transfer events, in wei.

    Equals the token's totalSupply at the checkpoint block.
    """
    total = await connection.fetchval(
        """
        SELECT coalesce(sum(CASE WHEN from_address = $1 THEN amount_wei ELSE 0 END), 0)
             - coalesce(sum(CASE WHEN to_address = $1 THEN amount_wei ELSE 0 END), 0)
          FROM token_transfers
         WHERE from_address = $1 OR to_address = $1
        """,
        ZERO_ADDRESS,
    )
    return int(total)


async def balances(connection: asyncpg.Connection) -> dict[ChecksumAddress, Wei]:
    """Return every non-zero holder balance implied by indexed transfers, in wei."""
    rows = await connection.fetch(
        """
        SELECT holder, sum(delta) AS balance FROM (
            SELECT to_address AS holder, amount_wei AS delta FROM token_transfers
            UNION ALL
            SELECT from_address, -amount_wei FROM token_transfers
        ) AS moves
        WHERE holder <> $1
        GROUP BY holder
        HAVING sum(delta) <> 0
        """,
        ZERO_ADDRESS,
    )
    return {ChecksumAddress(row["holder"]): Wei(int(row["balance"])) for row in rows}


async def positions(
    connection: asyncpg.Connection,
) -> list[tuple[bytes, int]]:
    """Return (block hash, log index) of every stored event of either kind."""
    rows = await connection.fetch(
        "SELECT block_hash, log_index FROM token_transfers "
        "UNION ALL SELECT block_hash, log_index FROM reward_mints"
    )
    return [(bytes(row["block_hash"]), row["log_index"]) for row in rows]


def _mint(row: asyncpg.Record) -> RewardMinted:
    return RewardMinted(
        position=LogPosition(
            block_number=row["block_number"],
            block_hash=bytes(row["block_hash"]),
            log_index=row["log_index"],
            tx_hash=bytes(row["tx_hash"]),
        ),
        intent_id=IntentId(bytes(row["intent_id"])),
        to_address=ChecksumAddress(row["to_address"]),
        amount_wei=Wei(int(row["amount_wei"])),
        minter=ChecksumAddress(row["minter"]),
    )


def _order(mint: RewardMinted) -> tuple[int, int]:
    return mint.position.block_number, mint.position.log_index
