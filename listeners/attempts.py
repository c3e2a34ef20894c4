"""The attempt log: the ``webhook_attempts`` table, one row per partner request.

Every request to a webhook endpoint lands here, accepted or not, with the
partner, the claimed delivery id, the status, a stable outcome code and a
human reason. Nothing secret is ever written: no secret, no signature
header, no body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg
from loguru import logger

from haven import db
from haven.errors import DatabaseUnavailableError
from haven.listeners.answers import Answer

_PARTNER_NAME = re.compile(r"[a-z0-9_-]{1,32}")
UNREADABLE_PARTNER = "(unreadable)"
MAX_REASON_LENGTH = 500


@dataclass
class Attempt:
    """What is known about a request so far; filled in as it is processed."""

    partner: str
    request_id: str
    remote_addr: str | None
    delivery_id: str | None = None
    # Set once the row is committed, by the intake transaction of an
    # accepted delivery, so that it is not written twice.
    logged: bool = False

    @classmethod
    def begin(
        cls, partner_path: str, request_id: str, remote_addr: str | None
    ) -> Attempt:
        """Start the attempt of a request to ``/webhooks/<partner_path>``.

        A partner segment that is not a plausible name is stored as
        ``(unreadable)``: it came from the client and may hold anything.
        """
        partner = partner_path
        if not _PARTNER_NAME.fullmatch(partner_path):
            partner = UNREADABLE_PARTNER
        return cls(partner, request_id, remote_addr)


# The columns of an attempt row, in the order :func:`columns` gives values.
COLUMNS = "partner, delivery_id, status_code, outcome, reason, remote_addr, request_id"


def columns(attempt: Attempt, answer: Answer) -> tuple[object, ...]:
    """The values of the attempt's row, in the order of :data:`COLUMNS`."""
    return (
        attempt.partner,
        attempt.delivery_id,
        answer.status_code,
        answer.outcome,
        (answer.reason or "")[:MAX_REASON_LENGTH] or None,
        attempt.remote_addr,
        attempt.request_id,
    )


async def record(pool: asyncpg.Pool, attempt: Attempt, answer: Answer) -> None:
    """Write the attempt with its answer. Never raises for an unreachable database.

    The caller is answering the client either way, so a lost row is logged
    as a warning rather than turned into an error. An attempt already
    written by the intake transaction (``attempt.logged``) is not written
    again.
    """
    if attempt.logged:
        return
    try:
        async with db.translate_errors():
            await pool.execute(
                f"INSERT INTO webhook_attempts ({COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                *columns(attempt, answer),
            )
    except DatabaseUnavailableError:
        logger.warning(
            "attempt not logged: database unavailable; the answer is sent anyway",
            partner=attempt.partner,
            delivery_id=attempt.delivery_id,
            status_code=answer.status_code,
        )


async def prune(pool: asyncpg.Pool, *, older_than_s: int) -> int:
    """Delete attempts older than ``older_than_s``; return how many."""
    async with db.translate_errors():
        status = await pool.execute(
            "DELETE FROM webhook_attempts "
            "WHERE received_at < now() - make_interval(secs => $1)",
            float(older_than_s),
        )
    return int(status.split()[-1])
