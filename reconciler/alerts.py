"""Alerts: the lifecycle and delivery of everything a person must look at.

Adopts ``alerts`` (created by the daemon's outbox migration, whose small
writer also raises alerts) and owns ``alert_lifecycle`` (who acknowledged,
resolved or accepted, and what was last sent), ``alert_events`` and
``alert_deliveries``. The lifecycle lives beside ``alerts`` rather than in
it so that the outbox's reader, which maps every column, keeps working.

An alert has a stable identity (rule, subject), a severity and evidence as
JSON. Lifecycle::

    open ──► acknowledged ──► resolved
      │            │              │ raised again: reopened (sent again)
      └────────────┴──► accepted (with a mandatory note)

A repeat with the same evidence only counts an occurrence; changed evidence
is sent again; a resolved alert raised again reopens and is sent again, as
is an accepted one whose evidence changed. "Same" is the digest of severity
and evidence, ignoring the ``observed`` measurements (see ``evidence``).

The intake's ``security_alerts`` are adopted too: each becomes one alert
(rule ``security.<kind>``) the first time the dispatcher sees it.

Delivery is by comparison, not by queue: an alert is due when it is open or
acknowledged and the digest last sent differs from its current one. That
makes alerts raised by any writer deliverable and a crash mid-send harmless
(the alert is simply still due). A channel that fails after its retries is
recorded and raises ``alert.delivery_failed`` for that channel, which is
sent through the other channels only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from loguru import logger

from haven import db, metrics
from haven.daemon import alerts_outbox
from haven.errors import HavenError
from haven.listeners import alerts as security_alerts
from haven.reconciler import breaks, channels
from haven.reconciler import evidence as ev

OPEN = "open"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
ACCEPTED = "accepted"
STATUSES = (OPEN, ACKNOWLEDGED, RESOLVED, ACCEPTED)
LIVE = (OPEN, ACKNOWLEDGED)

# Severities: the alerts table's own vocabulary.
CRITICAL = alerts_outbox.CRITICAL
WARNING = alerts_outbox.WARNING
INFO = alerts_outbox.INFO

# What raise_alert did.
NEW = "new"
REPEATED = "repeated"
CHANGED = "changed"
REOPENED = "reopened"

DELIVERY_FAILED_RULE = "alert.delivery_failed"
BREAK_RULE_PREFIX = "break."
SECURITY_RULE_PREFIX = "security."
# One dispatcher at a time across processes ("HAVENALR").
_DISPATCH_LOCK_KEY = 0x484156454E414C52
# Delivery-failure alerts raised while dispatching are sent in the next round;
# a few rounds cover "webhook failed, tell email" without looping forever.
_DISPATCH_ROUNDS = 3

_SELECT = """
SELECT a.*, l.acknowledged_at, l.acknowledged_by, l.resolved_at, l.resolved_by,
       l.accepted_at, l.accepted_by, l.accepted_sha256, l.note,
       l.notified_sha256, l.notified_at
  FROM alerts a LEFT JOIN alert_lifecycle l ON l.alert_id = a.id
"""
_LIFECYCLE_COLUMNS = frozenset(
    {
        "acknowledged_at",
        "acknowledged_by",
        "resolved_at",
        "resolved_by",
        "accepted_at",
        "accepted_by",
        "accepted_sha256",
        "note",
        "notified_sha256",
        "notified_at",
    }
)
_REOPEN = {
    "resolved_at": None,
    "resolved_by": None,
    "accepted_at": None,
    "accepted_by": None,
    "accepted_sha256": None,
    "notified_sha256": None,
}


class AlertStateError(HavenError, ValueError):
    """The alert is not in a status that allows the requested change."""


@dataclass(frozen=True)
class Alert:
    """An alert with its lifecycle."""

    id: int
    rule: str
    subject: str
    severity: str
    status: str
    evidence: ev.Evidence
    first_seen_at: datetime
    last_seen_at: datetime
    occurrences: int
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    accepted_at: datetime | None
    accepted_by: str | None
    accepted_sha256: bytes | None
    note: str | None
    notified_sha256: bytes | None
    notified_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Alert:
        evidence = row["evidence"]
        return cls(
            id=row["id"],
            rule=row["rule"],
            subject=row["subject"],
            severity=row["severity"],
            status=row["status"],
            evidence=evidence if isinstance(evidence, dict) else {},
            first_seen_at=row["first_seen_at"],
            last_seen_at=row["last_seen_at"],
            occurrences=row["occurrences"],
            acknowledged_at=row["acknowledged_at"],
            acknowledged_by=row["acknowledged_by"],
            resolved_at=row["resolved_at"],
            resolved_by=row["resolved_by"],
            accepted_at=row["accepted_at"],
            accepted_by=row["accepted_by"],
            accepted_sha256=_opt_bytes(row["accepted_sha256"]),
            note=row["note"],
            notified_sha256=_opt_bytes(row["notified_sha256"]),
            notified_at=row["notified_at"],
        )

    @property
    def digest(self) -> bytes:
        return ev.digest(self.evidence, self.severity)

    @property
    def is_due(self) -> bool:
        """Tell whether this version of the alert still has to be sent."""
        return self.status in LIVE and self.notified_sha256 != self.digest

    @property
    def event(self) -> str:
        """Name what a delivery of this version announces."""
        if self.notified_at is None:
            return "alert.opened"
        if self.notified_sha256 is None:
            return "alert.reopened"
        return "alert.changed"


def _opt_bytes(value: bytes | None) -> bytes | None:
    return bytes(value) if value is not None else None


# --- raising ---------------------------------------------------------------


async def raise_alert(
    connection: asyncpg.Connection,
    *,
    rule: str,
    subject: str,
    severity: str,
    evidence: ev.Evidence,
) -> tuple[Alert, str]:
    """Open the alert (rule, subject) or count a repeat; return it and what happened.

    Raising the same evidence again only counts an occurrence. Must run in
    the caller's transaction; nothing is sent here. Raises ValueError for a
    severity outside critical, warning, info.
    """
    if severity not in alerts_outbox.SEVERITIES:
        raise ValueError(
            f"alert severity must be one of {alerts_outbox.SEVERITIES}, "
            f"got {severity!r}"
        )
    alert_id = await connection.fetchval(
        """
        INSERT INTO alerts (rule, subject, severity, status, evidence,
                            first_seen_at, last_seen_at, occurrences)
        VALUES ($1, $2, $3, 'open', $4, now(), now(), 1)
        ON CONFLICT (rule, subject) DO NOTHING
        RETURNING id
        """,
        rule,
        subject,
        severity,
        evidence,
    )
    if alert_id is not None:
        await _record_event(connection, alert_id, None, OPEN, "reconciler")
        logger.info("alert opened", alert_id=alert_id, rule=rule, subject=subject)
        return await _get(connection, alert_id), NEW

    current = await _get_for_update(connection, rule, subject)
    is_changed = ev.digest(evidence, severity) != current.digest
    outcome = _outcome(current, is_changed)
    await connection.execute(
        """
        UPDATE alerts SET severity = $2, evidence = $3, last_seen_at = now(),
                          occurrences = occurrences + 1,
                          status = CASE WHEN $4 THEN 'open' ELSE status END
         WHERE id = $1
        """,
        current.id,
        severity,
        evidence,
        outcome == REOPENED,
    )
    if outcome == REOPENED:
        previous = RESOLVED if current.resolved_at is not None else None
        await _reopen(connection, current, by="reconciler", previous=previous)
    return await _get(connection, current.id), outcome


def _outcome(current: Alert, is_changed: bool) -> str:
    if current.status == RESOLVED or (current.status == ACCEPTED and is_changed):
        return REOPENED
    if current.status in LIVE and current.resolved_at is not None:
        # Reopened by another writer that does not keep the lifecycle.
        return REOPENED
    if is_changed and current.status in LIVE:
        return CHANGED
    return REPEATED


async def _reopen(
    connection: asyncpg.Connection,
    current: Alert,
    *,
    by: str,
    previous: str | None = None,
) -> None:
    await _set_lifecycle(connection, current.id, **_REOPEN)
    await _record_event(connection, current.id, previous or current.status, OPEN, by)
    logger.info("alert reopened", alert_id=current.id, rule=current.rule, by=by)


async def _get(connection: asyncpg.Connection, alert_id: int) -> Alert:
    row = await connection.fetchrow(_SELECT + " WHERE a.id = $1", alert_id)
    assert row is not None, f"alert {alert_id} vanished inside its transaction"
    return Alert.from_row(row)


async def _get_for_update(
    connection: asyncpg.Connection, rule: str, subject: str
) -> Alert:
    row = await connection.fetchrow(
        _SELECT + " WHERE a.rule = $1 AND a.subject = $2 FOR UPDATE OF a",
        rule,
        subject,
    )
    assert row is not None, "alert vanished between insert and select"
    return Alert.from_row(row)


async def _set_lifecycle(
    connection: asyncpg.Connection, alert_id: int, **columns: Any
) -> None:
    unknown = set(columns) - _LIFECYCLE_COLUMNS
    if unknown:
        raise ValueError(f"not lifecycle columns: {sorted(unknown)}")
    await connection.execute(
        "INSERT INTO alert_lifecycle (alert_id) VALUES ($1) "
        "ON CONFLICT (alert_id) DO NOTHING",
        alert_id,
    )
    names = list(columns)
    assignments = ", ".join(f"{name} = ${n + 2}" for n, name in enumerate(names))
    await connection.execute(
        f"UPDATE alert_lifecycle SET {assignments} WHERE alert_id = $1",
        alert_id,
        *(columns[name] for name in names),
    )


# --- lifecycle -------------------------------------------------------------


async def acknowledge(
    connection: asyncpg.Connection, alert_id: int, *, by: str
) -> Alert:
    """Mark an open alert as handled by ``by``; AlertStateError if it is not open."""
    return await _move(
        connection,
        alert_id,
        from_statuses=(OPEN,),
        to_status=ACKNOWLEDGED,
        by=by,
        note=None,
        stamps={"acknowledged_at": "now", "acknowledged_by": by},
    )


async def resolve(
    connection: asyncpg.Connection, alert_id: int, *, by: str, note: str | None = None
) -> Alert:
    """Close an alert as fixed; it reopens if raised again."""
    return await _move(
        connection,
        alert_id,
        from_statuses=(OPEN, ACKNOWLEDGED, ACCEPTED),
        to_status=RESOLVED,
        by=by,
        note=note,
        stamps={"resolved_at": "now", "resolved_by": by},
    )


async def accept(
    connection: asyncpg.Connection, alert_id: int, *, by: str, note: str
) -> Alert:
    """Accept an alert as known and tolerated; ``note`` saying why is mandatory.

    The acceptance holds for the current evidence: changed evidence reopens
    the alert. Accepting a break's alert also accepts the break, so it stops
    blocking a ``reconciled`` verdict until its evidence changes. Raises
    ValueError for an empty note, AlertStateError for a closed alert and
    LookupError for an unknown id.
    """
    if not note or not note.strip():
        raise ValueError("accepting an alert needs a non-empty note saying why")
    current = await connection.fetchrow(_SELECT + " WHERE a.id = $1", alert_id)
    digest = Alert.from_row(current).digest if current is not None else None
    alert = await _move(
        connection,
        alert_id,
        from_statuses=(OPEN, ACKNOWLEDGED),
        to_status=ACCEPTED,
        by=by,
        note=note,
        stamps={"accepted_at": "now", "accepted_by": by, "accepted_sha256": digest},
    )
    if alert.rule.startswith(BREAK_RULE_PREFIX):
        cls = alert.rule.removeprefix(BREAK_RULE_PREFIX)
        await breaks.accept(connection, cls, alert.subject, by=by, note=note)
    return alert


async def _move(
    connection: asyncpg.Connection,
    alert_id: int,
    *,
    from_statuses: tuple[str, ...],
    to_status: str,
    by: str,
    note: str | None,
    stamps: dict[str, Any],
) -> Alert:
    previous = await connection.fetchval(
        "SELECT status FROM alerts WHERE id = $1 FOR UPDATE", alert_id
    )
    if previous is None:
        raise LookupError(f"no alert with id {alert_id}")
    if previous not in from_statuses:
        raise AlertStateError(
            f"alert {alert_id} is {previous}; expected one of "
            f"{', '.join(from_statuses)} to make it {to_status}"
        )
    now = await connection.fetchval("SELECT now()")
    values = {k: now if v == "now" else v for k, v in stamps.items()}
    if note is not None:
        values["note"] = note
    await connection.execute(
        "UPDATE alerts SET status = $2 WHERE id = $1", alert_id, to_status
    )
    await _set_lifecycle(connection, alert_id, **values)
    await _record_event(connection, alert_id, previous, to_status, by, note)
    alert = await _get(connection, alert_id)
    logger.info(f"alert {to_status}", alert_id=alert_id, rule=alert.rule, by=by)
    return alert


async def resolve_identity(
    connection: asyncpg.Connection, rule: str, subject: str, *, by: str
) -> Alert | None:
    """Resolve the alert (rule, subject) unless it is resolved; None if none was."""
    alert_id = await connection.fetchval(
        "SELECT id FROM alerts WHERE rule = $1 AND subject = $2 AND status <> $3",
        rule,
        subject,
        RESOLVED,
    )
    if alert_id is None:
        return None
    return await resolve(connection, alert_id, by=by)


async def _record_event(
    connection: asyncpg.Connection,
    alert_id: int,
    from_status: str | None,
    to_status: str,
    actor: str,
    note: str | None = None,
) -> None:
    await connection.execute(
        "INSERT INTO alert_events (alert_id, from_status, to_status, actor, note) "
        "VALUES ($1, $2, $3, $4, $5)",
        alert_id,
        from_status,
        to_status,
        actor,
        note,
    )


# --- reading ---------------------------------------------------------------


async def get(connection: asyncpg.Connection, alert_id: int) -> Alert | None:
    row = await connection.fetchrow(_SELECT + " WHERE a.id = $1", alert_id)
    return Alert.from_row(row) if row is not None else None


async def find(
    connection: asyncpg.Connection,
    *,
    rule: str | None = None,
    subject: str | None = None,
    statuses: Sequence[str] | None = None,
) -> list[Alert]:
    """Return alerts matching every given filter, oldest first."""
    rows = await connection.fetch(
        _SELECT
        + """
         WHERE ($1::text IS NULL OR a.rule = $1)
           AND ($2::text IS NULL OR a.subject = $2)
           AND ($3::text[] IS NULL OR a.status = ANY($3::text[]))
         ORDER BY a.id
        """,
        rule,
        subject,
        list(statuses) if statuses is not None else None,
    )
    return [Alert.from_row(row) for row in rows]


async def page(
    connection: asyncpg.Connection,
    *,
    limit: int,
    before_id: int | None = None,
    rule: str | None = None,
    subject: str | None = None,
    statuses: Sequence[str] | None = None,
) -> list[Alert]:
    """Return up to ``limit`` matching alerts, newest first, below ``before_id``.

    Reads ``limit`` rows at most: ask for one more than a page to learn
    whether another page follows.
    """
    rows = await connection.fetch(
        _SELECT
        + """
         WHERE ($1::text IS NULL OR a.rule = $1)
           AND ($2::text IS NULL OR a.subject = $2)
           AND ($3::text[] IS NULL OR a.status = ANY($3::text[]))
           AND ($4::bigint IS NULL OR a.id < $4)
         ORDER BY a.id DESC
         LIMIT $5
        """,
        rule,
        subject,
        list(statuses) if statuses is not None else None,
        before_id,
        limit,
    )
    return [Alert.from_row(row) for row in rows]


async def history(
    connection: asyncpg.Connection, alert_id: int
) -> list[dict[str, Any]]:
    """Return the lifecycle changes of an alert, oldest first."""
    rows = await connection.fetch(
        "SELECT from_status, to_status, actor, note, at FROM alert_events "
        "WHERE alert_id = $1 ORDER BY id",
        alert_id,
    )
    return [dict(row) for row in rows]


async def deliveries(
    connection: asyncpg.Connection, alert_id: int | None = None
) -> list[dict[str, Any]]:
    """Return recorded delivery outcomes (of one alert, or all), oldest first."""
    rows = await connection.fetch(
        "SELECT alert_id, channel, event, message_id, delivered, attempts, error, at "
        "FROM alert_deliveries WHERE ($1::bigint IS NULL OR alert_id = $1) "
        "ORDER BY id",
        alert_id,
    )
    return [dict(row) for row in rows]


# --- delivery --------------------------------------------------------------


@dataclass(frozen=True)
class Dispatcher:
    """Sends due alerts through channels, with retries per delivery."""

    destinations: tuple[channels.Channel, ...]
    attempts: int = 4
    backoff_s: float = 2.0

    async def dispatch(self, pool: asyncpg.Pool) -> list[channels.DeliveryResult]:
        """Send every due alert once; return the delivery outcomes.

        Does nothing (returns []) while another process is dispatching. Safe
        to cancel: an alert whose send did not complete stays due.
        """
        if not self.destinations:
            return []
        async with db.translate_errors(), pool.acquire() as connection:
            locked = await connection.fetchval(
                "SELECT pg_try_advisory_lock($1)", _DISPATCH_LOCK_KEY
            )
            if not locked:
                return []
            try:
                return await self._rounds(connection)
            finally:
                await connection.execute(
                    "SELECT pg_advisory_unlock($1)", _DISPATCH_LOCK_KEY
                )

    async def _rounds(
        self, connection: asyncpg.Connection
    ) -> list[channels.DeliveryResult]:
        async with connection.transaction():
            await _adopt_security_alerts(connection)
            await _catch_up_other_writers(connection)
        results: list[channels.DeliveryResult] = []
        tried: set[tuple[int, bytes]] = set()
        for _ in range(_DISPATCH_ROUNDS):
            due = [
                alert
                for alert in await find(connection, statuses=LIVE)
                if alert.is_due and (alert.id, alert.digest) not in tried
            ]
            if not due:
                break
            for alert in due:
                tried.add((alert.id, alert.digest))
                results += await self._send(connection, alert)
        return results

    async def _send(
        self, connection: asyncpg.Connection, alert: Alert
    ) -> list[channels.DeliveryResult]:
        digest = alert.digest
        message = channels.render(alert, event=alert.event, digest_hex=digest.hex())
        targets = [c for c in self.destinations if not _is_own_failure(alert, c.name)]
        results = [
            await channels.deliver(
                channel, message, attempts=self.attempts, backoff_s=self.backoff_s
            )
            for channel in targets
        ]
        async with connection.transaction():
            for result in results:
                await _record_delivery(connection, alert, message, result)
                await _follow_channel_health(connection, result)
            if not targets or any(r.is_delivered for r in results):
                await _mark_notified(connection, alert.id, digest)
        _log_outcome(alert, message, results)
        return results


def _is_own_failure(alert: Alert, channel: str) -> bool:
    # A channel's own failure alert must reach people by another channel.
    return alert.rule == DELIVERY_FAILED_RULE and alert.subject == channel


async def _follow_channel_health(
    connection: asyncpg.Connection, result: channels.DeliveryResult
) -> None:
    if result.is_delivered:
        await resolve_identity(
            connection, DELIVERY_FAILED_RULE, result.channel, by="dispatcher"
        )
        return
    await raise_alert(
        connection,
        rule=DELIVERY_FAILED_RULE,
        subject=result.channel,
        severity=CRITICAL,
        evidence={
            "channel": result.channel,
            ev.OBSERVED: {"error": result.error, "attempts": result.attempts},
        },
    )


async def _record_delivery(
    connection: asyncpg.Connection,
    alert: Alert,
    message: channels.Message,
    result: channels.DeliveryResult,
) -> None:
    outcome = "sent" if result.is_delivered else "failed"
    metrics.ALERT_DELIVERIES.labels(result.channel, outcome).inc()
    await connection.execute(
        """
        INSERT INTO alert_deliveries (alert_id, channel, event, message_id,
                                      evidence_sha256, delivered, attempts, error)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        alert.id,
        result.channel,
        message.event,
        message.message_id,
        alert.digest,
        result.is_delivered,
        result.attempts,
        result.error,
    )


async def _mark_notified(
    connection: asyncpg.Connection, alert_id: int, digest: bytes
) -> None:
    now = await connection.fetchval("SELECT now()")
    await _set_lifecycle(connection, alert_id, notified_sha256=digest, notified_at=now)


async def _adopt_security_alerts(connection: asyncpg.Connection) -> None:
    # The intake records security events in its own table and leaves
    # notifying to us: each becomes one alert, raised once, whatever its
    # lifecycle here becomes afterwards.
    for row in await security_alerts.open_alerts(connection):
        rule = f"{SECURITY_RULE_PREFIX}{row['kind']}"
        subject = f"{row['partner'] or '-'}:{row['subject'] or '-'}:#{row['id']}"
        if await find(connection, rule=rule, subject=subject):
            continue
        await raise_alert(
            connection,
            rule=rule,
            subject=subject,
            severity=CRITICAL,
            evidence={
                "security_alert_id": row["id"],
                "kind": row["kind"],
                "partner": row["partner"],
                "subject": row["subject"],
                "detail": row["detail"],
                "request_id": row["request_id"],
                "raised_at": ev.timestamp(row["raised_at"]),
            },
        )


async def _catch_up_other_writers(connection: asyncpg.Connection) -> None:
    # The daemon's outbox reopens a resolved alert without the lifecycle, and
    # replaces the evidence of an accepted one without reopening it: apply
    # the lifecycle's rules to what it wrote before anything is sent.
    for alert in await find(connection, statuses=(*LIVE, ACCEPTED)):
        if alert.status in LIVE and alert.resolved_at is not None:
            await _reopen(connection, alert, by="dispatcher", previous=RESOLVED)
        elif alert.status == ACCEPTED and alert.accepted_sha256 != alert.digest:
            await connection.execute(
                "UPDATE alerts SET status = 'open' WHERE id = $1", alert.id
            )
            await _reopen(connection, alert, by="dispatcher")


def _log_outcome(
    alert: Alert, message: channels.Message, results: list[channels.DeliveryResult]
) -> None:
    bound = logger.bind(alert_id=alert.id, rule=alert.rule, event=message.event)
    for result in results:
        if result.is_delivered:
            bound.info("alert sent", channel=result.channel, attempts=result.attempts)
        else:
            bound.error(
                "alert not delivered; check the channel's endpoint and credentials",
                channel=result.channel,
                error=result.error,
            )
