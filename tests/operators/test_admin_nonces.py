"""Admin nonces: each signer's counter beside the chain, and the guarded reset."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from operators.support import SIGNER, Service, seed_intent, seed_signer, seed_submitted

from haven import db
from haven.daemon import signers

NONCES = "/api/v1/admin/health/nonces"
RESET = f"{NONCES}/{SIGNER}/reset"


@pytest.fixture
async def on_chain(start_service, anvil) -> AsyncIterator[Service]:
    """A listener on anvil, with our signer three nonces ahead of the chain."""
    async with start_service(HAVEN_RPC_URL=anvil.url) as service:
        await seed_signer(service.pool)
        async with db.transaction(service.pool) as connection:
            await signers.set_next_nonce(connection, SIGNER, 3)
        yield service


async def test_each_signer_shows_its_counter_beside_the_chains_view(on_chain):
    reply = await on_chain.client.get(NONCES)

    assert reply.status == 200
    [shown] = reply.body["signers"]
    assert shown["signer"] == SIGNER
    assert (shown["next_nonce"], shown["chain_latest"], shown["chain_pending"]) == (
        3,
        0,
        0,
    )
    assert (shown["in_flight"], shown["live_nonces"]) == (3, 0)


async def test_a_reset_needs_the_address_repeated_as_confirmation(on_chain):
    without = await on_chain.client.post(RESET, json={})
    wrong = await on_chain.client.post(RESET, json={"confirm": "0x" + "1" * 40})

    assert without.status == 422
    assert wrong.status == 422
    assert wrong.body["error"]["fields"][0]["path"] == "confirm"
    async with on_chain.pool.acquire() as connection:
        assert (await signers.get(connection, SIGNER)).next_nonce == 3


async def test_a_confirmed_reset_of_an_idle_signer_sets_the_chains_nonce(on_chain):
    reply = await on_chain.client.post(
        RESET,
        json={"confirm": SIGNER.lower(), "expected_next_nonce": 3},
        headers={"X-Request-Id": "req-nonce-reset-01"},
    )

    assert reply.status == 200
    assert reply.body == {
        "signer": SIGNER,
        "previous_next_nonce": 3,
        "next_nonce": 0,
        "changed": True,
    }
    async with on_chain.pool.acquire() as connection:
        assert (await signers.get(connection, SIGNER)).next_nonce == 0
    row = await on_chain.pool.fetchrow(
        "SELECT * FROM admin_audit WHERE request_id = 'req-nonce-reset-01'"
    )
    assert row["detail"] == {"from": 3, "to": 0, "chain_latest": 0}


async def test_a_reset_is_refused_while_a_transaction_is_in_flight(on_chain):
    intent_id = await seed_intent(on_chain.pool, "AUR-flying-nonce")
    await seed_submitted(on_chain.pool, intent_id, nonce=2)

    reply = await on_chain.client.post(RESET, json={"confirm": SIGNER})

    assert (reply.status, reply.error_code) == (409, "transactions_in_flight")
    async with on_chain.pool.acquire() as connection:
        assert (await signers.get(connection, SIGNER)).next_nonce == 3


async def test_a_reset_is_refused_when_the_counter_moved_since_it_was_read(on_chain):
    reply = await on_chain.client.post(
        RESET, json={"confirm": SIGNER, "expected_next_nonce": 2}
    )

    assert (reply.status, reply.error_code) == (409, "next_nonce_changed")
