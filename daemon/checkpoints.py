"""Tail checkpoints: the only module that talks SQL to ``tail_checkpoints``.

A checkpoint names the last block whose events are all stored (number and
hash) and the highest block whose mints were considered for confirmation. It
moves only in the transaction that writes or rolls back the rows it covers,
which is what makes a restart at any point resume with no gap and no
duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from eth_utils.crypto import keccak


@dataclass(frozen=True)
class Checkpoint:
    """Where one tailer stands."""

    name: str
    block_number: int
    block_hash: bytes
    confirmed_through: int


async def load(connection: asyncpg.Connection, name: str) -> Checkpoint | None:
    """Return the checkpoint called ``name``, or None before the first batch."""
    row = await connection.fetchrow(
        "SELECT name, block_number, block_hash, confirmed_through "
        "FROM tail_checkpoints WHERE name = $1",
        name,
    )
    if row is None:
        return None
    return Checkpoint(
        name=row["name"],
        block_number=row["block_number"],
        block_hash=bytes(row["block_hash"]),
        confirmed_through=(
            row["confirmed_through"]
            if row["confirmed_through"] is not None
            else row["block_number"]
        ),
    )


async def lock(connection: asyncpg.Connection, name: str) -> Checkpoint | None:
    """Serialise writers of ``name`` until the transaction ends, then load it.

    An advisory lock rather than a row lock, because before the first batch
    there is no row to lock. Must run inside a transaction.
    """
    key = int.from_bytes(keccak(text=f"tail:{name}")[:8], "big", signed=True)
    await connection.execute("SELECT pg_advisory_xact_lock($1)", key)
    return await load(connection, name)


async def save(connection: asyncpg.Connection, checkpoint: Checkpoint) -> None:
    """Store ``checkpoint``; must run in the transaction that wrote its rows."""
    await connection.execute(
        """
        INSERT INTO tail_checkpoints (name, block_number, block_hash,
                                      confirmed_through, updated_at)
        VALUES ($1, $2, $3, $4, now())
        ON CONFLICT (name) DO UPDATE
           SET block_number = excluded.block_number,
               block_hash = excluded.block_hash,
               confirmed_through = excluded.confirmed_through,
               updated_at = now()
        """,
        checkpoint.name,
        checkpoint.block_number,
        checkpoint.block_hash,
        checkpoint.confirmed_through,
    )


async def clear(connection: asyncpg.Connection, name: str) -> None:
    """Forget ``name``: the next batch starts again from the deployment block."""
    await connection.execute("DELETE FROM tail_checkpoints WHERE name = $1", name)
