"""Admin alerts: list, detail, acknowledge, resolve, accept with a mandatory note."""

from __future__ import annotations

from haven import db
from haven.listeners import admin_requests as req
from haven.reconciler import alerts

ALERTS = "/api/v1/admin/alerts"


async def raise_alert(pool, subject: str = "0xsigner") -> int:
    async with db.transaction(pool) as connection:
        alert, _ = await alerts.raise_alert(
            connection,
            rule="signer_out_of_funds",
            subject=subject,
            severity=alerts.CRITICAL,
            evidence={"balance_wei": "0"},
        )
    return alert.id


async def test_alerts_are_listed_newest_first_and_filtered_by_status(client, service):
    first = await raise_alert(service.pool, "0xfirst")
    second = await raise_alert(service.pool, "0xsecond")
    await client.post(f"{ALERTS}/{first}/acknowledge")

    everything = await client.get(ALERTS)
    still_open = await client.get(f"{ALERTS}?status=open")

    assert [a["id"] for a in everything.body["alerts"]] == [second, first]
    assert [a["id"] for a in still_open.body["alerts"]] == [second]
    assert everything.body["alerts"][0]["evidence"] == {"balance_wei": "0"}


async def test_an_alert_moves_through_its_lifecycle_under_the_callers_key(
    client, service
):
    alert_id = await raise_alert(service.pool)

    acknowledged = await client.post(f"{ALERTS}/{alert_id}/acknowledge")
    resolved = await client.post(
        f"{ALERTS}/{alert_id}/resolve", json={"note": "topped up"}
    )
    detail = await client.get(f"{ALERTS}/{alert_id}")

    assert acknowledged.body["alert"]["status"] == "acknowledged"
    assert acknowledged.body["alert"]["acknowledged_by"].startswith("key:")
    assert resolved.body["alert"]["status"] == "resolved"
    moves = [
        (h["from_status"], h["to_status"]) for h in detail.body["alert"]["history"]
    ]
    assert moves[-2:] == [("open", "acknowledged"), ("acknowledged", "resolved")]
    actions = await service.pool.fetch(
        "SELECT action, outcome FROM admin_audit WHERE subject = $1 ORDER BY id",
        str(alert_id),
    )
    assert [tuple(row) for row in actions] == [
        ("alerts.acknowledge", "succeeded"),
        ("alerts.resolve", "succeeded"),
        ("alerts.get", "succeeded"),
    ]


async def test_accepting_needs_a_note(client, service):
    alert_id = await raise_alert(service.pool)

    without = await client.post(f"{ALERTS}/{alert_id}/accept", json={})
    blank = await client.post(f"{ALERTS}/{alert_id}/accept", json={"note": "  "})
    accepted = await client.post(
        f"{ALERTS}/{alert_id}/accept", json={"note": "known: testnet signer"}
    )

    assert (without.status, blank.status) == (422, 422)
    assert accepted.status == 200
    assert accepted.body["alert"]["status"] == "accepted"
    assert accepted.body["alert"]["note"] == "known: testnet signer"


async def test_a_move_the_lifecycle_forbids_is_409_and_an_unknown_alert_404(
    client, service
):
    alert_id = await raise_alert(service.pool)
    await client.post(f"{ALERTS}/{alert_id}/resolve")

    again = await client.post(f"{ALERTS}/{alert_id}/acknowledge")
    unknown = await client.post(f"{ALERTS}/987654/acknowledge")
    malformed = [await client.get(f"{ALERTS}/{text}") for text in ("abc", "-1", "0")]

    assert (again.status, again.error_code) == (409, "wrong_status")
    assert (unknown.status, unknown.error_code) == (404, "not_found")
    assert [reply.status for reply in malformed] == [422, 422, 422]


async def test_alerts_are_paged_newest_first_with_filters_kept_across_pages(
    client, service
):
    raised = [await raise_alert(service.pool, f"0xpaged{n}") for n in range(5)]
    await client.post(f"{ALERTS}/{raised[3]}/acknowledge")

    pages, cursor = [], None
    while True:
        reply = await client.get(
            f"{ALERTS}?status=open&limit=2" + (f"&cursor={cursor}" if cursor else "")
        )
        assert reply.status == 200
        pages.append([a["id"] for a in reply.body["alerts"]])
        cursor = reply.body["next_cursor"]
        if cursor is None:
            break

    assert pages == [[raised[4], raised[2]], [raised[1], raised[0]]]


async def test_a_forged_cursor_is_refused_not_sent_to_the_database(client):
    forged = req.encode_cursor({"before_id": 2**64 - 1})

    replies = [
        await client.get(f"{path}?cursor={forged}")
        for path in (ALERTS, "/api/v1/admin/audit")
    ]

    assert [(r.status, r.error_code) for r in replies] == [
        (422, "invalid_request"),
        (422, "invalid_request"),
    ]
    assert replies[0].body["error"]["fields"] == [
        {"path": "query.cursor", "message": "not a cursor of this listing"}
    ]
