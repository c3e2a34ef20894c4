"""The signing policy: what the hot wallet may sign, and how much per day.

Owns ``policy_spend`` and ``policy_approvals``. Two kinds of rule:

* every signature (:meth:`Policy.check_transaction`, run by custody.sign):
  a type-2 call of ``mintReward`` carrying exactly the intent's wallet,
  amount and id, to the configured HNV contract on the configured chain,
  with no value and a fee cap within ``HAVEN_MAX_FEE_WEI``;
* every new intent (:meth:`Policy.hold_reason`): within the per-intent cap
  and, summed over the last 24 hours of first signatures, the per-partner
  and global daily caps. An intent over a cap is held for an operator
  (status ``approval``), never signed; :func:`approve` releases it.

Daily sums are serialised by a transaction-level advisory lock so that two
workers can never both fit under the same remaining allowance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from haven import intents, token
from haven.errors import PolicyViolationError
from haven.intents import Intent
from haven.settings import Settings
from haven.types import ONE_HNV, ChecksumAddress, Wei, checksum, format_hnv

# Arbitrary but fixed: the advisory lock key of the daily caps ("HAVENCAP").
LOCK_KEY = 0x484156454E434150
WINDOW = "24 hours"
PER_INTENT_CAP_WEI = Wei(10_000 * ONE_HNV)
PARTNER_DAILY_CAP_WEI = Wei(1_000_000 * ONE_HNV)
GLOBAL_DAILY_CAP_WEI = Wei(5_000_000 * ONE_HNV)


@dataclass(frozen=True)
class Caps:
    """Spending caps in HNV base units."""

    per_intent_wei: Wei = PER_INTENT_CAP_WEI
    partner_daily_wei: Wei = PARTNER_DAILY_CAP_WEI
    global_daily_wei: Wei = GLOBAL_DAILY_CAP_WEI


class Policy:
    """The rules every signature and every new intent must pass."""

    def __init__(
        self,
        *,
        token_address: ChecksumAddress,
        chain_id: int,
        max_fee_wei: int,
        caps: Caps | None = None,
    ) -> None:
        self.token_address = checksum(token_address)
        self.chain_id = chain_id
        self.max_fee_wei = max_fee_wei
        self.caps = caps or Caps()

    @classmethod
    def from_settings(cls, settings: Settings, caps: Caps | None = None) -> Policy:
        return cls(
            token_address=settings.require_token(),
            chain_id=settings.chain_id,
            max_fee_wei=settings.max_fee_wei,
            caps=caps,
        )

    def check_transaction(self, tx: Mapping[str, Any], intent: Intent) -> None:
        """Raise PolicyViolationError unless ``tx`` is exactly ``intent``'s mint."""
        problem = self._problem(tx, intent)
        if problem is not None:
            raise PolicyViolationError(f"refusing to sign: {problem}")

    def _problem(self, tx: Mapping[str, Any], intent: Intent) -> str | None:
        if tx.get("type") != 2:
            return f"transaction type {tx.get('type')!r}, expected 2 (EIP-1559)"
        if tx.get("chainId") != self.chain_id:
            return f"chain id {tx.get('chainId')!r}, expected {self.chain_id}"
        to = tx.get("to")
        if not isinstance(to, str) or to.lower() != self.token_address.lower():
            return f"recipient {to!r}, expected the HNV contract {self.token_address}"
        if tx.get("value", 0) != 0:
            return f"value {tx.get('value')!r}, expected 0"
        expected = token.mint_reward_data(intent.wallet, intent.amount_wei, intent.id)
        if bytes(tx.get("data", b"")) != expected:
            return "call data is not mintReward of this intent's wallet, amount and id"
        max_fee = int(tx.get("maxFeePerGas", 0))
        if max_fee > self.max_fee_wei:
            return f"fee cap {max_fee} wei above HAVEN_MAX_FEE_WEI={self.max_fee_wei}"
        if int(tx.get("maxPriorityFeePerGas", 0)) > max_fee:
            return "tip above the fee cap"
        return None

    async def hold_reason(self, conn: asyncpg.Connection, intent: Intent) -> str | None:
        """Return why ``intent`` must wait for approval, or None to sign it.

        Must run in the transaction that signs it, which then calls
        :meth:`record_spend`: the advisory lock taken here lasts until commit.
        """
        [reason] = await self.hold_reasons(conn, [intent])
        return reason

    async def hold_reasons(
        self, conn: asyncpg.Connection, run: Sequence[Intent]
    ) -> list[str | None]:
        """Return :meth:`hold_reason` for each intent of ``run``, in order.

        Each is judged as if every intent before it that may be signed had
        been counted already, as signing them one by one would count them.
        Must run in the transaction that signs them, which then calls
        :meth:`record_spends` with the intents it signed.
        """
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        standing = await _standing(conn, [intent.id for intent in run])
        reasons: list[str | None] = []
        for intent in run:
            reason = self._judge(intent, standing)
            reasons.append(reason)
            if reason is None and intent.id not in standing.counted:
                standing.count(intent)
        return reasons

    def _judge(self, intent: Intent, standing: _Standing) -> str | None:
        if intent.id in standing.approved:
            return None
        amount = intent.amount_wei
        if amount > self.caps.per_intent_wei:
            return _over_intent_cap(amount, self.caps.per_intent_wei)
        partner_spent = standing.by_partner.get(intent.partner, 0)
        if partner_spent + amount > self.caps.partner_daily_wei:
            return _over_daily_cap(
                f"{intent.partner} daily",
                amount,
                self.caps.partner_daily_wei,
                partner_spent,
            )
        if standing.total + amount > self.caps.global_daily_wei:
            return _over_daily_cap(
                "global daily", amount, self.caps.global_daily_wei, standing.total
            )
        return None

    async def record_spend(self, conn: asyncpg.Connection, intent: Intent) -> None:
        """Count ``intent`` against the daily caps (once, at its first signature)."""
        await self.record_spends(conn, [intent])

    async def record_spends(
        self, conn: asyncpg.Connection, signed: Sequence[Intent]
    ) -> None:
        """Count each intent of ``signed`` against the daily caps, in one statement."""
        await conn.execute(
            "INSERT INTO policy_spend (intent_id, partner, amount_wei) "
            "SELECT * FROM unnest($1::bytea[], $2::text[], $3::numeric[]) "
            "ON CONFLICT (intent_id) DO NOTHING",
            [intent.id for intent in signed],
            [intent.partner for intent in signed],
            [intent.amount_wei for intent in signed],
        )


@dataclass
class _Standing:
    """What the daily caps stand at, for judging one run of intents."""

    approved: set[bytes]
    counted: set[bytes]  # already in policy_spend: counting them adds nothing
    by_partner: dict[str, int]
    total: int

    def count(self, intent: Intent) -> None:
        self.by_partner[intent.partner] = (
            self.by_partner.get(intent.partner, 0) + intent.amount_wei
        )
        self.total += intent.amount_wei


def _over_intent_cap(amount: int, limit: int) -> str:
    # The per-intent cap looks at this intent alone: what else was signed
    # lately has no part in it, so the reason does not mention it.
    return (
        f"{format_hnv(amount)} HNV is over the per-intent cap of "
        f"{format_hnv(limit)} HNV"
    )


def _over_daily_cap(cap: str, amount: int, limit: int, spent: int) -> str:
    return (
        f"{format_hnv(amount)} HNV over the {cap} cap of {format_hnv(limit)} HNV "
        f"({format_hnv(spent)} HNV already signed in the last {WINDOW})"
    )


async def _standing(conn: asyncpg.Connection, intent_ids: list[bytes]) -> _Standing:
    """Which of ``intent_ids`` are approved or counted, and what each partner
    signed in the window: one statement, as it runs for every run signed."""
    row = await conn.fetchrow(
        f"""
        WITH recent AS (
            SELECT partner, sum(amount_wei) AS spent
              FROM policy_spend
             WHERE signed_at > now() - interval '{WINDOW}'
             GROUP BY partner
        )
        SELECT ARRAY(SELECT intent_id FROM policy_approvals
                      WHERE intent_id = ANY($1::bytea[])) AS approved,
               ARRAY(SELECT intent_id FROM policy_spend
                      WHERE intent_id = ANY($1::bytea[])) AS counted,
               ARRAY(SELECT partner FROM recent ORDER BY partner) AS partners,
               ARRAY(SELECT spent FROM recent ORDER BY partner) AS spent
        """,
        intent_ids,
    )
    assert row is not None
    by_partner = {
        partner: int(spent)
        for partner, spent in zip(row["partners"], row["spent"], strict=True)
    }
    return _Standing(
        approved={bytes(intent_id) for intent_id in row["approved"]},
        counted={bytes(intent_id) for intent_id in row["counted"]},
        by_partner=by_partner,
        total=sum(by_partner.values()),
    )


async def approve(
    conn: asyncpg.Connection,
    intent_id: bytes,
    *,
    operator: str,
    note: str | None = None,
) -> Intent | None:
    """Release an intent held for approval: record who approved it, make it ready.

    Returns the intent, or None when it was not waiting for approval.
    Idempotent for the approval row; must run in one transaction.
    """
    moved = await intents.transition(
        conn,
        intent_id,
        from_statuses=(intents.APPROVAL,),
        to_status=intents.READY,
        reason=f"approved by {operator}",
    )
    if moved is None:
        return None
    await conn.execute(
        "INSERT INTO policy_approvals (intent_id, approved_by, note) "
        "VALUES ($1, $2, $3) ON CONFLICT (intent_id) DO NOTHING",
        intent_id,
        operator,
        note,
    )
    return moved
