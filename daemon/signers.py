"""Signer rows: the only module that talks SQL to ``signers``.

A signer is a custodial key (encrypted; see :mod:`haven.daemon.custody`)
with a status and the next nonce the daemon will use for it. The row is
also the lock that serialises everything done with one key: allocating a
nonce, re-pricing, changing its status. ``next_nonce`` only moves in the
transaction that records the attempt using it (:mod:`haven.daemon.nonces`).

Statuses: active (takes new intents) → draining (finishes its nonces, takes
no new intents) → revoked (minter role withdrawn; never used again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from haven.types import ChecksumAddress, Nonce

ACTIVE = "active"
DRAINING = "draining"
REVOKED = "revoked"
WORKING = (ACTIVE, DRAINING)


@dataclass(frozen=True)
class SignerRow:
    address: ChecksumAddress
    status: str
    next_nonce: Nonce
    created_at: datetime
    revoked_at: datetime | None
    # Ciphertext, but still nobody's business in a log line.
    encrypted_key: bytes = field(repr=False)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> SignerRow:
        return cls(
            address=ChecksumAddress(row["address"]),
            status=row["status"],
            next_nonce=Nonce(row["next_nonce"]),
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            encrypted_key=bytes(row["encrypted_key"]),
        )


async def insert(
    conn: asyncpg.Connection, address: ChecksumAddress, encrypted_key: bytes
) -> SignerRow | None:
    """Add an active signer; return None if the address is already known."""
    row = await conn.fetchrow(
        "INSERT INTO signers (address, encrypted_key, status) "
        "VALUES ($1, $2, 'active') ON CONFLICT (address) DO NOTHING RETURNING *",
        address,
        encrypted_key,
    )
    return SignerRow.from_row(row) if row is not None else None


async def get(
    conn: asyncpg.Connection, address: str, *, for_update: bool = False
) -> SignerRow | None:
    """Return the signer at ``address``, optionally locking its row."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT * FROM signers WHERE address = $1{lock}", address
    )
    return SignerRow.from_row(row) if row is not None else None


async def listing(
    conn: asyncpg.Connection, statuses: Sequence[str] | None = None
) -> list[SignerRow]:
    """Return the signers in ``statuses`` (all when None), oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM signers WHERE $1::text[] IS NULL OR status = ANY($1::text[]) "
        "ORDER BY created_at, address",
        list(statuses) if statuses is not None else None,
    )
    return [SignerRow.from_row(row) for row in rows]


async def set_status(conn: asyncpg.Connection, address: str, status: str) -> None:
    """Move a signer to ``status``; revoking stamps ``revoked_at``."""
    await conn.execute(
        "UPDATE signers SET status = $2, "
        "revoked_at = CASE WHEN $2 = 'revoked' THEN now() ELSE revoked_at END "
        "WHERE address = $1",
        address,
        status,
    )


async def set_next_nonce(conn: asyncpg.Connection, address: str, nonce: int) -> None:
    """Set the next nonce; only nonces.py calls this, under the row lock."""
    await conn.execute(
        "UPDATE signers SET next_nonce = $2 WHERE address = $1", address, nonce
    )


async def replace_key(
    conn: asyncpg.Connection, address: str, encrypted_key: bytes
) -> None:
    """Store a re-encrypted key (master key rotation); the plaintext is unchanged."""
    await conn.execute(
        "UPDATE signers SET encrypted_key = $2 WHERE address = $1",
        address,
        encrypted_key,
    )
