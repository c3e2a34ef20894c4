"""Admin reports: the `haven report` document as JSON, CSV and HTML over HTTP."""

from __future__ import annotations

import csv
import io

from operators.support import seed_intent

from haven.reconciler import reports

REPORTS = "/api/v1/admin/reports"


async def test_the_json_report_counts_the_books_and_names_its_verdict(client, service):
    for n in range(2):
        await seed_intent(service.pool, f"AUR-rep-{n}", amount_wei=5 * 10**18)

    reply = await client.get(REPORTS)

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["Haven-Verdict"] == reply.body["verdict"] == "incomplete"
    ready = next(row for row in reply.body["by_status"] if row["status"] == "ready")
    assert (ready["count"], ready["amount_wei"]) == (2, str(10 * 10**18))
    run = await service.pool.fetchval("SELECT count(*) FROM reconciliation_runs")
    assert run == 1


async def test_head_is_not_allowed_and_stores_no_run(client, service):
    reply = await client.request("HEAD", REPORTS)

    assert reply.status == 405
    assert reply.headers["Allow"] == "GET"
    run = await service.pool.fetchval("SELECT count(*) FROM reconciliation_runs")
    assert run == 0


async def test_csv_and_html_are_the_same_report(client, service):
    await seed_intent(service.pool, "AUR-rep-csv", amount_wei=7 * 10**18)

    as_csv = await client.get(f"{REPORTS}?format=csv")
    as_html = await client.get(f"{REPORTS}?format=html")

    assert as_csv.headers["Content-Type"].startswith("text/csv")
    assert as_csv.headers["Content-Disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    ready = next(r for r in rows if r["section"] == "status" and r["status"] == "ready")
    assert ready["amount_wei"] == str(7 * 10**18)
    assert as_html.headers["Content-Type"].startswith("text/html")
    assert 'data-field="status:ready:count">1<' in as_html.text


async def test_a_past_cut_writes_nothing_and_bad_windows_are_422(client, service):
    as_of = (await service.pool.fetchval("SELECT now()")).isoformat()

    anonymous = await client.get(REPORTS, key=None)
    back = await client.request("GET", f"{REPORTS}?as_of={as_of.replace('+', '%2B')}")
    window = await client.get(f"{REPORTS}?from=2026-12-02&to=2026-12-01")
    future = await client.get(f"{REPORTS}?as_of=2999-01-01")
    garbled = await client.get(f"{REPORTS}?format=pdf&as_of=yesterday")

    assert anonymous.status == 401
    assert back.status == 200
    assert await service.pool.fetchval("SELECT count(*) FROM reconciliation_runs") == 0
    assert (window.status, future.status) == (422, 422)
    assert sorted(f["path"] for f in garbled.body["error"]["fields"]) == [
        "query.as_of",
        "query.format",
    ]


async def test_moments_out_of_range_are_422_naming_the_parameter(client):
    early = await client.get(f"{REPORTS}?as_of=0001-01-01")
    late = await client.get(f"{REPORTS}?to=9999-12-31T23:59:59-05:00")
    offset = await client.get(f"{REPORTS}?from=0001-01-01T00:00:00%2B14:00")

    for reply, name in ((early, "as_of"), (late, "to"), (offset, "from")):
        assert (reply.status, reply.error_code) == (422, "invalid_request")
        [problem] = reply.body["error"]["fields"]
        assert problem["path"] == f"query.{name}"
        assert "1970-01-01" in problem["message"]


async def test_a_future_cut_or_a_reversed_window_is_422_naming_the_parameter(
    client, service
):
    future = await client.get(f"{REPORTS}?as_of=2999-01-01")
    reversed_ = await client.get(f"{REPORTS}?from=2026-12-02&to=2026-12-01")
    empty = await client.get(f"{REPORTS}?from=2026-12-01&to=2026-12-01")

    assert [f["path"] for f in future.body["error"]["fields"]] == ["query.as_of"]
    for reply in (reversed_, empty):
        assert reply.status == 422
        assert [f["path"] for f in reply.body["error"]["fields"]] == ["query.from"]
    assert await service.pool.fetchval("SELECT count(*) FROM reconciliation_runs") == 0


async def test_a_window_longer_than_the_series_is_422_naming_the_limit(client):
    longest = await client.get(f"{REPORTS}?from=2024-01-01&to=2025-01-01")
    too_long = await client.get(f"{REPORTS}?from=2000-01-01&to=2030-01-01")
    open_ended = await client.get(f"{REPORTS}?from=2000-01-01")

    assert longest.status == 200
    assert len(longest.body["series"]) == reports.MAX_SERIES_DAYS
    for reply in (too_long, open_ended):
        assert (reply.status, reply.error_code) == (422, "invalid_request")
        [problem] = reply.body["error"]["fields"]
        assert problem["path"] == "query.from"
        assert f"at most {reports.MAX_SERIES_DAYS} days" in problem["message"]
    assert "10958 days" in too_long.body["error"]["fields"][0]["message"]
