"""Admin intents: listing with filters and pages, detail, approve and reject."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
from operators.support import ADMIN_KEY, seed_intent, seed_submitted

from haven import intents
from haven.types import intent_id_hex

INTENTS = "/api/v1/admin/intents"


async def test_intents_are_listed_newest_first_in_pages_that_cover_all(client, service):
    seeded = [await seed_intent(service.pool, f"AUR-{n}") for n in range(5)]

    first = await client.get(f"{INTENTS}?limit=2")
    second = await client.get(f"{INTENTS}?limit=2&cursor={first.body['next_cursor']}")
    third = await client.get(f"{INTENTS}?limit=2&cursor={second.body['next_cursor']}")

    pages = [first, second, third]
    assert [r.status for r in pages] == [200, 200, 200]
    listed = [i["id"] for r in pages for i in r.body["intents"]]
    assert listed == [intent_id_hex(i) for i in reversed(seeded)]
    assert third.body["next_cursor"] is None


async def test_intents_are_filtered_by_status_and_request_id(client, service):
    await seed_intent(service.pool, "AUR-ready")
    held = await seed_intent(
        service.pool, "AUR-held", status=intents.APPROVAL, request_id="req-42-abcdef"
    )

    by_status = await client.get(f"{INTENTS}?status=approval")
    by_request = await client.get(f"{INTENTS}?request_id=req-42-abcdef")

    assert [i["id"] for i in by_status.body["intents"]] == [intent_id_hex(held)]
    assert [i["id"] for i in by_request.body["intents"]] == [intent_id_hex(held)]
    assert by_request.body["intents"][0]["amount_wei"] == str(10 * 10**18)
    assert by_request.body["intents"][0]["amount_hnv"] == "10"


async def test_bad_filters_are_answered_422_with_every_field(client):
    reply = await client.get(
        f"{INTENTS}?status=lost&wallet=0x12&limit=0&colour=blue&cursor=%%%"
    )

    assert reply.status == 422
    assert reply.error_code == "invalid_request"
    paths = sorted(f["path"] for f in reply.body["error"]["fields"])
    assert paths == [
        "query.colour",
        "query.cursor",
        "query.limit",
        "query.status",
        "query.wallet",
    ]


async def test_created_bounds_take_a_bare_date_as_utc_midnight(client, service):
    first = await seed_intent(service.pool, "AUR-jan-1")
    second = await seed_intent(service.pool, "AUR-jan-2")
    await service.pool.execute(
        "UPDATE intents SET created_at = $2 WHERE id = $1",
        first,
        datetime(2026, 1, 1, 23, 30, tzinfo=UTC),
    )
    await service.pool.execute(
        "UPDATE intents SET created_at = $2 WHERE id = $1",
        second,
        datetime(2026, 1, 2, 0, 30, tzinfo=UTC),
    )

    since = await client.get(f"{INTENTS}?created_from=2026-01-02")
    before = await client.get(f"{INTENTS}?created_to=2026-01-02")
    # 2026-01-02 at 00:00 in UTC+1 is 23:00 on the 1st in UTC.
    offset = await client.get(f"{INTENTS}?created_from=2026-01-02T00:00:00%2B01:00")

    assert [i["id"] for i in since.body["intents"]] == [intent_id_hex(second)]
    assert [i["id"] for i in before.body["intents"]] == [intent_id_hex(first)]
    assert {i["id"] for i in offset.body["intents"]} == {
        intent_id_hex(first),
        intent_id_hex(second),
    }


async def test_created_bounds_that_are_no_dates_or_no_window_are_422(client):
    garbage = await client.get(f"{INTENTS}?created_from=yesterday")
    # An unescaped + arrives as a space.
    unescaped = await client.get(f"{INTENTS}?created_from=2026-12-01T10:00+05:00")
    backwards = await client.get(
        f"{INTENTS}?created_from=2026-12-05&created_to=2026-12-01"
    )

    messages = []
    for reply in (garbage, unescaped, backwards):
        assert (reply.status, reply.error_code) == (422, "invalid_request")
        [problem] = reply.body["error"]["fields"]
        assert problem["path"] == "query.created_from"
        messages.append(problem["message"])
    assert "ISO 8601 date or time" in messages[0]
    assert "%2B" in messages[1] and "%2B" not in messages[0]
    assert "before created_to (2026-12-01T00:00:00+00:00)" in messages[2]


async def test_times_out_of_range_are_422_naming_the_parameter(client):
    replies = {
        "created_from": await client.get(
            f"{INTENTS}?created_from=0001-01-01T00:00:00%2B14:00"
        ),
        "created_to": await client.get(
            f"{INTENTS}?created_to=9999-12-31T23:59:59-05:00"
        ),
    }

    for name, reply in replies.items():
        assert (reply.status, reply.error_code) == (422, "invalid_request")
        [problem] = reply.body["error"]["fields"]
        assert problem["path"] == f"query.{name}"
        assert "from 1970-01-01 through 9998-12-31 UTC" in problem["message"]


async def test_a_forged_cursor_with_an_overflowing_time_is_422(client):
    position = {"created_at": "0001-01-01T00:00:00+14:00", "id": "00" * 32}
    cursor = base64.urlsafe_b64encode(orjson.dumps(position)).decode()

    reply = await client.get(f"{INTENTS}?cursor={cursor}")

    assert (reply.status, reply.error_code) == (422, "invalid_request")
    assert [f["path"] for f in reply.body["error"]["fields"]] == ["query.cursor"]


async def test_an_intent_shows_its_history_and_attempts(client, service):
    intent_id = await seed_intent(service.pool, "AUR-7", request_id="req-trace-0001")
    tx_hash = await seed_submitted(service.pool, intent_id, nonce=0)

    reply = await client.get(f"{INTENTS}/{intent_id_hex(intent_id)}")

    assert reply.status == 200
    shown = reply.body["intent"]
    assert shown["status"] == "submitted"
    assert shown["request_id"] == "req-trace-0001"
    assert [e["to_status"] for e in shown["history"]] == ["ready", "submitted"]
    assert [a["tx_hash"] for a in shown["attempts"]] == [tx_hash]
    assert "raw_tx" not in shown["attempts"][0]


async def test_an_unknown_or_malformed_intent_id_is_404_or_422(client):
    missing = await client.get(f"{INTENTS}/0x" + "00" * 32)
    malformed = await client.get(f"{INTENTS}/0x1234")

    assert (missing.status, missing.error_code) == (404, "not_found")
    assert (malformed.status, malformed.error_code) == (422, "invalid_request")


async def test_approving_moves_approval_to_ready_with_an_audit_row(client, service):
    intent_id = await seed_intent(service.pool, "AUR-big", status=intents.APPROVAL)
    path = f"{INTENTS}/{intent_id_hex(intent_id)}/approve"

    reply = await client.post(
        path,
        json={"note": "checked with the hotel"},
        headers={"X-Request-Id": "req-approve-0001"},
    )

    assert reply.status == 200
    assert reply.body["intent"]["status"] == "ready"
    async with service.pool.acquire() as connection:
        history = await intents.history(connection, intent_id)
    assert history[-1]["from_status"] == "approval"
    assert history[-1]["reason"].startswith("approved by key:")
    approval = await service.pool.fetchrow(
        "SELECT approved_by, note FROM policy_approvals WHERE intent_id = $1", intent_id
    )
    assert approval["note"] == "checked with the hotel"
    assert approval["approved_by"].startswith("key:")
    rows = await service.pool.fetch(
        "SELECT * FROM admin_audit WHERE request_id = 'req-approve-0001'"
    )
    assert len(rows) == 1
    assert rows[0]["action"] == "intents.approve"
    assert rows[0]["subject"] == intent_id_hex(intent_id)
    assert rows[0]["detail"]["to_status"] == "ready"


async def test_approving_an_intent_in_another_status_is_409_and_changes_nothing(
    client, service
):
    intent_id = await seed_intent(service.pool, "AUR-ready-2")

    reply = await client.post(f"{INTENTS}/{intent_id_hex(intent_id)}/approve")

    assert reply.status == 409
    assert reply.error_code == "wrong_status"
    assert reply.body["error"]["message"] == (
        "the intent is ready; only an intent in approval can be moved"
    )
    async with service.pool.acquire() as connection:
        assert (await intents.get(connection, intent_id)).status == "ready"
    outcome = await service.pool.fetchval(
        "SELECT outcome FROM admin_audit WHERE action = 'intents.approve'"
    )
    assert outcome == "refused"


async def test_rejecting_needs_a_reason_and_moves_approval_to_rejected(client, service):
    intent_id = await seed_intent(service.pool, "AUR-big-2", status=intents.APPROVAL)
    path = f"{INTENTS}/{intent_id_hex(intent_id)}/reject"

    without = await client.post(path, json={})
    rejected = await client.post(path, json={"reason": "guest is a test account"})

    assert without.status == 422
    assert without.body["error"]["fields"] == [
        {"path": "reason", "message": "is required"}
    ]
    assert rejected.status == 200
    assert rejected.body["intent"]["status"] == "rejected"
    assert "guest is a test account" in rejected.body["intent"]["status_reason"]


async def test_bodies_that_are_not_json_objects_are_refused_without_a_500(
    client, service
):
    intent_id = await seed_intent(service.pool, "AUR-x", status=intents.APPROVAL)
    path = f"{INTENTS}/{intent_id_hex(intent_id)}/approve"

    malformed = await client.post(
        path, data=b"{", headers={"Content-Type": "application/json"}
    )
    not_json = await client.post(
        path, data=b"note=x", headers={"Content-Type": "text/plain"}
    )
    # Readers disagree on which of two equal keys counts: refused, as in
    # webhooks.
    twice = await client.post(
        path,
        data=b'{"note": "approved", "note": "rejected"}',
        headers={"Content-Type": "application/json"},
    )
    array = await client.post(path, json=[1])
    unknown = await client.post(path, json={"note": "ok", "force": True})
    control = await client.post(path, json={"note": "a\u0000b"})
    huge = await client.post(path, json={"note": "x" * 20_000}, key=ADMIN_KEY)

    assert (malformed.status, malformed.error_code) == (400, "malformed_json")
    assert (twice.status, twice.error_code) == (400, "malformed_json")
    assert "duplicate key 'note'" in twice.body["error"]["message"]
    assert (not_json.status, not_json.error_code) == (415, "unsupported_media_type")
    assert (array.status, unknown.status, control.status) == (422, 422, 422)
    assert (huge.status, huge.error_code) == (413, "payload_too_large")
    async with service.pool.acquire() as connection:
        assert (await intents.get(connection, intent_id)).status == "approval"
