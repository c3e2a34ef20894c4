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

Besides the status (the tailer's settlement), each attempt carries what the
submitter observed: ``error_kind``, the classified refusal of its last send
(cleared when a node accepts it), and ``receipt_block``/``receipt_status``,
a receipt the submitter saw. Observations never settle anything.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    error_kind: str | None = None
    receipt_block: int | None = None
    receipt_status: int | None = None

    @property
    def is_live(self) -> bool:
        """Not settled: it may still be pending, or be sent again."""
        return self.status in LIVE

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
            error_kind=row.get("error_kind"),
            receipt_block=row.get("receipt_block"),
            receipt_status=row.get("receipt_status"),
        )


def _hash_bytes(tx_hash: str) -> bytes:
    return bytes.fromhex(tx_hash[2:] if tx_hash.startswith("0x") else tx_hash)


@dataclass(frozen=True)
class Draft:
    """A signed transaction not yet stored: what :func:`record_all` writes."""

    intent_id: bytes
    signer: str
    nonce: Nonce
    tx_hash: TxHash
    raw_tx: bytes
    max_fee_wei: Wei
    max_priority_fee_wei: Wei
    gas_limit: int


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
    """Store a signed transaction before it is sent; run in the caller's transaction."""
    draft = Draft(
        intent_id,
        signer,
        nonce,
        tx_hash,
        raw_tx,
        max_fee_wei,
        max_priority_fee_wei,
        gas_limit,
    )
    [attempt] = await record_all(connection, [draft])
    return attempt


async def record_all(
    connection: asyncpg.Connection, drafts: Sequence[Draft]
) -> list[Attempt]:
    """Store signed transactions in one statement; return them in ``drafts``' order.

    Run in the transaction that takes their nonces: nothing is sent that is
    not committed.
    """
    rows = await connection.fetch(
        """
        INSERT INTO tx_attempts (intent_id, signer, nonce, tx_hash, raw_tx,
                                 max_fee_wei, max_priority_fee_wei, gas_limit, status)
        SELECT intent_id, signer, nonce, tx_hash, raw_tx,
               max_fee_wei, max_priority_fee_wei, gas_limit, 'signed'
          FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::bytea[],
                      $5::bytea[], $6::numeric[], $7::numeric[], $8::bigint[])
                 AS d(intent_id, signer, nonce, tx_hash, raw_tx,
                      max_fee_wei, max_priority_fee_wei, gas_limit)
        RETURNING *
        """,
        [draft.intent_id for draft in drafts],
        [draft.signer for draft in drafts],
        [draft.nonce for draft in drafts],
        [_hash_bytes(draft.tx_hash) for draft in drafts],
        [draft.raw_tx for draft in drafts],
        [draft.max_fee_wei for draft in drafts],
        [draft.max_priority_fee_wei for draft in drafts],
        [draft.gas_limit for draft in drafts],
    )
    stored = {bytes(row["tx_hash"]): Attempt.from_row(row) for row in rows}
    return [stored[_hash_bytes(draft.tx_hash)] for draft in drafts]


async def mark_sent(
    connection: asyncpg.Connection,
    tx_hashes: Sequence[TxHash],
    *,
    block_number: int,
) -> None:
    """Note that a node accepted (or already had) each attempt, in one statement."""
    await connection.execute(
        """
        UPDATE tx_attempts
           SET status = CASE WHEN status = 'signed' THEN 'broadcast' ELSE status END,
               error_kind = NULL,
               broadcast_at = coalesce(broadcast_at, now()),
               last_sent_at = now(),
               sent_block = coalesce(sent_block, $2)
         WHERE tx_hash = ANY($1::bytea[])
        """,
        [_hash_bytes(tx_hash) for tx_hash in tx_hashes],
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
        "UPDATE tx_attempts SET status = $2, error = coalesce($3, error) "
        "WHERE tx_hash = $1",
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


async def at_nonces(
    connection: asyncpg.Connection, signer: str, nonces: list[Nonce]
) -> list[Attempt]:
    """Return every attempt signed at any of ``nonces`` of ``signer``, by nonce."""
    rows = await connection.fetch(
        "SELECT * FROM tx_attempts WHERE signer = $1 AND nonce = ANY($2::bigint[]) "
        "ORDER BY nonce, id",
        signer,
        nonces,
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
    await settle_mined_all(connection, [(intent_id, tx_hash, block_number)])


async def settle_mined_all(
    connection: asyncpg.Connection, mined: Sequence[tuple[bytes, TxHash, int]]
) -> None:
    """:func:`settle_mined` for each ``(intent_id, tx_hash, block_number)``, at once."""
    await connection.execute(
        """
        UPDATE tx_attempts AS a
           SET status = CASE WHEN a.tx_hash = m.tx_hash THEN 'mined'
                             ELSE 'replaced' END,
               mined_block = CASE WHEN a.tx_hash = m.tx_hash THEN m.block_number
                                  ELSE a.mined_block END
          FROM unnest($1::bytea[], $2::bytea[], $3::bigint[])
                 AS m(intent_id, tx_hash, block_number)
         WHERE a.intent_id = m.intent_id AND a.status <> 'failed'
        """,
        [intent_id for intent_id, _, _ in mined],
        [_hash_bytes(tx_hash) for _, tx_hash, _ in mined],
        [block_number for _, _, block_number in mined],
    )


async def signers_of(
    connection: asyncpg.Connection, intent_ids: Sequence[bytes]
) -> dict[bytes, set[str]]:
    """Return, per intent, the signers of its attempts (checksummed as stored)."""
    rows = await connection.fetch(
        "SELECT DISTINCT intent_id, signer FROM tx_attempts "
        "WHERE intent_id = ANY($1::bytea[])",
        list(intent_ids),
    )
    found: dict[bytes, set[str]] = {}
    for row in rows:
        found.setdefault(bytes(row["intent_id"]), set()).add(row["signer"])
    return found


async def fail_mined(
    connection: asyncpg.Connection, tx_hash: TxHash, *, block_number: int, error: str
) -> None:
    """Mark ``tx_hash`` failed: it reverted in ``block_number``."""
    await connection.execute(
        "UPDATE tx_attempts SET status = 'failed', error = $3, mined_block = $2 "
        "WHERE tx_hash = $1",
        _hash_bytes(tx_hash),
        block_number,
        error,
    )


async def failed_above(
    connection: asyncpg.Connection, block_number: int
) -> list[Attempt]:
    """Return the attempts failed on a receipt of a block above ``block_number``."""
    rows = await connection.fetch(
        "SELECT * FROM tx_attempts WHERE status = 'failed' AND mined_block > $1 "
        "ORDER BY id",
        block_number,
    )
    return [Attempt.from_row(row) for row in rows]


async def forget_block(connection: asyncpg.Connection, tx_hash: TxHash) -> None:
    """Forget the block of a failed attempt whose receipt was reorged out."""
    await connection.execute(
        "UPDATE tx_attempts SET mined_block = NULL WHERE tx_hash = $1",
        _hash_bytes(tx_hash),
    )


async def unfail(connection: asyncpg.Connection, attempt: Attempt) -> None:
    """Undo a failure on a reorged-out receipt: the attempt and the ones it
    replaced at its nonce are live again."""
    await connection.execute(
        """
        UPDATE tx_attempts SET status = 'broadcast', mined_block = NULL
         WHERE intent_id = $1 AND signer = $2 AND nonce = $3
           AND (tx_hash = $4 OR status = 'replaced')
        """,
        attempt.intent_id,
        attempt.signer,
        attempt.nonce,
        _hash_bytes(attempt.tx_hash),
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


async def note_refusal(
    connection: asyncpg.Connection, tx_hash: TxHash, *, kind: str, message: str
) -> None:
    """Record that a node refused the attempt's last send, and why (by kind)."""
    await connection.execute(
        "UPDATE tx_attempts SET error_kind = $2, error = $3 WHERE tx_hash = $1",
        _hash_bytes(tx_hash),
        kind,
        f"{kind}: {message}"[:500],
    )


async def note_receipts(
    connection: asyncpg.Connection, seen: list[tuple[TxHash, int, int]]
) -> None:
    """Record receipts the submitter saw, as ``(tx_hash, block_number, status)``.

    Observations, not settlements: the tailer settles at depth.
    """
    await connection.execute(
        """
        UPDATE tx_attempts AS a
           SET receipt_block = seen.block_number, receipt_status = seen.status
          FROM unnest($1::bytea[], $2::bigint[], $3::integer[])
               AS seen (tx_hash, block_number, status)
         WHERE a.tx_hash = seen.tx_hash
        """,
        [_hash_bytes(tx_hash) for tx_hash, _, _ in seen],
        [block for _, block, _ in seen],
        [status for _, _, status in seen],
    )


async def in_nonce_range(
    connection: asyncpg.Connection, signer: str, low: int, high: int
) -> list[Attempt]:
    """Return the attempts of ``signer`` at nonces ``low <= n < high``, by nonce."""
    rows = await connection.fetch(
        "SELECT * FROM tx_attempts WHERE signer = $1 AND nonce >= $2 AND nonce < $3 "
        "ORDER BY nonce, id",
        signer,
        low,
        high,
    )
    return [Attempt.from_row(row) for row in rows]


async def unresolved_below(
    connection: asyncpg.Connection, signer: str, nonce: int, *, limit: int
) -> list[Nonce]:
    """Return nonces under ``nonce`` with live attempts and no receipt seen there.

    These are the nonces the chain says are used where the submitter has not
    yet seen which transaction used them, lowest first.
    """
    rows = await connection.fetch(
        """
        SELECT DISTINCT a.nonce FROM tx_attempts a
         WHERE a.signer = $1 AND a.nonce < $2
           AND a.status = ANY($3::text[]) AND a.receipt_block IS NULL
           AND NOT EXISTS (
               SELECT 1 FROM tx_attempts b
                WHERE b.signer = a.signer AND b.nonce = a.nonce
                  AND b.receipt_block IS NOT NULL)
         ORDER BY a.nonce
         LIMIT $4
        """,
        signer,
        nonce,
        list(LIVE),
        limit,
    )
    return [Nonce(row["nonce"]) for row in rows]


async def drop_live(
    connection: asyncpg.Connection,
    intent_id: bytes,
    signer: str,
    nonce: Nonce,
    *,
    reason: str,
) -> int:
    """Mark the intent's live attempts at (signer, nonce) dropped; return how many.

    Used when the nonce was consumed by someone else's transaction: those
    bytes can never be mined.
    """
    result = await connection.execute(
        "UPDATE tx_attempts SET status = 'dropped', error = $4 "
        "WHERE intent_id = $1 AND signer = $2 AND nonce = $3 "
        "AND status = ANY($5::text[])",
        intent_id,
        signer,
        nonce,
        reason,
        list(LIVE),
    )
    return int(result.split()[-1])
