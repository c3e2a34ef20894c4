"""Admin reports: the same reconciliation report as ``haven report``, over HTTP.

Built and rendered by :mod:`haven.reconciler.reports`, so the API, the
command line and the browser page can never disagree. Like the command, a
report of now stores its run (breaks age from it); ``as_of`` recomputes a
past moment and writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from haven.listeners import admin_requests as req
from haven.reconciler import reports

FORMATS = ("json", "csv", "html")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "html": "text/html",
}


def routes() -> list[web.RouteDef]:
    return [web.get("/reports", get_report, name="reports.get")]


async def get_report(request: web.Request) -> web.Response:
    """Reconcile now (or as of a moment) and answer the report in one format."""
    query = req.Query(request, ("format", "from", "to", "as_of"))
    fmt = query.choice("format", FORMATS) or "json"
    from_ = _moment(query, "from")
    to = _moment(query, "to")
    as_of = _moment(query, "as_of")
    query.done()
    context = req.context(request)

    try:
        report = await reports.build(
            context.pool,
            context.chain,
            context.settings,
            from_=from_,
            to=to,
            as_of=as_of,
        )
    except ValueError as exc:
        raise req.invalid("query", str(exc)) from None
    req.note_audit(request, verdict=report.verdict, run_id=report.run_id)

    response = web.Response(
        text=reports.render(report, fmt),
        content_type=MEDIA_TYPES[fmt],
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Haven-Verdict": report.verdict},
    )
    if fmt == "csv":
        stamp = report.data["cut"]["at"].replace(":", "")
        response.headers["Content-Disposition"] = (
            f'attachment; filename="haven-report-{stamp}.csv"'
        )
    return response


def _moment(query: req.Query, name: str) -> datetime | None:
    # As on the command line: a date or a time, UTC when no offset is given.
    text = query.text(name, max_length=64)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        query.problems.append(
            {
                "path": f"query.{name}",
                "message": "expected an ISO 8601 date or time, e.g. 2026-12-01",
            }
        )
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
