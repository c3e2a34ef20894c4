"""The admin audit log: one row per admin request, who/what/when/outcome, paged."""

from __future__ import annotations

from operators.support import OTHER_ADMIN_KEY

AUDIT = "/api/v1/admin/audit"


async def test_every_admin_request_leaves_exactly_one_row(client, service):
    ids = [f"req-audit-{n:04d}" for n in range(3)]
    await client.get("/api/v1/admin/intents", headers={"X-Request-Id": ids[0]})
    await client.get("/api/v1/admin/nowhere", headers={"X-Request-Id": ids[1]})
    await client.get(
        "/api/v1/admin/intents?limit=x", headers={"X-Request-Id": ids[2]}, key=None
    )

    rows = await service.pool.fetch(
        "SELECT request_id, action, outcome, status_code FROM admin_audit "
        "WHERE request_id = ANY($1::text[]) ORDER BY id",
        ids,
    )
    assert [tuple(row) for row in rows] == [
        (ids[0], "intents.list", "succeeded", 200),
        (ids[1], "unknown", "refused", 404),
        (ids[2], "intents.list", "unauthorized", 401),
    ]


async def test_the_log_is_read_newest_first_in_pages_and_by_actor(client):
    for _ in range(3):
        await client.get("/api/v1/admin/intents", key=OTHER_ADMIN_KEY)

    first = await client.get(f"{AUDIT}?limit=2&action=intents.")
    second = await client.get(
        f"{AUDIT}?limit=2&action=intents.&cursor={first.body['next_cursor']}"
    )
    actor = first.body["entries"][0]["actor"]
    mine = await client.get(f"{AUDIT}?actor={actor}")

    assert [len(first.body["entries"]), len(second.body["entries"])] == [2, 1]
    ids = [e["id"] for e in first.body["entries"] + second.body["entries"]]
    assert ids == sorted(ids, reverse=True)
    assert second.body["next_cursor"] is None
    assert {e["actor"] for e in mine.body["entries"]} == {actor}
    assert {e["action"] for e in mine.body["entries"]} == {"intents.list"}
