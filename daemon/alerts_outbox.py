"""The daemon's alert outbox: the only module that talks SQL to ``alerts``.

An alert is a fact a person must look at, identified by (rule, subject): a
repeat of the same alert is one row whose ``occurrences`` and
``last_seen_at`` move, never a second row. Notifying anyone is the alerting
system's job, which will adopt this table; this module only records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

CRITICAL = "critical"
WARNING = "warning"
INFO = "info"
SEVERITIES = (CRITICAL, WARNING, INFO)


@dataclass(frozen=True)
class Alert:
    id: int
    rule: str
    subject: str
    severity: str
    status: str
    evidence: dict[str, Any]
    first_seen_at: datetime
    last_seen_at: datetime
    occurrences: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Alert:
        return cls(**dict(row))


async def raise_alert(
    conn: asyncpg.Connection,
    rule: str,
    subject: str,
    severity: str,
    evidence: dict[str, Any],
) -> Alert:
    """Record an alert, or count one more occurrence of the same (rule, subject).

    Idempotent in identity: the evidence of the latest occurrence replaces the
    previous one, and a resolved alert that fires again is open again. Runs in
    the caller's transaction, so an alert is never recorded for work that was
    rolled back.
    """
    if severity not in SEVERITIES:
        raise ValueError(
            f"alert severity must be one of {SEVERITIES}, got {severity!r}"
        )
    row = await conn.fetchrow(
        """
        INSERT INTO alerts (rule, subject, severity, evidence)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (rule, subject) DO UPDATE
           SET occurrences = alerts.occurrences + 1,
               last_seen_at = now(),
               severity = EXCLUDED.severity,
               evidence = EXCLUDED.evidence,
               status = CASE WHEN alerts.status = 'resolved' THEN 'open'
                             ELSE alerts.status END
        RETURNING *
        """,
        rule,
        subject,
        severity,
        evidence,
    )
    return Alert.from_row(row)


async def find(
    conn: asyncpg.Connection, *, rule: str | None = None, subject: str | None = None
) -> list[Alert]:
    """Return the alerts matching ``rule`` and ``subject`` (None matches any)."""
    rows = await conn.fetch(
        "SELECT * FROM alerts WHERE ($1::text IS NULL OR rule = $1) "
        "AND ($2::text IS NULL OR subject = $2) ORDER BY id",
        rule,
        subject,
    )
    return [Alert.from_row(row) for row in rows]
