"""Staking records: the ``staking_records`` table of Tribe's stake actions.

Stake and unstake actions earn nothing; they are recorded so operators and
later rules can see them. One row per (partner, stake id, action), so a
re-emitted action is recorded once.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from haven.listeners.events import Stake


async def record(
    connection: asyncpg.Connection,
    partner: str,
    stake: Stake,
    *,
    occurred_at: datetime,
    delivery_id: str,
) -> bool:
    """Record a stake action inside the caller's transaction; False if already there."""
    inserted = await connection.fetchval(
        """
        INSERT INTO staking_records (partner, stake_id, action, member_id, wallet,
                                     amount_wei, occurred_at, delivery_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (partner, stake_id, action) DO NOTHING
        RETURNING true
        """,
        partner,
        stake.stake_id,
        stake.action,
        stake.member_id,
        stake.wallet,
        stake.amount_wei,
        occurred_at,
        delivery_id,
    )
    return bool(inserted)
