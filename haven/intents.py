"""Reward intents: the only module that talks SQL to ``intents`` and ``intent_events``.

An intent is a reward owed to a wallet. Its id is keccak256 of its business
key (partner, kind, source key), so the same partner object can only ever
owe one reward and the on-chain ``intentId`` is known before anything is sent.
Every status change is recorded in ``intent_events`` in the same transaction.

Statuses::

    held ──► ready ──► submitted ──► mined ──► confirmed
      │        │  ▲        │  ▲        │
      ▼        ▼  └────────┘  └────────┘ (reorged out / dropped)
    voided  approval ──► rejected       failed (reverted)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from eth_utils import keccak

from haven.types import ChecksumAddress, IntentId, Wei

HELD = "held"
READY = "ready"
APPROVAL = "approval"
SUBMITTED = "submitted"
MINED = "mined"
CONFIRMED = "confirmed"
VOIDED = "voided"
FAILED = "failed"
REJECTED = "rejected"
STATUSES = (
    HELD,
    READY,
    APPROVAL,
    SUBMITTED,
    MINED,
    CONFIRMED,
    VOIDED,
    FAILED,
    REJECTED,
)
OUTSTANDING = (HELD, READY, APPROVAL, SUBMITTED, MINED)


def derive_id(partner: str, kind: str, source_key: str) -> IntentId:
    """Return the intent id of a business key.

    The id is keccak256 of ``haven:v1:partner:kind:key``.
    """
    return IntentId(keccak(f"haven:v1:{partner}:{kind}:{source_key}".encode()))


@dataclass(frozen=True)
class Intent:
    id: IntentId
    partner: str
    kind: str
    source_key: str
    wallet: ChecksumAddress
    amount_wei: Wei
    rule_version: str
    status: str
    status_reason: str | None
    signer: str | None
    nonce: int | None
    tx_hash: bytes | None
    block_number: int | None
    block_hash: bytes | None
    request_id: str | None
    reversed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Intent:
        return cls(
            id=IntentId(bytes(row["id"])),
            partner=row["partner"],
            kind=row["kind"],
            source_key=row["source_key"],
            wallet=ChecksumAddress(row["wallet"]),
            amount_wei=Wei(int(row["amount_wei"])),
            rule_version=row["rule_version"],
            status=row["status"],
            status_reason=row["status_reason"],
            signer=row["signer"],
            nonce=row["nonce"],
            tx_hash=bytes(row["tx_hash"]) if row["tx_hash"] is not None else None,
            block_number=row["block_number"],
            block_hash=bytes(row["block_hash"])
            if row["block_hash"] is not None
            else None,
            request_id=row["request_id"],
            reversed_at=row["reversed_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class NewIntent:
    """An intent to create: its business key, reward and first status."""

    partner: str
    kind: str
    source_key: str
    wallet: ChecksumAddress
    amount_wei: Wei
    rule_version: str
    status: str
    request_id: str | None = None
    reason: str | None = None

    @functools.cached_property
    def id(self) -> IntentId:
        """The intent id of the business key."""
        return derive_id(self.partner, self.kind, self.source_key)


async def create(
    connection: asyncpg.Connection,
    *,
    partner: str,
    kind: str,
    source_key: str,
    wallet: ChecksumAddress,
    amount_wei: Wei,
    rule_version: str,
    status: str,
    request_id: str | None = None,
    reason: str | None = None,
) -> tuple[Intent, bool]:
    """Insert the intent of a business key unless it exists.

    Return the intent and whether it is new.

    Idempotent, also under concurrency: a second call with the same key,
    in this or a concurrent transaction, returns the stored intent untouched
    (waiting for a concurrent creator to commit). Must run inside the
    caller's transaction.
    """
    new = NewIntent(
        partner,
        kind,
        source_key,
        wallet,
        amount_wei,
        rule_version,
        status,
        request_id=request_id,
        reason=reason,
    )
    created = await create_many(connection, [new])
    intent_id = new.id
    if intent_id in created:
        return created[intent_id], True
    existing = await get(connection, intent_id, for_update=True)
    assert existing is not None
    return existing, False


async def create_many(
    connection: asyncpg.Connection, news: Sequence[NewIntent]
) -> dict[bytes, Intent]:
    """Insert the intents of ``news`` whose ids are free; return those inserted, by id.

    An id already taken, here or by a concurrent transaction (waited for),
    is left as it is and missing from the result; so is every repeat of an
    id within ``news`` after its first. Rows are inserted in id order, as
    every batch locks intents. Must run inside the caller's transaction.
    """
    for new in news:
        if new.status not in (HELD, READY, APPROVAL):
            raise ValueError(
                f"a new intent must be held, ready or approval, not {new.status!r}"
            )
    # No conflict target: the id is the hash of the business key, so a
    # concurrent twin collides on the primary key and the business key
    # together, and PostgreSQL absorbs only the target's conflict; the other
    # index would raise. A new row has no signer, so (signer, nonce) cannot
    # conflict, and any conflict left means the same intent.
    # The history's first event is written by the same statement, only for
    # a row that was inserted.
    rows = await connection.fetch(
        """
        WITH created AS (
            INSERT INTO intents (id, partner, kind, source_key, wallet, amount_wei,
                                 rule_version, status, status_reason, request_id,
                                 ready_at)
            SELECT id, partner, kind, source_key, wallet, amount_wei,
                   rule_version, status, reason, request_id,
                   CASE WHEN status = 'ready' THEN now() END
              FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[],
                          $5::text[], $6::numeric[], $7::text[], $8::text[],
                          $9::text[], $10::text[])
                   AS new (id, partner, kind, source_key, wallet, amount_wei,
                           rule_version, status, reason, request_id)
             ORDER BY id
            ON CONFLICT DO NOTHING
            RETURNING *
        ), first_event AS (
            INSERT INTO intent_events (intent_id, from_status, to_status, reason)
            SELECT id, NULL, status, status_reason FROM created
        )
        SELECT * FROM created
        """,
        [new.id for new in news],
        [new.partner for new in news],
        [new.kind for new in news],
        [new.source_key for new in news],
        [new.wallet for new in news],
        [new.amount_wei for new in news],
        [new.rule_version for new in news],
        [new.status for new in news],
        [new.reason for new in news],
        [new.request_id for new in news],
    )
    return {bytes(row["id"]): Intent.from_row(row) for row in rows}


async def get(
    connection: asyncpg.Connection, intent_id: bytes, *, for_update: bool = False
) -> Intent | None:
    """Return the intent with ``intent_id``, optionally locking its row."""
    lock = " FOR UPDATE" if for_update else ""
    row = await connection.fetchrow(
        f"SELECT * FROM intents WHERE id = $1{lock}", intent_id
    )
    return Intent.from_row(row) if row is not None else None


async def get_many(
    connection: asyncpg.Connection,
    intent_ids: Sequence[bytes],
    *,
    for_update: bool = False,
) -> dict[bytes, Intent]:
    """Return the intents among ``intent_ids`` by id, optionally locking their
    rows (in id order, as every batch locks them)."""
    lock = " FOR UPDATE" if for_update else ""
    rows = await connection.fetch(
        f"SELECT * FROM intents WHERE id = ANY($1::bytea[]) ORDER BY id{lock}",
        list(intent_ids),
    )
    return {bytes(row["id"]): Intent.from_row(row) for row in rows}


async def transition(
    connection: asyncpg.Connection,
    intent_id: bytes,
    *,
    from_statuses: tuple[str, ...],
    to_status: str,
    reason: str | None = None,
    **columns: Any,
) -> Intent | None:
    """Move an intent to ``to_status`` if it is in one of ``from_statuses``.

    Returns the updated intent, or None when it was in another status (the
    caller decides whether that is a conflict). Extra keyword arguments set
    columns of the same row; timestamps of the new status are set here.
    """
    assignments = ["status = $3", "status_reason = $4", "updated_at = now()"]
    values: list[Any] = [intent_id, list(from_statuses), to_status, reason]
    for name, value in columns.items():
        values.append(value)
        assignments.append(f"{_column(name)} = ${len(values)}")
    stamp = {READY: "ready_at", SUBMITTED: "submitted_at", CONFIRMED: "confirmed_at"}
    if to_status in stamp:
        assignments.append(f"{stamp[to_status]} = now()")
    previous = await connection.fetchval(
        "SELECT status FROM intents WHERE id = $1 FOR UPDATE", intent_id
    )
    # The row is locked now, so ``previous`` stays true until the update,
    # which writes the history event in the same statement.
    values.append(previous)
    row = await connection.fetchrow(
        f"""
        WITH updated AS (
            UPDATE intents SET {", ".join(assignments)}
             WHERE id = $1 AND status = ANY($2::text[])
            RETURNING *
        ), event AS (
            INSERT INTO intent_events (intent_id, from_status, to_status, reason)
            SELECT id, ${len(values)}::text, status, $4 FROM updated
        )
        SELECT * FROM updated
        """,
        *values,
    )
    return Intent.from_row(row) if row is not None else None


async def submit_claimed(
    connection: asyncpg.Connection,
    signer: str,
    signed: Sequence[tuple[bytes, int, bytes]],
) -> None:
    """Move claimed ready intents to ``submitted``, with their history events.

    ``signed`` holds ``(intent_id, nonce, tx_hash)`` for intents this
    transaction claimed (:func:`claim_ready_batch`): their rows are locked,
    so each is still ready. One statement for the lot; raises
    AssertionError, rolling the caller back, if any was not ready.
    """
    moved = await connection.fetchval(
        """
        WITH updated AS (
            UPDATE intents AS i
               SET status = 'submitted', status_reason = NULL, updated_at = now(),
                   submitted_at = now(), signer = $1, nonce = s.nonce,
                   tx_hash = s.tx_hash
              FROM unnest($2::bytea[], $3::bigint[], $4::bytea[])
                     AS s(id, nonce, tx_hash)
             WHERE i.id = s.id AND i.status = 'ready'
            RETURNING i.id
        ), event AS (
            INSERT INTO intent_events (intent_id, from_status, to_status, reason)
            SELECT id, 'ready', 'submitted', NULL FROM updated
        )
        SELECT count(*) FROM updated
        """,
        signer,
        [intent_id for intent_id, _, _ in signed],
        [nonce for _, nonce, _ in signed],
        [tx_hash for _, _, tx_hash in signed],
    )
    assert moved == len(signed), f"{len(signed) - moved} claimed intents not ready"


async def mark_mined(
    connection: asyncpg.Connection,
    mined: Sequence[tuple[bytes, bytes, int, bytes]],
) -> None:
    """Move submitted intents to ``mined``, with their history events.

    ``mined`` holds ``(intent_id, tx_hash, block_number, block_hash)`` for
    intents this transaction locked and found submitted. One statement for
    the lot; raises AssertionError, rolling the caller back, if any was not.
    """
    moved = await connection.fetchval(
        """
        WITH updated AS (
            UPDATE intents AS i
               SET status = 'mined', status_reason = NULL, updated_at = now(),
                   tx_hash = m.tx_hash, block_number = m.block_number,
                   block_hash = m.block_hash
              FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bytea[])
                     AS m(id, tx_hash, block_number, block_hash)
             WHERE i.id = m.id AND i.status = 'submitted'
            RETURNING i.id
        ), event AS (
            INSERT INTO intent_events (intent_id, from_status, to_status, reason)
            SELECT id, 'submitted', 'mined', NULL FROM updated
        )
        SELECT count(*) FROM updated
        """,
        [row[0] for row in mined],
        [row[1] for row in mined],
        [row[2] for row in mined],
        [row[3] for row in mined],
    )
    assert moved == len(mined), f"{len(mined) - moved} locked intents not submitted"


async def confirm_mined(
    connection: asyncpg.Connection, mints: Sequence[tuple[bytes, bytes]]
) -> list[Intent]:
    """Move to ``confirmed`` each intent of ``mints`` (``(intent_id, block_hash)``)
    that is ``mined`` in that block, with its history event; return them.

    An intent in another status, or mined in another block, is left alone.
    """
    rows = await connection.fetch(
        """
        WITH updated AS (
            UPDATE intents AS i
               SET status = 'confirmed', status_reason = NULL, updated_at = now(),
                   confirmed_at = now()
              FROM unnest($1::bytea[], $2::bytea[]) AS m(id, block_hash)
             WHERE i.id = m.id AND i.status = 'mined'
               AND i.block_hash = m.block_hash
            RETURNING i.*
        ), event AS (
            INSERT INTO intent_events (intent_id, from_status, to_status, reason)
            SELECT id, 'mined', 'confirmed', NULL FROM updated
        )
        SELECT * FROM updated
        """,
        [intent_id for intent_id, _ in mints],
        [block_hash for _, block_hash in mints],
    )
    return [Intent.from_row(row) for row in rows]


_SETTABLE = {
    "signer",
    "nonce",
    "tx_hash",
    "block_number",
    "block_hash",
    "reversed_at",
    "amount_wei",
    "wallet",
    "rule_version",
}


def _column(name: str) -> str:
    if name not in _SETTABLE:
        raise ValueError(f"intents.{name} cannot be set through transition()")
    return name


async def mark_reversed(connection: asyncpg.Connection, intent_id: bytes) -> None:
    """Flag a minted intent whose partner object was cancelled afterwards."""
    await connection.execute(
        "UPDATE intents SET reversed_at = coalesce(reversed_at, now()), "
        "updated_at = now() WHERE id = $1",
        intent_id,
    )
    await _record_event(connection, intent_id, None, "reversed", "cancelled after mint")


async def history(
    connection: asyncpg.Connection, intent_id: bytes
) -> list[dict[str, Any]]:
    """Return the status changes of an intent, oldest first."""
    rows = await connection.fetch(
        "SELECT from_status, to_status, reason, at FROM intent_events "
        "WHERE intent_id = $1 ORDER BY id",
        intent_id,
    )
    return [dict(row) for row in rows]


async def count_by_status(connection: asyncpg.Connection) -> dict[str, tuple[int, Wei]]:
    """Return {status: (count, total amount in wei)} over all intents."""
    rows = await connection.fetch(
        "SELECT status, count(*) AS n, coalesce(sum(amount_wei), 0) AS total "
        "FROM intents GROUP BY status"
    )
    return {row["status"]: (row["n"], Wei(int(row["total"]))) for row in rows}


async def _record_event(
    connection: asyncpg.Connection,
    intent_id: bytes,
    from_status: str | None,
    to_status: str,
    reason: str | None,
) -> None:
    await connection.execute(
        "INSERT INTO intent_events (intent_id, from_status, to_status, reason) "
        "VALUES ($1, $2, $3, $4)",
        intent_id,
        from_status,
        to_status,
        reason,
    )


async def has_ready(connection: asyncpg.Connection) -> bool:
    """Tell whether any intent is ready to be signed."""
    found: bool = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM intents WHERE status = 'ready')"
    )
    return found


async def claim_ready(connection: asyncpg.Connection) -> Intent | None:
    """Lock and return the oldest ready intent no other transaction holds.

    Rows locked by a concurrent claim are skipped, not waited for, so
    several signers' transactions each take a different intent. The lock
    lasts until the caller's transaction ends; must run inside one.
    """
    row = await connection.fetchrow(
        "SELECT * FROM intents WHERE status = 'ready' "
        "ORDER BY ready_at NULLS LAST, id LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    return Intent.from_row(row) if row is not None else None


async def claim_ready_batch(connection: asyncpg.Connection, limit: int) -> list[Intent]:
    """Lock and return up to ``limit`` of the oldest ready intents, oldest first.

    Like :func:`claim_ready`, for a run of signatures in one transaction.
    """
    rows = await connection.fetch(
        "SELECT * FROM intents WHERE status = 'ready' "
        "ORDER BY ready_at NULLS LAST, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [Intent.from_row(row) for row in rows]


async def request_ids(
    connection: asyncpg.Connection, intent_ids: list[bytes]
) -> dict[bytes, str]:
    """Return the partner request id of each of ``intent_ids`` that has one."""
    rows = await connection.fetch(
        "SELECT id, request_id FROM intents "
        "WHERE id = ANY($1::bytea[]) AND request_id IS NOT NULL",
        intent_ids,
    )
    return {bytes(row["id"]): row["request_id"] for row in rows}


async def search(
    connection: asyncpg.Connection,
    *,
    status: str | None = None,
    partner: str | None = None,
    kind: str | None = None,
    wallet: str | None = None,
    signer: str | None = None,
    request_id: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    after: tuple[datetime, bytes] | None = None,
    limit: int,
) -> list[Intent]:
    """Return intents matching every filter given, newest first.

    ``created_to`` is exclusive; ``after`` is the (created_at, id) of the
    last intent of the previous page. Read-only.
    """
    rows = await connection.fetch(
        """
        SELECT * FROM intents
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR partner = $2)
           AND ($3::text IS NULL OR kind = $3)
           AND ($4::text IS NULL OR wallet = $4)
           AND ($5::text IS NULL OR signer = $5)
           AND ($6::text IS NULL OR request_id = $6)
           AND ($7::timestamptz IS NULL OR created_at >= $7)
           AND ($8::timestamptz IS NULL OR created_at < $8)
           AND ($9::timestamptz IS NULL OR (created_at, id) < ($9, $10::bytea))
         ORDER BY created_at DESC, id DESC
         LIMIT $11
        """,
        status,
        partner,
        kind,
        wallet,
        signer,
        request_id,
        created_from,
        created_to,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [Intent.from_row(row) for row in rows]


async def nonces_held(
    connection: asyncpg.Connection, signer: str, *, at_or_above: int, limit: int
) -> list[int]:
    """Return nonces of ``signer`` from ``at_or_above`` up that live intents hold.

    Live means ready, submitted or mined: a nonce such an intent holds may
    still be sent or be mined. Lowest first, at most ``limit``. Read-only.
    """
    rows = await connection.fetch(
        "SELECT nonce FROM intents WHERE signer = $1 AND nonce >= $2 "
        "AND status = ANY($3::text[]) ORDER BY nonce LIMIT $4",
        signer,
        at_or_above,
        [READY, SUBMITTED, MINED],
        limit,
    )
    return [row["nonce"] for row in rows]
