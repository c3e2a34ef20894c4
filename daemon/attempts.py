"""Transaction attempts: the only module that talks SQL to ``tx_attempts``.

An attempt is one signed transaction. It is committed, with its raw bytes,
locally computed hash, nonce and fees, *before* it is sent, so a crash at any
point leaves enough on disk to re-broadcast the very same bytes. Several
attempts share a nonce when a transaction is re-priced; at most one of them
can ever be mined.

Statuses: signed (committed, maybe sent) → broadcast (a node accepted it) →
mined (its receipt is on the canonical chain); replaced (another attempt at
its nonce was mined); dropped (no node has it and its nonce is free again);
failed (mined and reverted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from haven.types import Nonce, TxHash, Wei

SIGNED = "signed"
BROADCAST = "broadcast"
MINED = "mined"
REPLACED = "replaced"
DROPPED = "dropped"
FAILED = "failed"
LIVE = (SIGNED, BROADCAST)


@dataclass(frozen=True)
class Attempt:
    id: int
    intent_id: bytes
    signer: str
    nonce: Nonce
    tx_hash: TxHash
    raw_tx: bytes
    max_fee_wei: Wei
    max_priority_fee_wei: Wei
    gas_limit: int
    status: str
    error: str | None
    created_at: datetime
    broadcast_at: datetime | None
    last_sent_at: datetime | None
    sent_block: int | None
    mined_block: int | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Attempt:
        return cls(
            id=row["id"],
            intent_id=bytes(row["intent_id"]),
            signer=row["signer"],
            nonce=Nonce(row["nonce"]),
            tx_hash=TxHash("0x" + bytes(row["tx_hash"]).hex()),
            raw_tx=bytes(row["raw_tx"]),
            max_fee_wei=Wei(int(row["max_fee_wei"])),
            max_priority_fee_wei=Wei(int(row["max_priority_fee_wei"])),
            gas_limit=row["gas_limit"],
            status=row["status"],
            error=row["error"],
            created_at=row["created_at"],
            broadcast_at=row["broadcast_at"],
            last_sent_at=row["last_sent_at"],
            sent_block=row["sent_block"],
            mined_block=row["mined_block"],
        )


def _hash_bytes(tx_hash: str) -> bytes:
    return bytes.fromhex(tx_hash[2:] if tx_hash.startswith("0x") else tx_hash)


async def record(
    connection: asyncpg.Connection,
    *,
    intent_id: bytes,
    signer: str,
    nonce: Nonce,
    tx_hash: TxHash,
    raw_tx: bytes,
    max_fee_wei: Wei,
    max_priority_fee_wei: Wei,
    gas_limit: int,
) -> Attempt:
    """Store a signed transaction before it is sent; must be in the caller's transaction."""
    row = await connection.fetchrow(
        """
        INSERT INTO tx_attempts (intent_id, signer, nonce, tx_hash, raw_tx,
                                 max_fee_wei, max_priority_fee_wei, gas_limit, status)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'signed')
        RETURNING *
        """,
        intent_id,
        signer,
        nonce,
        _hash_bytes(tx_hash),
        raw_tx,
        max_fee_wei,
        max_priority_fee_wei,
        gas_limit,
    )
    return Attempt.from_row(row)


async def mark_sent(
    connection: asyncpg.Connection, tx_hash: TxHash, *, block_number: int
) -> None:
    """Note that a node accepted (or already had) the attempt."""
    await connection.execute(
        """
        UPDATE tx_attempts
           SET status = CASE WHEN status = 'signed' THEN 'broadcast' ELSE status END,
               broadcast_at = coalesce(broadcast_at, now()),
               last_sent_at = now(),
               sent_block = coalesce(sent_block, $2)
         WHERE tx_hash = $1
        """,
        _hash_bytes(tx_hash),
        block_number,
    )


async def set_status(
    connection: asyncpg.Connection,
    tx_hash: TxHash,
    status: str,
    *,
    error: str | None = None,
) -> None:
    await connection.execute(
        "UPDATE tx_attempts SET status = $2, error = coalesce($3, error) WHERE tx_hash = $1",
        _hash_bytes(tx_hash),
        status,
        error,
    )


async def for_intent(connection: asyncpg.Connection, intent_id: bytes) -> list[Attempt]:
    """Return every attempt of an intent, oldest first."""
    rows = await connection.fetch(
        "SELECT * FROM tx_attempts WHERE intent_id = $1 ORDER BY id", intent_id
    )
    return [Attempt.from_row(row) for row in rows]


async def at_nonce(
    connection: asyncpg.Connection, signer: str, nonce: Nonce
) -> list[Attempt]:
    """Return every attempt ever signed at (signer, nonce), oldest first."""
    rows = await connection.fetch(
        "SELECT * FROM tx_attempts WHERE signer = $1 AND nonce = $2 ORDER BY id",
        signer,
        nonce,
    )
    return [Attempt.from_row(row) for row in rows]


async def live(
    connection: asyncpg.Connection, signer: str | None = None
) -> list[Attempt]:
    """Return attempts not yet settled (signed or broadcast), in nonce order."""
    rows = await connection.fetch(
        "SELECT * FROM tx_attempts WHERE status = ANY($1::text[]) "
        "AND ($2::text IS NULL OR signer = $2) ORDER BY signer, nonce, id",
        list(LIVE),
        signer,
    )
    return [Attempt.from_row(row) for row in rows]


async def settle_mined(
    connection: asyncpg.Connection,
    intent_id: bytes,
    tx_hash: TxHash,
    *,
    block_number: int,
) -> None:
    """Mark ``tx_hash`` mined and every other attempt of the intent replaced."""
    await connection.execute(
        """
        UPDATE tx_attempts
           SET status = CASE WHEN tx_hash = $2 THEN 'mined' ELSE 'replaced' END,
               mined_block = CASE WHEN tx_hash = $2 THEN $3 ELSE mined_block END
         WHERE intent_id = $1 AND status <> 'failed'
        """,
        intent_id,
        _hash_bytes(tx_hash),
        block_number,
    )


async def unsettle(connection: asyncpg.Connection, intent_id: bytes) -> None:
    """Undo :func:`settle_mined` after a reorg: every attempt is live again."""
    await connection.execute(
        """
        UPDATE tx_attempts SET status = 'broadcast', mined_block = NULL
         WHERE intent_id = $1 AND status IN ('mined', 'replaced')
        """,
        intent_id,
    )
