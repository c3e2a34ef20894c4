"""The signing policy: only our mint, on our chain, within the caps; the rest waits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from harness.minting import GUEST, Rig, wait_for
from haven import db, intents, token
from haven.daemon import policy
from haven.daemon.policy import Caps, Policy
from haven.errors import PolicyViolationError
from haven.intents import Intent
from haven.types import ONE_HNV, IntentId, Wei, checksum

TOKEN = checksum("0x5FbDB2315678afecb367f032d93F642f64180aa3")
OTHER = checksum("0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512")
CAPS = Caps(
    per_intent_wei=Wei(100 * ONE_HNV),
    partner_daily_wei=Wei(250 * ONE_HNV),
    global_daily_wei=Wei(400 * ONE_HNV),
)


def an_intent(
    amount_hnv: int = 10, partner: str = "aurora", key: str = "P-1"
) -> Intent:
    now = datetime.now(UTC)
    return Intent(
        id=intents.derive_id(partner, "booking", key),
        partner=partner,
        kind="booking",
        source_key=key,
        wallet=GUEST,
        amount_wei=Wei(amount_hnv * ONE_HNV),
        rule_version="test",
        status=intents.READY,
        status_reason=None,
        signer=None,
        nonce=None,
        tx_hash=None,
        block_number=None,
        block_hash=None,
        request_id=None,
        reversed_at=None,
        created_at=now,
        updated_at=now,
    )


def mint_tx(intent: Intent, **changes: Any) -> dict[str, Any]:
    tx = {
        "type": 2,
        "chainId": 31337,
        "nonce": 3,
        "to": TOKEN,
        "value": 0,
        "gas": 200_000,
        "maxFeePerGas": 3 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "data": token.mint_reward_data(intent.wallet, intent.amount_wei, intent.id),
    }
    return tx | changes


RULES = Policy(token_address=TOKEN, chain_id=31337, max_fee_wei=100 * 10**9, caps=CAPS)


def test_the_exact_mint_of_the_intent_passes():
    intent = an_intent()

    RULES.check_transaction(mint_tx(intent), intent)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"to": OTHER}, "recipient"),
        ({"chainId": 1}, "chain id"),
        ({"type": 0}, "transaction type"),
        ({"value": 1}, "value"),
        ({"maxFeePerGas": 101 * 10**9}, "HAVEN_MAX_FEE_WEI"),
        ({"maxPriorityFeePerGas": 4 * 10**9}, "tip above"),
        ({"data": token.grant_role_data(token.MINTER_ROLE, OTHER)}, "call data"),
    ],
)
def test_anything_but_our_mint_is_refused(change: dict[str, Any], problem: str):
    intent = an_intent()

    with pytest.raises(PolicyViolationError, match=problem):
        RULES.check_transaction(mint_tx(intent, **change), intent)


def test_a_mint_of_another_amount_or_wallet_than_the_intent_is_refused():
    intent = an_intent(amount_hnv=10)
    bigger = an_intent(amount_hnv=11)

    with pytest.raises(PolicyViolationError, match="call data"):
        RULES.check_transaction(mint_tx(bigger), intent)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    created = await db.create_pool(database_url, max_size=4)
    yield created
    await created.close()


async def stored(pool: db.Pool, intent: Intent) -> Intent:
    async with db.transaction(pool) as conn:
        created, _ = await intents.create(
            conn,
            partner=intent.partner,
            kind=intent.kind,
            source_key=intent.source_key,
            wallet=intent.wallet,
            amount_wei=intent.amount_wei,
            rule_version=intent.rule_version,
            status=intents.READY,
        )
    return created


async def spend(pool: db.Pool, intent: Intent) -> str | None:
    """Check the caps for ``intent`` and, if it passes, count it as signed."""
    async with db.transaction(pool) as conn:
        reason = await RULES.hold_reason(conn, intent)
        if reason is None:
            await RULES.record_spend(conn, intent)
    return reason


async def test_an_intent_over_the_per_intent_cap_is_held(pool: db.Pool):
    big = await stored(pool, an_intent(amount_hnv=101))

    reason = await spend(pool, big)

    assert reason is not None and "per-intent cap of 100 HNV" in reason


async def test_the_per_intent_hold_reason_claims_nothing_about_daily_spend(
    pool: db.Pool,
):
    signed = await stored(pool, an_intent(amount_hnv=90, key="P-small"))
    big = await stored(pool, an_intent(amount_hnv=101, key="P-big"))

    assert await spend(pool, signed) is None
    reason = await spend(pool, big)

    assert reason == "101 HNV is over the per-intent cap of 100 HNV"


async def test_partner_and_global_daily_caps_sum_what_was_signed(pool: db.Pool):
    aurora = [await stored(pool, an_intent(100, "aurora", f"A-{i}")) for i in range(3)]
    tribe = [
        await stored(pool, an_intent(amount, "tribe", f"T-{i}"))
        for i, amount in enumerate((100, 100, 10))
    ]

    outcomes = [await spend(pool, i) for i in (*aurora, *tribe)]

    assert outcomes[:2] == [None, None]
    assert outcomes[2] is not None and "aurora daily cap" in outcomes[2]
    assert "(200 HNV already signed in the last 24 hours)" in outcomes[2]
    assert outcomes[3:5] == [None, None]
    assert outcomes[5] is not None and "global daily cap" in outcomes[5]
    assert "(400 HNV already signed in the last 24 hours)" in outcomes[5]


async def test_a_run_is_judged_as_if_each_intent_before_it_were_counted(
    pool: db.Pool,
):
    earlier = await stored(pool, an_intent(100, "aurora", "R-0"))
    assert await spend(pool, earlier) is None
    run = [
        earlier,  # signed again (a fresh nonce): already counted, adds nothing
        await stored(pool, an_intent(100, "aurora", "R-1")),
        await stored(pool, an_intent(60, "aurora", "R-2")),  # over: 260 > 250
        await stored(pool, an_intent(50, "aurora", "R-3")),  # fits: 250
        await stored(pool, an_intent(100, "tribe", "R-4")),  # fits: 350 in all
        await stored(pool, an_intent(60, "tribe", "R-5")),  # over global: 410
    ]

    async with db.transaction(pool) as conn:
        reasons = await RULES.hold_reasons(conn, run)
        await RULES.record_spends(
            conn, [i for i, reason in zip(run, reasons, strict=True) if not reason]
        )

    held = [reason is not None for reason in reasons]
    assert held == [False, False, True, False, False, True]
    assert reasons[2] is not None and "(200 HNV already signed" in reasons[2]
    assert reasons[5] is not None and "global daily cap" in reasons[5]
    assert "(350 HNV already signed" in reasons[5]
    # Each signed intent counted once: R-0 from before, R-1, R-3 and R-4.
    async with pool.acquire() as conn:
        total = await conn.fetchval("SELECT sum(amount_wei) FROM policy_spend")
    assert total == 350 * ONE_HNV


async def test_an_approved_intent_is_signed_whatever_the_caps(pool: db.Pool):
    big = await stored(pool, an_intent(amount_hnv=500))
    async with db.transaction(pool) as conn:
        await intents.transition(
            conn,
            big.id,
            from_statuses=(intents.READY,),
            to_status=intents.APPROVAL,
            reason="over the cap",
        )
        released = await policy.approve(conn, big.id, operator="ops@haven", note="ok")

    assert released is not None and released.status == intents.READY
    assert await spend(pool, big) is None


async def test_over_cap_intents_wait_for_approval_and_are_never_signed_meanwhile(
    rig: Rig,
):
    small = await rig.add_intents(2, amount_wei=10 * ONE_HNV)
    big = await rig.add_intents(1, amount_wei=20_000 * ONE_HNV)

    async with rig.running(rig.submitter()):
        await rig.wait_minted(small)
        held = await wait_for(
            lambda: held_for_approval(rig, big[0]), what="the big intent held"
        )
        tried = await rig.attempts_of(big[0])
        async with db.transaction(rig.pool) as conn:
            await policy.approve(conn, big[0], operator="ops@haven")
        await rig.wait_minted(big)

    assert held.status == intents.APPROVAL
    assert held.status_reason is not None and "per-intent cap" in held.status_reason
    assert tried == []
    assert (await rig.mint_counts())[IntentId(big[0])] == 1


async def held_for_approval(rig: Rig, intent_id: bytes) -> Intent | None:
    intent = await rig.intent(intent_id)
    return intent if intent.status == intents.APPROVAL else None
