"""Reconciliation reports: one stable shape, rendered as table, JSON, CSV or HTML.

A report is a reconciliation run plus what operators ask of it: totals per
status and per partner (gross, reversed, net), the breaks by class and
priority with their age, what was still unreconciled at the cut, stuck
transactions with their attempts, and a day-by-day series. The JSON and CSV
forms are documented field by field in ``docs/reports.md``; amounts there
are integer strings in base units next to a ``decimals`` field, and
:func:`haven.types.format_hnv` renders them for people in table and HTML.

Without ``as_of`` a report reconciles now and stores the run like any other
(its breaks age from it); with ``as_of`` it recomputes the books at that past
moment and writes nothing. ``from``/``to`` narrow the per-status, per-partner
and series sections to intents created in [from, to); the verdict, totals,
breaks and unreconciled list always cover the whole book, since a slice of
it cannot prove the books balance.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from haven import db, intents, migrations
from haven.chain import ChainClient
from haven.errors import RpcUnavailableError
from haven.reconciler import breaks, page, runs
from haven.reconciler import evidence as ev
from haven.reconciler.breaks import Break
from haven.reconciler.config import ReconcilerConfig
from haven.reconciler.runs import Run
from haven.reconciler.snapshot import AttemptAt, IntentAt, SettledDay, Snapshot
from haven.settings import Settings
from haven.types import HNV_DECIMALS, format_hnv, intent_id_hex

SCHEMA = "haven.report/1"
FORMATS = ("table", "json", "csv", "html")
CSV_COLUMNS = (
    "section",
    "name",
    "partner",
    "status",
    "class",
    "priority",
    "subject",
    "count",
    "amount_wei",
    "reversed_wei",
    "net_wei",
    "decimals",
    "first_seen_at",
    "age_s",
    "age_bucket",
    "value",
)
EXIT_RECONCILED = 0
EXIT_NOT_RECONCILED = 1
# Invalid settings or arguments: the command line's (and argparse's) code.
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
SERIES_DAYS = 30
# The longest window a report accepts: one row per day of it in the series.
MAX_SERIES_DAYS = 366
# No moment before this can hold an intent or a block; earlier ones are typos
# (and near year 1 the series' day arithmetic would overflow).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
# Rows shown per list in table and HTML; JSON and CSV hold them all.
SHOWN_ROWS = 50
# The statuses a partner's totals count: owed or paid.
EARNED = frozenset((*intents.OUTSTANDING, intents.CONFIRMED))


@dataclass(frozen=True)
class Report:
    """A built report: its verdict and the JSON-ready data every format renders."""

    verdict: str
    data: dict[str, Any]
    run_id: int | None = None


class WindowError(ValueError):
    """A report's ``from``, ``to`` or ``as_of`` is unusable.

    ``name`` is the parameter at fault as the API spells it (``from``,
    ``to``, ``as_of``); the message says what was expected and what came.
    """

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


def check_window(
    from_: datetime | None,
    to: datetime | None,
    as_of: datetime | None,
    *,
    now: datetime,
) -> None:
    """Raise WindowError unless the window and cut make a report.

    Every moment must be timezone-aware, from 1970 on; ``as_of`` no later
    than ``now`` (the database's clock); ``from`` before ``to`` (or before
    the cut when there is no ``to``); and the window at most
    :data:`MAX_SERIES_DAYS` days long.
    """
    for name, moment in (("from", from_), ("to", to), ("as_of", as_of)):
        if moment is not None and moment < EARLIEST:
            raise WindowError(
                name,
                f"expected a moment from {_iso(EARLIEST)} on, got {_iso(moment)}",
            )
    if as_of is not None and as_of > now:
        raise WindowError(
            "as_of",
            f"expected a moment no later than now ({_iso(now)}), got {_iso(as_of)}",
        )
    if from_ is None:
        return
    end = to if to is not None else (as_of or now)
    if from_ >= end:
        what = "to" if to is not None else ("the as_of cut" if as_of else "now")
        raise WindowError(
            "from",
            f"expected a moment before {what} ({_iso(end)}), got {_iso(from_)}",
        )
    days = _series_days(from_, end)
    if days > MAX_SERIES_DAYS:
        raise WindowError(
            "from",
            f"expected a window of at most {MAX_SERIES_DAYS} days, got {days} "
            f"days ({_iso(from_)} to {_iso(end)})",
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _series_days(first: datetime, end: datetime) -> int:
    """Return how many UTC days the series of [first, end) has."""
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    return (last - first.astimezone(UTC).date()).days + 1


def exit_code(verdict: str) -> int:
    """Return the ``haven report`` exit code of a verdict."""
    if verdict == runs.RECONCILED:
        return EXIT_RECONCILED
    if verdict == runs.INCOMPLETE:
        return EXIT_INCOMPLETE
    return EXIT_NOT_RECONCILED


# --- building --------------------------------------------------------------


async def build(
    pool: asyncpg.Pool,
    chain: ChainClient | None,
    settings: Settings,
    *,
    from_: datetime | None = None,
    to: datetime | None = None,
    as_of: datetime | None = None,
    config: ReconcilerConfig | None = None,
) -> Report:
    """Reconcile (now, or as of ``as_of``) and assemble the report.

    Raises WindowError (a ValueError) for a window :func:`check_window`
    refuses, before anything is stored, and DatabaseUnavailableError when
    PostgreSQL is down; an unreachable chain gives an ``incomplete`` report
    instead of an error.
    """
    config = config or ReconcilerConfig.from_settings(settings)
    async with db.translate_errors(), pool.acquire() as connection:
        now: datetime = await connection.fetchval("SELECT now()")
    check_window(from_, to, as_of, now=now)
    # The settled intents stay in SQL, summed by partner and day over the
    # window; the report groups the rest, which it loads, by itself.
    if as_of is None:
        run = await runs.execute(
            pool, chain, config, trigger="report", scan_logs=True, window=(from_, to)
        )
    else:
        cut = await runs.choose_cut(pool, chain, config, at=as_of)
        run = await runs.compute(
            pool, chain, config, cut, scan_logs=True, window=(from_, to)
        )

    async with db.translate_errors(), pool.acquire() as connection:
        seen = await breaks.first_seen(connection, [b.key for b in run.found])
        last_known = [] if run.matching else await breaks.open_breaks(connection)
    data = _assemble(run, config, seen, last_known, (from_, to, as_of))
    return Report(verdict=run.verdict, data=data, run_id=run.id)


Window = tuple[datetime | None, datetime | None, datetime | None]


def _assemble(
    run: Run,
    config: ReconcilerConfig,
    seen: dict[tuple[str, str], datetime],
    last_known: list[breaks.StoredBreak],
    window: Window,
) -> dict[str, Any]:
    snap = run.snapshot
    from_, to, as_of = window
    chosen = [i for i in snap.intents if _in_window(i.created_at, from_, to)]
    tally = _Tally.of(chosen, snap.settled.days)
    listed = _break_rows(run, seen, last_known)
    return {
        "schema": SCHEMA,
        "verdict": run.verdict,
        "reasons": list(run.reasons),
        "cut": {
            "at": ev.timestamp(snap.cut.at),
            "block_number": snap.cut.block_number,
            "block_hash": snap.cut.block_hash,
        },
        "window": {
            "from": ev.timestamp(from_),
            "to": ev.timestamp(to),
            "as_of": ev.timestamp(as_of),
        },
        "token": snap.token_address,
        "decimals": HNV_DECIMALS,
        "totals": runs.totals(snap, run.matching),
        "by_status": _by_status(tally),
        "by_partner": _by_partner(tally),
        "breaks_source": "run" if run.matching is not None else "last_known",
        "breaks": listed,
        "breaks_by_class": _aging(listed),
        "unreconciled": _unreconciled(snap),
        "stuck": _stuck(snap, config),
        "series": _series(snap, tally, listed, from_, to),
    }


def _in_window(at: datetime, from_: datetime | None, to: datetime | None) -> bool:
    return (from_ is None or at >= from_) and (to is None or at < to)


@dataclass
class _Sum:
    count: int = 0
    gross: int = 0
    reversed: int = 0

    def add(self, other: _Sum) -> None:
        self.count += other.count
        self.gross += other.gross
        self.reversed += other.reversed

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "amount_wei": str(self.gross),
            "reversed_wei": str(self.reversed),
            "net_wei": str(self.gross - self.reversed),
        }


@dataclass
class _Tally:
    """The window's intents summed by partner and status, and by UTC day."""

    by_group: dict[tuple[str, str], _Sum]
    by_day: dict[date, _Sum]

    @classmethod
    def of(cls, chosen: Iterable[IntentAt], settled: Iterable[SettledDay]) -> _Tally:
        by_group: dict[tuple[str, str], _Sum] = defaultdict(_Sum)
        by_day: dict[date, _Sum] = defaultdict(_Sum)
        for i in chosen:
            reversed_ = i.amount_wei if i.reversed_at is not None else 0
            one = _Sum(1, i.amount_wei, reversed_)
            by_group[i.partner, i.status].add(one)
            by_day[i.created_at.astimezone(UTC).date()].add(one)
        # Settled intents are confirmed and not reversed at the cut.
        for d in settled:
            some = _Sum(d.count, d.amount_wei)
            by_group[d.partner, intents.CONFIRMED].add(some)
            by_day[d.day].add(some)
        return cls(by_group, by_day)

    def total(self, partners: Iterable[str], statuses: Iterable[str]) -> _Sum:
        chosen = set(statuses)
        found = _Sum()
        for partner in partners:
            for status in chosen:
                group = self.by_group.get((partner, status))
                if group is not None:
                    found.add(group)
        return found

    @property
    def partners(self) -> list[str]:
        return sorted({partner for partner, _ in self.by_group})


def _by_status(tally: _Tally) -> list[dict[str, Any]]:
    partners = tally.partners
    return [
        {"status": status, **tally.total(partners, [status]).to_json()}
        for status in intents.STATUSES
    ]


def _by_partner(tally: _Tally) -> list[dict[str, Any]]:
    rows = []
    for partner in tally.partners:
        statuses = [
            {"status": status, **tally.by_group[partner, status].to_json()}
            for status in intents.STATUSES
            if (partner, status) in tally.by_group
        ]
        # A partner's own totals are what its events earned: intents voided,
        # failed or rejected were never owed, and show only in its statuses.
        earned = tally.total([partner], EARNED)
        rows.append({"partner": partner, **earned.to_json(), "by_status": statuses})
    return rows


def _break_rows(
    run: Run,
    seen: dict[tuple[str, str], datetime],
    last_known: list[breaks.StoredBreak],
) -> list[dict[str, Any]]:
    at = run.cut.at
    if run.matching is None:
        found = [
            (
                Break(s.cls, s.subject, s.evidence, s.accepted_at is not None),
                s.first_seen_at,
            )
            for s in last_known
        ]
    else:
        found = [(b, min(seen.get(b.key, at), at)) for b in run.found]
    rows = []
    for brk, first in found:
        age_s = max(int((at - first).total_seconds()), 0)
        rows.append(
            {
                **brk.to_json(),
                "first_seen_at": ev.timestamp(first),
                "age_s": age_s,
                "age_bucket": breaks.age_bucket(age_s),
            }
        )
    return rows


def _aging(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for cls in breaks.CLASSES:
        mine = [row for row in listed if row["class"] == cls]
        buckets = {label: 0 for label, _, _ in breaks.AGE_BUCKETS}
        for row in mine:
            buckets[row["age_bucket"]] += 1
        rows.append(
            {
                "class": cls,
                "priority": breaks.PRIORITY[cls],
                "count": len(mine),
                "accepted": sum(1 for row in mine if row["accepted"]),
                "oldest_age_s": max((row["age_s"] for row in mine), default=None),
                "buckets": buckets,
            }
        )
    return rows


def _unreconciled(snap: Snapshot) -> list[dict[str, Any]]:
    at = snap.cut.at
    waiting = sorted(
        (i for i in snap.intents if i.is_outstanding or i.id in snap.later_mint_ids),
        key=lambda i: (i.status_since, i.id),
    )
    return [
        {
            "intent_id": intent_id_hex(i.id),
            "partner": i.partner,
            "status": i.status,
            "amount_wei": str(i.amount_wei),
            "since": ev.timestamp(i.status_since),
            "age_s": max(int((at - i.status_since).total_seconds()), 0),
        }
        for i in waiting
    ]


def _stuck(snap: Snapshot, config: ReconcilerConfig) -> list[dict[str, Any]]:
    minted = {m.intent_id for m in snap.mints}
    by_intent: dict[bytes, list[AttemptAt]] = defaultdict(list)
    for attempt in snap.attempts:
        by_intent[attempt.intent_id].append(attempt)
    rows = []
    for intent in snap.intents:
        if intent.status != intents.SUBMITTED or intent.id in minted:
            continue
        tried = by_intent.get(intent.id, [])
        waited = _blocks_waiting(snap, tried)
        overdue = intent.status_since + timedelta(
            seconds=config.missing_on_chain_grace_s
        )
        if not (
            (waited is not None and waited >= config.stuck_after_blocks)
            or overdue <= snap.cut.at
        ):
            continue
        rows.append(
            {
                "intent_id": intent_id_hex(intent.id),
                "partner": intent.partner,
                "amount_wei": str(intent.amount_wei),
                "submitted_at": ev.timestamp(intent.status_since),
                "blocks_waiting": waited,
                "attempts": [_attempt_json(a) for a in tried],
            }
        )
    return rows


def _blocks_waiting(snap: Snapshot, tried: list[AttemptAt]) -> int | None:
    sent = [a.sent_block for a in tried if a.sent_block is not None]
    if not sent or snap.cut.block_number is None:
        return None
    return max(snap.cut.block_number - min(sent), 0)


def _attempt_json(attempt: AttemptAt) -> dict[str, Any]:
    return {
        "tx_hash": ev.hex_bytes(attempt.tx_hash),
        "signer": attempt.signer,
        "nonce": attempt.nonce,
        "status": attempt.status,
        "max_fee_wei": str(attempt.max_fee_wei),
        "max_priority_fee_wei": str(attempt.max_priority_fee_wei),
        "sent_block": attempt.sent_block,
        "created_at": ev.timestamp(attempt.created_at),
    }


def _series(
    snap: Snapshot,
    tally: _Tally,
    listed: list[dict[str, Any]],
    from_: datetime | None,
    to: datetime | None,
) -> list[dict[str, Any]]:
    # Nothing is created after the cut: a window reaching past it ends there.
    end = min(to, snap.cut.at) if to is not None else snap.cut.at
    last = (end - timedelta(microseconds=1) if end == to else end).astimezone(UTC)
    if from_ is not None:
        first = from_.astimezone(UTC).date()
    else:
        # Nothing is dated before 1970: a window ending near it is shorter.
        first = max(last.date() - timedelta(days=SERIES_DAYS - 1), EARLIEST.date())
    days = [first + timedelta(days=n) for n in range((last.date() - first).days + 1)]
    opened: dict[date, int] = defaultdict(int)
    for row in listed:
        seen_at = datetime.fromisoformat(row["first_seen_at"])
        if _in_window(seen_at, from_, to):
            opened[seen_at.astimezone(UTC).date()] += 1
    nothing = _Sum()
    return [
        {
            "day": day.isoformat(),
            "intents": tally.by_day.get(day, nothing).count,
            "amount_wei": str(tally.by_day.get(day, nothing).gross),
            "breaks": opened[day],
        }
        for day in days
    ]


# --- rendering -------------------------------------------------------------


def render(report: Report, fmt: str) -> str:
    """Render ``report`` as ``table``, ``json``, ``csv`` or ``html``."""
    if fmt == "json":
        return (ev.dumps(report.data, indent=True) + b"\n").decode()
    if fmt == "csv":
        return render_csv(report.data)
    if fmt == "table":
        return render_table(report.data)
    if fmt == "html":
        return page.render(report.data)
    raise ValueError(f"unknown report format {fmt!r}; expected one of {FORMATS}")


def render_csv(data: dict[str, Any]) -> str:
    """Render the report as CSV rows in the documented column order."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(data):
        writer.writerow({column: _cell(row.get(column)) for column in CSV_COLUMNS})
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return ev.dumps(value).decode()
    return str(value)


def csv_rows(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the report as flat rows, section by section."""
    yield from _summary_rows(data)
    for name, value in data["totals"].items():
        yield {
            "section": "total",
            "name": name.removesuffix("_wei"),
            "amount_wei": value,
            "decimals": data["decimals"],
        }
    for row in data["by_status"]:
        yield {"section": "status", **_amounts(row, data), "status": row["status"]}
    for row in data["by_partner"]:
        yield {"section": "partner", **_amounts(row, data), "partner": row["partner"]}
        for sub in row["by_status"]:
            yield {
                "section": "partner_status",
                **_amounts(sub, data),
                "partner": row["partner"],
                "status": sub["status"],
            }
    yield from _break_csv_rows(data)
    yield from _work_rows(data)


def _summary_rows(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    cut, window = data["cut"], data["window"]
    pairs = [
        ("schema", data["schema"]),
        ("verdict", data["verdict"]),
        ("cut_at", cut["at"]),
        ("cut_block", cut["block_number"]),
        ("cut_block_hash", cut["block_hash"]),
        ("token", data["token"]),
        ("from", window["from"]),
        ("to", window["to"]),
        ("as_of", window["as_of"]),
        ("breaks_source", data["breaks_source"]),
    ]
    pairs += [("reason", reason) for reason in data["reasons"]]
    for name, value in pairs:
        yield {"section": "summary", "name": name, "value": value}


def _amounts(row: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {
        "count": row["count"],
        "amount_wei": row["amount_wei"],
        "reversed_wei": row["reversed_wei"],
        "net_wei": row["net_wei"],
        "decimals": data["decimals"],
    }


def _break_csv_rows(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for row in data["breaks"]:
        yield {
            "section": "break",
            "class": row["class"],
            "priority": row["priority"],
            "subject": row["subject"],
            "status": "accepted" if row["accepted"] else "open",
            "first_seen_at": row["first_seen_at"],
            "age_s": row["age_s"],
            "age_bucket": row["age_bucket"],
            "value": row["evidence"],
        }
    for row in data["breaks_by_class"]:
        for label, count in row["buckets"].items():
            yield {
                "section": "aging",
                "class": row["class"],
                "priority": row["priority"],
                "age_bucket": label,
                "count": count,
            }


def _work_rows(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for row in data["unreconciled"]:
        yield {
            "section": "unreconciled",
            "subject": row["intent_id"],
            "partner": row["partner"],
            "status": row["status"],
            "amount_wei": row["amount_wei"],
            "decimals": data["decimals"],
            "first_seen_at": row["since"],
            "age_s": row["age_s"],
        }
    for row in data["stuck"]:
        yield {
            "section": "stuck",
            "subject": row["intent_id"],
            "partner": row["partner"],
            "amount_wei": row["amount_wei"],
            "decimals": data["decimals"],
            "first_seen_at": row["submitted_at"],
            "count": len(row["attempts"]),
            "value": row["blocks_waiting"],
        }
        for attempt in row["attempts"]:
            yield {
                "section": "attempt",
                "subject": row["intent_id"],
                "name": attempt["tx_hash"],
                "status": attempt["status"],
                "value": attempt,
            }
    for row in data["series"]:
        yield {
            "section": "series",
            "name": row["day"],
            "count": row["intents"],
            "amount_wei": row["amount_wei"],
            "decimals": data["decimals"],
            "value": row["breaks"],
        }


def hnv(amount_wei: str | None) -> str:
    """Render an integer string of wei as HNV for people ('-' when unknown)."""
    return "-" if amount_wei is None else f"{format_hnv(int(amount_wei))} HNV"


def render_table(data: dict[str, Any]) -> str:
    """Render the report as aligned plain text for a terminal."""
    cut, window = data["cut"], data["window"]
    block = cut["block_number"]
    lines = [
        f"verdict: {data['verdict']}",
        f"cut:     {cut['at']} at "
        + (f"block {block}" if block is not None else "an unknown block"),
        f"window:  intents created from {window['from'] or 'the start'} "
        f"to {window['to'] or 'the cut'}",
        f"token:   {data['token']}",
    ]
    if window["as_of"]:
        lines.insert(1, f"as of:   {window['as_of']} (recomputed, nothing stored)")
    lines += [f"reason:  {reason}" for reason in data["reasons"]]
    lines += ["", *_table(["total", "amount"], _total_cells(data["totals"]))]
    lines += [
        "",
        *_table(["status", "count", "gross", "reversed", "net"], _status_cells(data)),
    ]
    lines += [
        "",
        *_table(["partner", "count", "gross", "reversed", "net"], _partner_cells(data)),
    ]
    lines += [
        "",
        *_table(
            ["class", "priority", "breaks", "accepted", *_bucket_labels()],
            _aging_cells(data),
        ),
    ]
    lines += [
        "",
        *_table(
            ["break", "priority", "subject", "age", "accepted"], _break_cells(data)
        ),
    ]
    lines += [
        "",
        *_table(
            ["unreconciled", "partner", "status", "amount", "since"],
            _waiting_cells(data),
        ),
    ]
    lines += [
        "",
        *_table(["stuck", "amount", "blocks", "attempts"], _stuck_cells(data)),
    ]
    lines += ["", *_table(["day", "intents", "amount", "breaks"], _day_cells(data))]
    return "\n".join(lines) + "\n"


def _bucket_labels() -> list[str]:
    return [label for label, _, _ in breaks.AGE_BUCKETS]


def _total_cells(totals: dict[str, str | None]) -> list[list[str]]:
    return [[name.removesuffix("_wei"), hnv(value)] for name, value in totals.items()]


def _status_cells(data: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["status"],
            str(r["count"]),
            hnv(r["amount_wei"]),
            hnv(r["reversed_wei"]),
            hnv(r["net_wei"]),
        ]
        for r in data["by_status"]
    ]


def _partner_cells(data: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["partner"],
            str(r["count"]),
            hnv(r["amount_wei"]),
            hnv(r["reversed_wei"]),
            hnv(r["net_wei"]),
        ]
        for r in data["by_partner"]
    ]


def _aging_cells(data: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["class"],
            r["priority"],
            str(r["count"]),
            str(r["accepted"]),
            *(str(n) for n in r["buckets"].values()),
        ]
        for r in data["breaks_by_class"]
    ]


def _break_cells(data: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["class"],
            r["priority"],
            r["subject"],
            breaks.age_text(r["age_s"]),
            "yes" if r["accepted"] else "no",
        ]
        for r in data["breaks"][:SHOWN_ROWS]
    ]


def _waiting_cells(data: dict[str, Any]) -> list[list[str]]:
    return [
        [r["intent_id"], r["partner"], r["status"], hnv(r["amount_wei"]), r["since"]]
        for r in data["unreconciled"][:SHOWN_ROWS]
    ]


def _stuck_cells(data: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["intent_id"],
            hnv(r["amount_wei"]),
            str(r["blocks_waiting"]),
            str(len(r["attempts"])),
        ]
        for r in data["stuck"][:SHOWN_ROWS]
    ]


def _day_cells(data: dict[str, Any]) -> list[list[str]]:
    # The latest days, newest last, as the series runs.
    return [
        [r["day"], str(r["intents"]), hnv(r["amount_wei"]), str(r["breaks"])]
        for r in data["series"][-SHOWN_ROWS:]
    ]


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    body = list(rows) or [["(none)"] + [""] * (len(header) - 1)]
    widths = [max(len(r[n]) for r in [header, *body]) for n in range(len(header))]
    rule = ["-" * width for width in widths]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(r, widths, strict=True)
        ).rstrip()
        for r in [header, rule, *body]
    ]


# --- command line ----------------------------------------------------------


def _output_path(text: str) -> Path:
    # Path("") is the current directory: an empty value would be refused as
    # one, naming a "." nobody typed.
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file path, got an empty value")
    return Path(text)


def _when(text: str) -> datetime:
    expected = "expected an ISO 8601 date or time (2026-12-01, 2026-12-01T10:00Z)"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(
            f"{expected} within years 1 to 9999 in UTC, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``haven report`` flags and document its exit codes."""
    parser.add_argument(
        "--from",
        dest="from_",
        type=_when,
        metavar="WHEN",
        help="count only intents created at or after WHEN (UTC unless stated)",
    )
    parser.add_argument(
        "--to",
        type=_when,
        metavar="WHEN",
        help="count only intents created before WHEN",
    )
    parser.add_argument(
        "--as-of",
        dest="as_of",
        type=_when,
        metavar="WHEN",
        help="report the books as they stood at WHEN (writes nothing)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="output format (default: table); JSON and CSV: see docs/reports.md",
    )
    parser.add_argument(
        "--output",
        type=_output_path,
        metavar="PATH",
        help="write the report to PATH instead of standard output",
    )
    parser.epilog = (
        f"exit status: {EXIT_RECONCILED} reconciled; {EXIT_NOT_RECONCILED} "
        f"reconciled_with_pending or breaks; {EXIT_USAGE} invalid settings or "
        f"arguments; {EXIT_INCOMPLETE} incomplete (index behind or chain "
        "unreachable)"
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``haven report``: build, render, write; return the verdict's exit code.

    A bad ``--from``/``--to``/``--as-of`` or an ``--output`` that cannot be
    written ends it with one line on stderr and :data:`EXIT_USAGE`; both
    are checked before the run is stored.
    """
    if args.output is not None:
        problem = _unwritable(args.output)
        if problem is not None:
            return _usage_error("--output", problem)
    pool = await db.create_pool(settings.database_url.reveal(), max_size=2)
    try:
        await migrations.ensure_current(pool)
        async with ChainClient(settings.rpc_url, chain_id=settings.chain_id) as chain:
            # An unreachable node makes the report incomplete; a node of the
            # wrong chain is an error.
            with contextlib.suppress(RpcUnavailableError):
                await chain.verify_chain_id()
            report = await build(
                pool, chain, settings, from_=args.from_, to=args.to, as_of=args.as_of
            )
    except WindowError as exc:
        return _usage_error("--" + exc.name.replace("_", "-"), str(exc))
    finally:
        await pool.close()
    text = render(report, args.format)
    if args.output is None:
        sys.stdout.write(text)
        return exit_code(report.verdict)
    try:
        write_whole(args.output, text)
    except OSError as exc:
        # Checked above: a full disk, or the path changed meanwhile.
        stored = "nothing" if report.run_id is None else f"run {report.run_id}"
        return _usage_error(
            "--output",
            f"expected a writable file, got {str(args.output)!r} "
            f"({exc.strerror}); {stored} was stored",
        )
    return exit_code(report.verdict)


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all.

    A regular file (or a new one) is written beside itself under a
    temporary name and renamed over ``path``, so a reader, or a full disk,
    never meets half a report, and a failed write leaves the old file as it
    was. Anything else (a terminal, a pipe) is written directly, and so is
    a symbolic link, which renaming would replace: ``/dev/stdout`` is one,
    even when the shell sent it to a file. Raises OSError.
    """
    if path.is_symlink() or (path.exists() and not path.is_file()):
        path.write_text(text, encoding="utf-8")
        return
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            shutil.copymode(path, name)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def _unwritable(path: Path) -> str | None:
    """Return why the report cannot be written to ``path``, or None."""
    expected = f"expected a writable file in an existing directory, got {str(path)!r}"
    parent = path.parent
    if path.is_dir():
        return f"{expected} (a directory)"
    if not parent.is_dir():
        return f"{expected} (no directory {str(parent)!r})"
    if path.exists():
        writable = os.access(path, os.W_OK)
    else:
        writable = os.access(parent, os.W_OK | os.X_OK)
    return None if writable else f"{expected} (permission denied)"


def _usage_error(option: str, message: str) -> int:
    # The shape argparse gives its own errors, and its exit code.
    print(f"haven report: error: argument {option}: {message}", file=sys.stderr)
    return EXIT_USAGE
