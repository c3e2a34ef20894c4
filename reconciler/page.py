"""The operators' HTML page of a report: one self-contained file.

Inline CSS and an inline SVG chart; no script, no font, no image and no
link to anything, so the page opens from disk or an email attachment with
nothing to fetch and nothing to fail in a browser console. Every value is
escaped; numbers carry ``data-field`` attributes so tests can find them.
"""

from __future__ import annotations

from html import escape
from typing import Any

from haven.reconciler import breaks
from haven.reconciler import evidence as ev
from haven.types import format_hnv

_CSS = """
:root { color-scheme: light; --ok: #1b7f3b; --warn: #a86400; --bad: #b3261e;
        --muted: #5f6368; --line: #dadce0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 0 auto; max-width: 1100px; padding: 24px; color: #202124; }
h1 { font-size: 22px; margin: 0 0 8px; }
h2 { font-size: 16px; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
     padding-bottom: 4px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { font-weight: 600; background: #f8f9fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { margin: 4px 0 0; white-space: pre-wrap; word-break: break-all; }
dl.cut { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; }
dl.cut dt { color: var(--muted); }
dl.cut dd { margin: 0; }
.verdict { display: inline-block; padding: 4px 12px; border-radius: 4px;
           font-weight: 700; color: #fff; }
.verdict-reconciled { background: var(--ok); }
.verdict-reconciled_with_pending { background: var(--warn); }
.verdict-breaks, .verdict-incomplete { background: var(--bad); }
.P1 { color: var(--bad); font-weight: 700; }
.P2 { color: var(--bad); }
.P3, .warning { color: var(--warn); }
.muted { color: var(--muted); }
svg text { font: 11px system-ui, sans-serif; fill: #3c4043; }
"""

_CHART_W, _CHART_H = 960, 220
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 40, 12, 16, 28
_SHOWN_ROWS = 50
# Plain colours: SVG presentation attributes do not take CSS variables everywhere.
_BLUE, _ORANGE = "#3b6fd4", "#c2410c"


def render(data: dict[str, Any]) -> str:
    """Return the report as one HTML5 document."""
    verdict = str(data["verdict"])
    title = f"HNV reconciliation: {verdict} at {data['cut']['at']}"
    body = "\n".join(
        [
            _header(data),
            _section("Totals", "totals", _totals(data)),
            _section("Intents and breaks over time", "chart", chart(data["series"])),
            _section("By status", "by-status", _groups(data["by_status"], "status")),
            _section(
                "By partner", "by-partner", _groups(data["by_partner"], "partner")
            ),
            _section("Breaks by class and age", "aging", _aging(data)),
            _section("Breaks", "breaks", _breaks(data)),
            _section("Unreconciled at the cut", "unreconciled", _unreconciled(data)),
            _section("Stuck transactions", "stuck", _stuck(data)),
            f'<footer class="muted"><p>{_e(data["schema"])}; amounts in HNV '
            f"({_e(data['decimals'])} decimals).</p></footer>",
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _hnv(amount_wei: str | None) -> str:
    return "-" if amount_wei is None else format_hnv(int(amount_wei))


def _section(title: str, anchor: str, content: str) -> str:
    return f'<section id="{anchor}">\n<h2>{_e(title)}</h2>\n{content}\n</section>'


def _header(data: dict[str, Any]) -> str:
    cut, window = data["cut"], data["window"]
    facts = [
        ("Cut time", cut["at"]),
        ("Cut block", cut["block_number"]),
        ("Block hash", cut["block_hash"]),
        ("Token", data["token"]),
        ("Window", f"{window['from'] or 'start'} to {window['to'] or 'cut'}"),
        ("As of", window["as_of"] or "now"),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd><code>{_e(v)}</code></dd>" for k, v in facts)
    reasons = "".join(f"<li>{_e(r)}</li>" for r in data["reasons"])
    verdict = _e(data["verdict"])
    return (
        "<header>\n<h1>HNV reconciliation</h1>\n"
        f'<p><span id="verdict" class="verdict verdict-{verdict}" '
        f'data-field="verdict">{verdict}</span></p>\n'
        f'<dl class="cut">{rows}</dl>\n'
        + (f'<ul id="reasons">{reasons}</ul>\n' if reasons else "")
        + "</header>"
    )


def _table(header: list[str], rows: list[str], numeric: set[int]) -> str:
    head = "".join(
        f"<th{' class=num' if n in numeric else ''}>{_e(h)}</th>"
        for n, h in enumerate(header)
    )
    if not rows:
        rows = [f'<tr><td colspan="{len(header)}" class="muted">none</td></tr>']
    body = "".join(rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"


def _num(value: Any, field: str | None = None) -> str:
    attribute = f' data-field="{_e(field)}"' if field else ""
    return f'<td class="num"{attribute}>{_e(value)}</td>'


def _totals(data: dict[str, Any]) -> str:
    rows = [
        f"<tr><td>{_e(name.removesuffix('_wei').replace('_', ' '))}</td>"
        f"{_num(_hnv(value), name.removesuffix('_wei') + '_hnv')}"
        f'<td><code data-field="{_e(name)}">{_e(value)}</code></td></tr>'
        for name, value in data["totals"].items()
    ]
    return _table(["Total", "HNV", "Base units"], rows, {1})


def _groups(rows: list[dict[str, Any]], key: str) -> str:
    cells = [
        f"<tr><td>{_e(row[key])}</td>{_num(row['count'], f'{key}:{row[key]}:count')}"
        f"{_num(_hnv(row['amount_wei']), f'{key}:{row[key]}:amount_hnv')}"
        f"{_num(_hnv(row['reversed_wei']))}{_num(_hnv(row['net_wei']))}</tr>"
        for row in rows
    ]
    return _table(
        [key.title(), "Count", "Gross HNV", "Reversed HNV", "Net HNV"],
        cells,
        {1, 2, 3, 4},
    )


def _aging(data: dict[str, Any]) -> str:
    labels = [label for label, _, _ in breaks.AGE_BUCKETS]
    cells = [
        f'<tr><td>{_e(row["class"])}</td><td class="{_e(row["priority"])}">'
        f"{_e(row['priority'])}</td>{_num(row['count'], 'aging:' + row['class'])}"
        + _num(row["accepted"])
        + "".join(_num(row["buckets"][label]) for label in labels)
        + "</tr>"
        for row in data["breaks_by_class"]
    ]
    header = [
        "Class",
        "Priority",
        "Breaks",
        "Accepted",
        "< 1 day",
        "1–7 days",
        "8–30 days",
        "> 30 days",
    ]
    return _table(header, cells, {2, 3, 4, 5, 6})


def _breaks(data: dict[str, Any]) -> str:
    shown = data["breaks"][:_SHOWN_ROWS]
    cells = [
        f'<tr><td class="{_e(row["priority"])}">{_e(row["priority"])}</td>'
        f"<td>{_e(row['class'])}</td><td><code>{_e(row['subject'])}</code></td>"
        f"<td>{_e(row['first_seen_at'])}</td>{_num(_age(row['age_s']))}"
        f"<td>{'accepted' if row['accepted'] else 'open'}</td>"
        f"<td><details><summary>evidence</summary><pre>{_e(_pretty(row['evidence']))}"
        "</pre></details></td></tr>"
        for row in shown
    ]
    note = _more(len(data["breaks"]))
    header = ["Priority", "Class", "Subject", "First seen", "Age", "State", "Evidence"]
    return _table(header, cells, {4}) + note


def _unreconciled(data: dict[str, Any]) -> str:
    cells = [
        f"<tr><td><code>{_e(row['intent_id'])}</code></td><td>{_e(row['partner'])}</td>"
        f"<td>{_e(row['status'])}</td>{_num(_hnv(row['amount_wei']))}"
        f"<td>{_e(row['since'])}</td>{_num(_age(row['age_s']))}</tr>"
        for row in data["unreconciled"][:_SHOWN_ROWS]
    ]
    header = ["Intent", "Partner", "Status", "HNV", "Since", "Age"]
    return _table(header, cells, {3, 5}) + _more(len(data["unreconciled"]))


def _stuck(data: dict[str, Any]) -> str:
    cells = []
    for row in data["stuck"][:_SHOWN_ROWS]:
        attempts = "".join(
            f"<li><code>{_e(a['tx_hash'])}</code> nonce {_e(a['nonce'])}, "
            f"{_e(a['status'])}, fee cap {_e(a['max_fee_wei'])} wei, "
            f"sent at block {_e(a['sent_block'])}</li>"
            for a in row["attempts"]
        )
        cells.append(
            f"<tr><td><code>{_e(row['intent_id'])}</code></td>"
            f"{_num(_hnv(row['amount_wei']))}{_num(row['blocks_waiting'])}"
            f"<td><ul>{attempts}</ul></td></tr>"
        )
    header = ["Intent", "HNV", "Blocks waiting", "Attempts"]
    return _table(header, cells, {1, 2}) + _more(len(data["stuck"]))


def _more(total: int) -> str:
    if total <= _SHOWN_ROWS:
        return ""
    return (
        f'<p class="muted">Showing {_SHOWN_ROWS} of {total}; '
        "the JSON and CSV formats list them all.</p>"
    )


def _pretty(value: Any) -> str:
    return ev.dumps(value, indent=True).decode()


def _age(age_s: int) -> str:
    return breaks.age_text(age_s)


def chart(series: list[dict[str, Any]]) -> str:
    """Return an inline SVG bar chart: intents created and breaks first seen, by day."""
    if not series:
        return '<p class="muted">No days in the window.</p>'
    plot_w = _CHART_W - _PAD_L - _PAD_R
    plot_h = _CHART_H - _PAD_T - _PAD_B
    top = max(max(d["intents"] for d in series), max(d["breaks"] for d in series), 1)
    slot = plot_w / len(series)
    bar = max(slot / 2 - 1, 1)
    shapes = []
    for n, day in enumerate(series):
        x = _PAD_L + n * slot
        for offset, field, colour in ((0, "intents", _BLUE), (bar, "breaks", _ORANGE)):
            height = plot_h * day[field] / top
            shapes.append(
                f'<rect x="{x + offset:.1f}" y="{_PAD_T + plot_h - height:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}" fill="{colour}">'
                f"<title>{_e(day['day'])}: {day[field]} {field}</title></rect>"
            )
    axis_y = _PAD_T + plot_h
    labels = [
        f'<text x="{_PAD_L - 6}" y="{_PAD_T + 4}" text-anchor="end">{top}</text>',
        f'<text x="{_PAD_L - 6}" y="{axis_y}" text-anchor="end">0</text>',
        f'<text x="{_PAD_L}" y="{_CHART_H - 8}">{_e(series[0]["day"])}</text>',
        f'<text x="{_CHART_W - _PAD_R}" y="{_CHART_H - 8}" text-anchor="end">'
        f"{_e(series[-1]['day'])}</text>",
        f'<rect x="{_PAD_L + 8}" y="4" width="10" height="10" fill="{_BLUE}"/>'
        f'<text x="{_PAD_L + 22}" y="13">intents created</text>',
        f'<rect x="{_PAD_L + 130}" y="4" width="10" height="10" fill="{_ORANGE}"/>'
        f'<text x="{_PAD_L + 144}" y="13">breaks first seen</text>',
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="100%" '
        f'viewBox="0 0 {_CHART_W} {_CHART_H}" aria-labelledby="chart-title">'
        '<title id="chart-title">Intents created and breaks first seen per day</title>'
        f'<line x1="{_PAD_L}" y1="{axis_y}" x2="{_CHART_W - _PAD_R}" y2="{axis_y}" '
        'stroke="#9aa0a6"/>' + "".join(shapes) + "".join(labels) + "</svg>"
    )
