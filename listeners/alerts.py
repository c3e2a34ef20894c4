"""Security alerts raised by the intake: the ``security_alerts`` table.

An alert is a fact a person must look at, recorded in the same transaction
as what caused it. This module only records them; notifying anyone is the
alerting system's job, which is expected to adopt this table.
"""

from __future__ import annotations

from typing import Any

import asyncpg

DELIVERY_ID_REUSED = "delivery_id_reused"


async def record(
    connection: asyncpg.Connection,
    *,
    kind: str,
    partner: str | None,
    subject: str | None,
    detail: dict[str, Any],
    request_id: str | None,
) -> int:
    """Record one alert and return its id. Not idempotent: each call is one alert."""
    alert_id: int = await connection.fetchval(
        """
        INSERT INTO security_alerts (kind, partner, subject, detail, request_id)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING id
        """,
        kind,
        partner,
        subject,
        detail,
        request_id,
    )
    return alert_id


async def open_alerts(
    connection: asyncpg.Connection, *, kind: str | None = None
) -> list[dict[str, Any]]:
    """Return the alerts nobody has acknowledged yet, oldest first."""
    rows = await connection.fetch(
        "SELECT id, kind, partner, subject, detail, request_id, raised_at "
        "FROM security_alerts WHERE acknowledged_at IS NULL "
        "AND ($1::text IS NULL OR kind = $1) ORDER BY id",
        kind,
    )
    return [dict(row) for row in rows]
