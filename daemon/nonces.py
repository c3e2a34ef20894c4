"""Nonces: ``signers.next_nonce`` is the one counter, moved under the row lock.

The invariant: a nonce is taken only inside the transaction that records
the attempt using it, so a rolled-back transaction gives it back and a
committed one has stored the signed bytes for it. No nonce is ever skipped
by the daemon and none is ever given to two intents (``intents`` also has
UNIQUE (signer, nonce)). Redis never holds the counter.

The chain's view of a signer comes in two numbers: ``latest`` (nonces used
by mined transactions) and ``pending`` (as far as the node's pool is
gap-free). Everything in ``[latest, next_nonce)`` is ours and in flight.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import asyncpg

from haven.daemon import signers
from haven.types import Nonce


@dataclass(frozen=True)
class ChainView:
    """One signer as seen in one cycle: the chain head, the node, our counter."""

    head_block: int
    latest: Nonce
    pending: Nonce
    next_nonce: Nonce

    @property
    def in_flight(self) -> int:
        """Nonces we allocated that are not yet in a mined block."""
        return in_flight(self.next_nonce, self.latest)


def in_flight(next_nonce: int, latest: int) -> int:
    """Return how many allocated nonces are not mined: ``next_nonce - latest``."""
    return max(0, next_nonce - latest)


async def allocate(
    conn: asyncpg.Connection,
    address: str,
    *,
    statuses: Collection[str] = (signers.ACTIVE,),
) -> Nonce | None:
    """Take the signer's next nonce and move the counter on.

    Returns None (nothing taken) when the signer is unknown or not in
    ``statuses``. Must run in the transaction that records the attempt: the
    row lock taken here serialises allocations of one signer, and a rollback
    returns the nonce.
    """
    taken = await allocate_many(conn, address, 1, statuses=statuses)
    return taken[0] if taken is not None else None


async def allocate_many(
    conn: asyncpg.Connection,
    address: str,
    count: int,
    *,
    statuses: Collection[str] = (signers.ACTIVE,),
) -> list[Nonce] | None:
    """Take the signer's next ``count`` nonces, in order, like :func:`allocate`."""
    # One statement: the UPDATE takes the row lock, and a signer in another
    # status is left untouched.
    first = await conn.fetchval(
        "UPDATE signers SET next_nonce = next_nonce + $3 "
        "WHERE address = $1 AND status = ANY($2::text[]) RETURNING next_nonce - $3",
        address,
        list(statuses),
        count,
    )
    if first is None:
        return None
    return [Nonce(first + offset) for offset in range(count)]


async def skip_used(conn: asyncpg.Connection, address: str, latest: int) -> range:
    """Move the counter past nonces the chain shows used outside the daemon.

    Returns the nonces skipped (empty when none). Only mined nonces are
    skipped: a nonce merely pending elsewhere may still be dropped, and
    skipping it would leave a gap no one fills.
    """
    row = await signers.get(conn, address, for_update=True)
    if row is None or latest <= row.next_nonce:
        return range(0)
    await signers.set_next_nonce(conn, address, latest)
    return range(row.next_nonce, latest)
