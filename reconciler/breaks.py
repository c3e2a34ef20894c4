"""Breaks: what does not reconcile, and the only module that talks SQL to ``breaks``.

A break has a stable identity, its class and subject (an intent id, a signer
or the token address), so the same problem seen by many runs is one row
whose ``first_seen_at`` drives aging. A complete run that no longer sees a
break resolves it; seeing it again opens a new episode (first seen anew).
An operator may accept a break with a note: the acceptance holds for the
evidence it was given and lapses when the evidence changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from haven.reconciler import evidence as ev

UNEXPECTED_MINT = "unexpected_mint"
DUPLICATE_MINT = "duplicate_mint"
REORGED_OUT = "reorged_out"
AMOUNT_MISMATCH = "amount_mismatch"
RECIPIENT_MISMATCH = "recipient_mismatch"
REVERSED_AFTER_MINT = "reversed_after_mint"
MISSING_ON_CHAIN = "missing_on_chain"
STALE_INTENT = "stale_intent"
SUPPLY_DRIFT = "supply_drift"
LOW_SIGNER_BALANCE = "low_signer_balance"

P1, P2, P3, WARNING = "P1", "P2", "P3", "warning"
PRIORITY_ORDER = (P1, P2, P3, WARNING)
# Priorities that stop a run from being reconciled; warnings only inform.
BLOCKING = (P1, P2, P3)
# The severity a break's alert carries, in the alerts table's vocabulary
# (critical, warning, info): money wrong is critical, money late a warning.
ALERT_SEVERITY = {P1: "critical", P2: "critical", P3: "warning", WARNING: "warning"}

PRIORITY = {
    UNEXPECTED_MINT: P1,
    DUPLICATE_MINT: P1,
    REORGED_OUT: P1,
    SUPPLY_DRIFT: P1,
    AMOUNT_MISMATCH: P2,
    RECIPIENT_MISMATCH: P2,
    REVERSED_AFTER_MINT: P2,
    MISSING_ON_CHAIN: P3,
    STALE_INTENT: P3,
    LOW_SIGNER_BALANCE: WARNING,
}
CLASSES = tuple(PRIORITY)

# Aging buckets by whole days of age: (label, first day, last day).
AGE_BUCKETS = (
    ("under_1d", 0, 0),
    ("1_7d", 1, 7),
    ("8_30d", 8, 30),
    ("over_30d", 31, None),
)
DAY_S = 86_400


@dataclass(frozen=True)
class Break:
    """One break found at a cut; ``accepted`` is as of that cut."""

    cls: str
    subject: str
    evidence: ev.Evidence
    accepted: bool = False

    @property
    def priority(self) -> str:
        return PRIORITY[self.cls]

    @property
    def key(self) -> tuple[str, str]:
        return (self.cls, self.subject)

    @property
    def digest(self) -> bytes:
        return ev.digest(self.evidence)

    @property
    def is_blocking(self) -> bool:
        return self.priority in BLOCKING and not self.accepted

    def sort_key(self) -> tuple[int, str, str]:
        return (PRIORITY_ORDER.index(self.priority), self.cls, self.subject)

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.cls,
            "priority": self.priority,
            "subject": self.subject,
            "accepted": self.accepted,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class StoredBreak:
    """A row of ``breaks``."""

    cls: str
    subject: str
    priority: str
    evidence: ev.Evidence
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    accepted_at: datetime | None
    accepted_by: str | None
    accepted_note: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> StoredBreak:
        return cls(
            cls=row["class"],
            subject=row["subject"],
            priority=row["priority"],
            evidence=row["evidence"],
            first_seen_at=row["first_seen_at"],
            last_seen_at=row["last_seen_at"],
            resolved_at=row["resolved_at"],
            accepted_at=row["accepted_at"],
            accepted_by=row["accepted_by"],
            accepted_note=row["accepted_note"],
        )


def age_bucket(age_s: int) -> str:
    """Return the aging bucket of an age in seconds (negative counts as zero)."""
    days = max(age_s, 0) // DAY_S
    for label, first, last in AGE_BUCKETS:
        if days >= first and (last is None or days <= last):
            return label
    raise AssertionError(f"no bucket for {days} days")


def age_text(age_s: int) -> str:
    """Render an age in seconds for people: whole days, hours or minutes."""
    if age_s >= DAY_S:
        return f"{age_s // DAY_S}d"
    if age_s >= 3600:
        return f"{age_s // 3600}h"
    return f"{age_s // 60}m"


async def accepted_as_of(
    connection: asyncpg.Connection, at: datetime
) -> dict[tuple[str, str], bytes]:
    """Return {(class, subject): accepted digest} of acceptances made by ``at``."""
    rows = await connection.fetch(
        "SELECT class, subject, accepted_sha256 FROM breaks "
        "WHERE accepted_at IS NOT NULL AND accepted_at <= $1",
        at,
    )
    return {(r["class"], r["subject"]): bytes(r["accepted_sha256"]) for r in rows}


async def record_seen(
    connection: asyncpg.Connection, found: list[Break], *, at: datetime
) -> list[Break]:
    """Upsert the breaks seen by a run at ``at``; return those that (re)opened.

    Idempotent for one cut: recording the same breaks at the same time again
    changes nothing. A resolved break seen again starts a new episode.
    """
    opened = []
    for brk in found:
        previous = await connection.fetchrow(
            "SELECT resolved_at FROM breaks WHERE class = $1 AND subject = $2 "
            "FOR UPDATE",
            brk.cls,
            brk.subject,
        )
        await connection.execute(
            """
            INSERT INTO breaks AS b (class, subject, priority, evidence,
                                     evidence_sha256, first_seen_at, last_seen_at)
            VALUES ($1, $2, $3, $4, $5, $6, $6)
            ON CONFLICT (class, subject) DO UPDATE SET
                priority = EXCLUDED.priority,
                evidence = EXCLUDED.evidence,
                evidence_sha256 = EXCLUDED.evidence_sha256,
                first_seen_at = CASE WHEN b.resolved_at IS NULL THEN b.first_seen_at
                                     ELSE EXCLUDED.first_seen_at END,
                last_seen_at = greatest(b.last_seen_at, EXCLUDED.last_seen_at),
                resolved_at = NULL
            """,
            brk.cls,
            brk.subject,
            brk.priority,
            brk.evidence,
            brk.digest,
            at,
        )
        if previous is None or previous["resolved_at"] is not None:
            opened.append(brk)
    return opened


async def resolve_unseen(
    connection: asyncpg.Connection, seen: list[Break], *, at: datetime
) -> list[tuple[str, str]]:
    """Resolve the open breaks a complete run at ``at`` did not see; return them."""
    rows = await connection.fetch(
        """
        UPDATE breaks SET resolved_at = $3
         WHERE resolved_at IS NULL
           AND (class, subject) NOT IN (
                SELECT * FROM unnest($1::text[], $2::text[]))
        RETURNING class, subject
        """,
        [b.cls for b in seen],
        [b.subject for b in seen],
        at,
    )
    return sorted((r["class"], r["subject"]) for r in rows)


async def accept(
    connection: asyncpg.Connection, cls: str, subject: str, *, by: str, note: str
) -> StoredBreak | None:
    """Accept the break's current evidence with a note; None if no such break."""
    if not note.strip():
        raise ValueError("accepting a break needs a non-empty note")
    row = await connection.fetchrow(
        """
        UPDATE breaks SET accepted_at = now(), accepted_by = $3,
                          accepted_note = $4, accepted_sha256 = evidence_sha256
         WHERE class = $1 AND subject = $2
        RETURNING *
        """,
        cls,
        subject,
        by,
        note,
    )
    return StoredBreak.from_row(row) if row is not None else None


async def get(
    connection: asyncpg.Connection, cls: str, subject: str
) -> StoredBreak | None:
    row = await connection.fetchrow(
        "SELECT * FROM breaks WHERE class = $1 AND subject = $2", cls, subject
    )
    return StoredBreak.from_row(row) if row is not None else None


async def first_seen(
    connection: asyncpg.Connection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], datetime]:
    """Return when each break's current episode was first seen."""
    rows = await connection.fetch(
        """
        SELECT class, subject, first_seen_at FROM breaks
         WHERE (class, subject) IN (SELECT * FROM unnest($1::text[], $2::text[]))
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["class"], r["subject"]): r["first_seen_at"] for r in rows}


async def open_breaks(connection: asyncpg.Connection) -> list[StoredBreak]:
    """Return unresolved breaks, oldest first."""
    rows = await connection.fetch(
        "SELECT * FROM breaks WHERE resolved_at IS NULL "
        "ORDER BY first_seen_at, class, subject"
    )
    return [StoredBreak.from_row(row) for row in rows]
