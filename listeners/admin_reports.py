"""Admin reports: the same reconciliation report as ``haven report``, over HTTP.

Built and rendered by :mod:`haven.reconciler.reports`, so the API, the
command line and the browser page can never disagree. Like the command, a
report of now stores its run (breaks age from it); ``as_of`` recomputes a
past moment and writes nothing.
"""

from __future__ import annotations

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
    # No HEAD: a report of now reconciles and stores a run, which a probe
    # asking only for headers should not set off.
    return [web.get("/reports", get_report, name="reports.get", allow_head=False)]


async def get_report(request: web.Request) -> web.Response:
    """Reconcile now (or as of a moment) and answer the report in one format."""
    query = req.Query(request, ("format", "from", "to", "as_of"))
    fmt = query.choice("format", FORMATS) or "json"
    from_ = query.moment("from")
    to = query.moment("to")
    as_of = query.moment("as_of")
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
    except reports.WindowError as exc:
        # Checked by the report itself, against the database's clock, so the
        # command line refuses the same windows.
        raise req.invalid(f"query.{exc.name}", str(exc)) from None
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
