"""The admin audit log: the only module that talks SQL to ``admin_audit``.

Every request to the admin API leaves exactly one row: who (a key
fingerprint, never the key), what (a stable action name, the method and
path, the subject), when, the outcome and status, the request id. A request
refused for want of a valid key is recorded as ``anonymous``. Rows are
never updated or deleted by haven.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

SUCCEEDED = "succeeded"
REFUSED = "refused"
UNAUTHORIZED = "unauthorized"
FAILED = "failed"
ANONYMOUS = "anonymous"

MAX_PATH_LENGTH = 500
MAX_SUBJECT_LENGTH = 200


def _printable(text: str, max_length: int) -> str:
    # Paths come from clients: PostgreSQL text cannot hold NUL, and a log
    # line should not carry control characters.
    cleaned = "".join(ch if ch.isprintable() else "\ufffd" for ch in text)
    return cleaned[:max_length]


def outcome_of(status_code: int) -> str:
    """Return the outcome word of an HTTP status."""
    if status_code == 401:
        return UNAUTHORIZED
    if status_code >= 500:
        return FAILED
    if status_code >= 400:
        return REFUSED
    return SUCCEEDED


@dataclass(frozen=True)
class Entry:
    """One audited admin request."""

    actor: str
    action: str
    method: str
    path: str
    subject: str | None
    status_code: int
    request_id: str
    remote_addr: str | None = None
    detail: dict[str, Any] | None = None

    @property
    def outcome(self) -> str:
        return outcome_of(self.status_code)


@dataclass(frozen=True)
class Row:
    """A stored row of ``admin_audit``."""

    id: int
    at: datetime
    actor: str
    action: str
    method: str
    path: str
    subject: str | None
    outcome: str
    status_code: int
    detail: dict[str, Any]
    request_id: str
    remote_addr: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Row:
        return cls(**dict(row))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "method": self.method,
            "path": self.path,
            "subject": self.subject,
            "outcome": self.outcome,
            "status_code": self.status_code,
            "detail": self.detail,
            "request_id": self.request_id,
        }


async def record(connection: asyncpg.Connection | asyncpg.Pool, entry: Entry) -> int:
    """Append one row and return its id. Not idempotent: each call is one row.

    Pass the connection of the transaction that makes the change, so the
    row commits or rolls back with it.
    """
    row_id: int = await connection.fetchval(
        """
        INSERT INTO admin_audit (actor, action, method, path, subject, outcome,
                                 status_code, detail, request_id, remote_addr)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING id
        """,
        entry.actor,
        entry.action,
        entry.method,
        _printable(entry.path, MAX_PATH_LENGTH),
        _printable(entry.subject, MAX_SUBJECT_LENGTH) if entry.subject else None,
        entry.outcome,
        entry.status_code,
        entry.detail or {},
        entry.request_id,
        entry.remote_addr,
    )
    return row_id


async def search(
    connection: asyncpg.Connection,
    *,
    actor: str | None = None,
    action_prefix: str | None = None,
    subject: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Row]:
    """Return rows newest first, filtered; page with ``before_id`` (exclusive)."""
    rows = await connection.fetch(
        """
        SELECT id, at, actor, action, method, path, subject, outcome,
               status_code, detail, request_id, remote_addr
          FROM admin_audit
         WHERE ($1::text IS NULL OR actor = $1)
           AND ($2::text IS NULL OR starts_with(action, $2))
           AND ($3::text IS NULL OR subject = $3)
           AND ($4::bigint IS NULL OR id < $4)
         ORDER BY id DESC
         LIMIT $5
        """,
        actor,
        action_prefix,
        subject,
        before_id,
        limit,
    )
    return [Row.from_row(row) for row in rows]
