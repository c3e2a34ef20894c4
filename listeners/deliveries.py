"""Webhook deliveries: the ``webhook_deliveries`` table, which makes retries safe.

A delivery is identified by (partner, ``webhook-id``). Its first accepted
answer is stored with the SHA-256 of its raw body and of its canonical JSON,
and kept for at least :data:`RETENTION_S`. The same id with the same body (raw
or canonical) gets that answer again; the same id with another body is a
conflict. Only accepted (202) answers are stored: a refused delivery may be
corrected and sent again under the same id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from haven import db
from haven.listeners.answers import Answer

RETENTION_S = 30 * 24 * 3600
REPLAY_HEADER = "Haven-Replayed"


@dataclass(frozen=True)
class Delivery:
    """One delivery as received, identified by partner and delivery id.

    ``canonical_sha256`` is None when the body is not a JSON document.
    ``source`` is ``webhook`` or ``backfill``.
    """

    partner: str
    delivery_id: str
    body_sha256: bytes
    canonical_sha256: bytes | None
    source: str
    request_id: str | None

    @classmethod
    def of(
        cls,
        partner: str,
        delivery_id: str,
        body: bytes,
        canonical_body: bytes | None,
        *,
        source: str,
        request_id: str | None,
    ) -> Delivery:
        """Build a Delivery, hashing ``body`` and its canonical form."""
        return cls(
            partner=partner,
            delivery_id=delivery_id,
            body_sha256=hashlib.sha256(body).digest(),
            canonical_sha256=(
                hashlib.sha256(canonical_body).digest()
                if canonical_body is not None
                else None
            ),
            source=source,
            request_id=request_id,
        )


@dataclass(frozen=True)
class StoredDelivery:
    """A delivery already answered, as stored."""

    partner: str
    delivery_id: str
    body_sha256: bytes
    canonical_sha256: bytes | None
    source: str
    status_code: int
    response: dict[str, Any]

    def is_same_body(self, delivery: Delivery) -> bool:
        """Tell whether ``delivery`` carries the body this one was answered for."""
        if self.body_sha256 == delivery.body_sha256:
            return True
        return (
            self.canonical_sha256 is not None
            and self.canonical_sha256 == delivery.canonical_sha256
        )

    def replay(self) -> Answer:
        """Return the stored answer again, marked as a replay."""
        return Answer(
            status_code=self.status_code,
            body=self.response,
            outcome="replayed",
            reason=f"same delivery as the {self.source} first answered",
            headers={REPLAY_HEADER: "true"},
        )


async def get(
    connection: asyncpg.Connection, partner: str, delivery_id: str
) -> StoredDelivery | None:
    """Return the stored delivery of (partner, delivery id), if any."""
    row = await connection.fetchrow(
        "SELECT * FROM webhook_deliveries WHERE partner = $1 AND delivery_id = $2",
        partner,
        delivery_id,
    )
    if row is None:
        return None
    return StoredDelivery(
        partner=row["partner"],
        delivery_id=row["delivery_id"],
        body_sha256=bytes(row["body_sha256"]),
        canonical_sha256=(
            bytes(row["canonical_sha256"]) if row["canonical_sha256"] else None
        ),
        source=row["source"],
        status_code=row["status_code"],
        response=row["response"],
    )


async def claim(connection: asyncpg.Connection, delivery: Delivery) -> bool:
    """Reserve the delivery id inside the caller's transaction; False if taken.

    A concurrent claim of the same id waits here until the first transaction
    ends, then returns False if it committed: exactly one claimant applies a
    delivery, the others read its answer. The placeholder answer is replaced
    by the intake's closing statement before the transaction commits.
    """
    return bool(await claim_many(connection, [delivery]))


async def claim_many(
    connection: asyncpg.Connection, deliveries: Sequence[Delivery]
) -> set[tuple[str, str]]:
    """Reserve several delivery ids as :func:`claim` does; return the (partner,
    delivery id) pairs reserved, the others being taken.

    The ids must be distinct. They are claimed in (partner, id) order, the
    order every claimant takes, so that two batches sharing ids wait for one
    another instead of deadlocking.
    """
    keys = [(d.partner, d.delivery_id) for d in deliveries]
    if len(set(keys)) != len(keys):
        raise ValueError("a batch of deliveries must not repeat a delivery id")
    rows = await connection.fetch(
        """
        INSERT INTO webhook_deliveries (partner, delivery_id, body_sha256,
                                        canonical_sha256, source, request_id,
                                        status_code, response)
        SELECT partner, delivery_id, body_sha256, canonical_sha256, source,
               request_id, 0, '{}'
          FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[],
                      $5::text[], $6::text[])
               AS claim (partner, delivery_id, body_sha256, canonical_sha256,
                         source, request_id)
         ORDER BY partner, delivery_id
        ON CONFLICT (partner, delivery_id) DO NOTHING
        RETURNING partner, delivery_id
        """,
        [d.partner for d in deliveries],
        [d.delivery_id for d in deliveries],
        [d.body_sha256 for d in deliveries],
        [d.canonical_sha256 for d in deliveries],
        [d.source for d in deliveries],
        [d.request_id for d in deliveries],
    )
    return {(row["partner"], row["delivery_id"]) for row in rows}


async def prune(pool: asyncpg.Pool, *, older_than_s: int = RETENTION_S) -> int:
    """Delete deliveries received more than ``older_than_s`` ago; return how many.

    Never deletes anything younger than seven days, whatever is asked. Safe
    to run from several processes at once.
    """
    older_than_s = max(older_than_s, 7 * 24 * 3600)
    async with db.translate_errors():
        status = await pool.execute(
            "DELETE FROM webhook_deliveries "
            "WHERE received_at < now() - make_interval(secs => $1)",
            float(older_than_s),
        )
    return int(status.split()[-1])
