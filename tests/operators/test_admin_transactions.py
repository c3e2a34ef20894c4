"""Admin transactions: the monitoring view per signer and retry of a failed mint."""

from __future__ import annotations

from operators.support import SIGNER, fail_intent, seed_intent, seed_submitted

from haven import intents
from haven.types import intent_id_hex

TRANSACTIONS = "/api/v1/admin/transactions"


async def test_the_view_shows_queued_in_flight_and_failed_per_signer(client, service):
    await seed_intent(service.pool, "AUR-queued")
    flying = await seed_intent(service.pool, "AUR-flying")
    tx_hash = await seed_submitted(service.pool, flying, nonce=4, sent_block=1)
    failing = await seed_intent(service.pool, "AUR-failing")
    failed_tx = await seed_submitted(service.pool, failing, nonce=5)
    await fail_intent(service.pool, failing, failed_tx)

    reply = await client.get(TRANSACTIONS)

    assert reply.status == 200
    assert reply.body["queued"] == 1
    assert reply.body["head_block"] is None  # no node in this test
    [signer] = reply.body["signers"]
    assert signer["signer"] == SIGNER
    assert signer["in_flight"] == 1
    [line] = signer["transactions"]
    assert (line["intent_id"], line["nonce"], line["tx_hash"]) == (
        intent_id_hex(flying),
        4,
        tx_hash,
    )
    assert line["stuck"] is False
    assert [i["id"] for i in reply.body["failed"]] == [intent_id_hex(failing)]


async def test_a_failed_intent_is_retried_back_to_ready_with_a_fresh_nonce(
    client, service
):
    intent_id = await seed_intent(service.pool, "AUR-retry")
    tx_hash = await seed_submitted(service.pool, intent_id, nonce=0)
    await fail_intent(service.pool, intent_id, tx_hash)

    reply = await client.post(
        f"{TRANSACTIONS}/{intent_id_hex(intent_id)}/retry",
        json={"note": "contract unpaused"},
        headers={"X-Request-Id": "req-retry-0001"},
    )

    assert reply.status == 200
    shown = reply.body["intent"]
    assert (shown["status"], shown["nonce"], shown["signer"]) == ("ready", None, None)
    async with service.pool.acquire() as connection:
        history = await intents.history(connection, intent_id)
    assert (history[-1]["from_status"], history[-1]["to_status"]) == (
        "failed",
        "ready",
    )
    row = await service.pool.fetchrow(
        "SELECT * FROM admin_audit WHERE request_id = 'req-retry-0001'"
    )
    assert (row["action"], row["outcome"]) == ("transactions.retry", "succeeded")


async def test_only_a_failed_intent_can_be_retried(client, service):
    intent_id = await seed_intent(service.pool, "AUR-fine")

    reply = await client.post(f"{TRANSACTIONS}/{intent_id_hex(intent_id)}/retry")

    assert (reply.status, reply.error_code) == (409, "wrong_status")
