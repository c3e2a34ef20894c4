"""Reports: the stable JSON and CSV shapes, table and HTML renderings, and
the `haven report` command."""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import io
import os
import re
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from harness.anvil import free_port
from haven import db, intents
from haven.chain import ChainClient
from haven.daemon import attempts
from haven.reconciler import breaks, reports, runs
from haven.types import ONE_HNV, Nonce, TxHash, Wei, intent_id_hex

TEN_HNV = 10 * ONE_HNV
# docs/reports.md documents these, in this order; sorted keys in the JSON.
TOP_LEVEL_KEYS = [
    "breaks",
    "breaks_by_class",
    "breaks_source",
    "by_partner",
    "by_status",
    "cut",
    "decimals",
    "reasons",
    "schema",
    "series",
    "stuck",
    "token",
    "totals",
    "unreconciled",
    "verdict",
    "window",
]
TOTALS = [
    "db_confirmed_wei",
    "db_outstanding_wei",
    "discrepancy_gross_wei",
    "discrepancy_net_wei",
    "minted_chain_wei",
    "minted_indexed_wei",
    "total_supply_wei",
    "transfers_burned_wei",
    "transfers_minted_wei",
]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "reports.md"


@pytest.fixture
async def known_book(book):
    """Two partners' confirmed rewards and one still on its way."""
    await book.settle(TEN_HNV, partner="aurora")
    await book.settle(2 * ONE_HNV, partner="tribe")
    waiting = await book.intent(3 * ONE_HNV, status=intents.READY, partner="aurora")
    await book.index()
    return waiting


async def test_the_json_report_has_the_documented_keys_and_integer_amounts(
    known_book, book, chain, haven_settings, config
):
    report = await reports.build(book.pool, chain, haven_settings, config=config)
    data = orjson.loads(reports.render(report, "json"))

    assert list(data) == TOP_LEVEL_KEYS
    assert sorted(data["totals"]) == TOTALS
    assert data["verdict"] == runs.PENDING == report.verdict
    assert data["decimals"] == 18
    assert data["totals"]["minted_indexed_wei"] == str(12 * ONE_HNV)
    assert data["totals"]["minted_chain_wei"] == str(12 * ONE_HNV)
    assert data["totals"]["total_supply_wei"] == str(12 * ONE_HNV)
    assert data["totals"]["db_confirmed_wei"] == str(12 * ONE_HNV)
    assert data["totals"]["db_outstanding_wei"] == str(3 * ONE_HNV)
    assert [r["status"] for r in data["by_status"]] == list(intents.STATUSES)
    confirmed = next(r for r in data["by_status"] if r["status"] == "confirmed")
    assert confirmed == {
        "status": "confirmed",
        "count": 2,
        "amount_wei": str(12 * ONE_HNV),
        "reversed_wei": "0",
        "net_wei": str(12 * ONE_HNV),
    }
    assert [(p["partner"], p["count"]) for p in data["by_partner"]] == [
        ("aurora", 2),
        ("tribe", 1),
    ]
    assert [u["intent_id"] for u in data["unreconciled"]] == [
        intent_id_hex(known_book.id)
    ]
    assert [r["class"] for r in data["breaks_by_class"]] == list(breaks.CLASSES)


async def test_a_partners_totals_leave_out_what_was_never_owed(
    book, chain, haven_settings, config
):
    await book.settle(TEN_HNV, partner="aurora")
    await book.intent(3 * ONE_HNV, status=intents.READY, partner="aurora")
    await book.intent(5 * ONE_HNV, status=intents.VOIDED, partner="aurora")
    await book.index()

    report = await reports.build(book.pool, chain, haven_settings, config=config)
    [aurora] = report.data["by_partner"]

    assert (aurora["count"], aurora["amount_wei"], aurora["net_wei"]) == (
        2,
        str(13 * ONE_HNV),
        str(13 * ONE_HNV),
    )
    voided = next(r for r in aurora["by_status"] if r["status"] == "voided")
    assert (voided["count"], voided["amount_wei"]) == (1, str(5 * ONE_HNV))


async def test_settled_intents_summed_in_sql_give_the_report_of_every_row(
    book, chain, config
):
    old = await book.settle(TEN_HNV, partner="aurora")
    await book.backdate(old, 3 * 86_400)
    yesterday = await book.settle(2 * ONE_HNV, partner="tribe")
    await book.backdate(yesterday, 86_400)
    await book.settle(3 * ONE_HNV, partner="aurora")
    await book.settle(4 * ONE_HNV, partner="tribe")
    reversed_ = await book.settle(5 * ONE_HNV, partner="tribe")
    await book.settle(TEN_HNV, minted_wei=TEN_HNV + 1, partner="aurora")
    await book.intent(6 * ONE_HNV, status=intents.VOIDED, partner="aurora")
    await book.intent(7 * ONE_HNV, status=intents.READY, partner="tribe")
    await book.index()
    async with db.transaction(book.pool) as connection:
        await intents.mark_reversed(connection, reversed_.id)
    cut = await runs.choose_cut(book.pool, chain, config)
    since = cut.at - timedelta(days=2)

    assembled = {}
    for window in [(since, None), (None, None), (None, cut.at - timedelta(hours=1))]:
        fast = await runs.compute(book.pool, chain, config, cut, window=window)
        full = await runs.compute(
            book.pool, chain, config, cut, every_intent=True, window=window
        )
        shown = (*window, None)
        assembled[window] = reports._assemble(fast, config, {}, [], shown)

        assert fast.snapshot.settled.count == 4
        assert assembled[window] == reports._assemble(full, config, {}, [], shown)
    recent = assembled[since, None]
    assert [(p["partner"], p["amount_wei"]) for p in recent["by_partner"]] == [
        ("aurora", str(13 * ONE_HNV)),
        ("tribe", str(18 * ONE_HNV)),
    ]


async def test_every_documented_json_key_and_csv_column_is_in_the_docs():
    text = DOCS.read_text(encoding="utf-8")

    for key in TOP_LEVEL_KEYS + TOTALS:
        assert f"`{key}`" in text, key
    assert "`" + ",".join(reports.CSV_COLUMNS) + "`" in text


async def test_the_csv_report_keeps_the_documented_column_order(
    known_book, book, chain, haven_settings, config
):
    report = await reports.build(book.pool, chain, haven_settings, config=config)
    rows = list(csv.reader(io.StringIO(reports.render(report, "csv"))))

    assert tuple(rows[0]) == reports.CSV_COLUMNS
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    verdict = next(r for r in records if r["name"] == "verdict")
    assert verdict["section"] == "summary" and verdict["value"] == runs.PENDING
    minted = next(
        r for r in records if r["section"] == "total" and r["name"] == "minted_indexed"
    )
    assert (minted["amount_wei"], minted["decimals"]) == (str(12 * ONE_HNV), "18")
    tribe = next(
        r for r in records if r["section"] == "partner" and r["partner"] == "tribe"
    )
    assert tribe["amount_wei"] == str(2 * ONE_HNV) and tribe["count"] == "1"
    assert {r["section"] for r in records} >= {
        "summary",
        "total",
        "status",
        "partner",
        "partner_status",
        "aging",
        "unreconciled",
        "series",
    }


async def test_the_table_shows_hnv_for_people(
    known_book, book, chain, haven_settings, config
):
    report = await reports.build(book.pool, chain, haven_settings, config=config)
    text = reports.render(report, "table")

    assert text.startswith(f"verdict: {runs.PENDING}\n")
    assert "12 HNV" in text
    assert "3 HNV" in text
    assert intent_id_hex(known_book.id) in text
    assert "window:  intents created from the start to the cut\n" in text
    today = report.data["series"][-1]
    assert re.search(rf"^{today['day']}\s+3\s+15 HNV\s+0$", text, re.MULTILINE)


class _Checker(HTMLParser):
    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "rect", "line"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.errors: list[str] = []
        self.fields: dict[str, str] = {}
        self._field: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        names = dict(attrs)
        self._field = names.get("data-field")
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:]}")
            return
        self.open.pop()

    def handle_data(self, data):
        if self._field is not None and data.strip():
            self.fields[self._field] = data.strip()
            self._field = None


async def test_the_html_page_is_self_contained_and_well_formed(
    known_book, book, chain, haven_settings, config
):
    report = await reports.build(book.pool, chain, haven_settings, config=config)
    page = reports.render(report, "html")
    checker = _Checker()
    checker.feed(page)
    checker.close()

    assert page.startswith("<!DOCTYPE html>")
    assert checker.errors == [] and checker.open == []
    assert "script" not in checker.tags and "link" not in checker.tags
    assert "svg" in checker.tags and "style" in checker.tags
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0
    assert checker.fields["verdict"] == runs.PENDING
    assert checker.fields["minted_indexed_hnv"] == "12"
    assert checker.fields["minted_indexed_wei"] == str(12 * 10**18)
    assert checker.fields["partner:tribe:amount_hnv"] == "2"


async def _timestamp(chain, block_number: int) -> int:
    block = await chain.get_block(block_number)
    return int(block["timestamp"], 16)


async def _database_clock_past(pool: db.Pool, timestamp_s: int) -> datetime:
    """Wait until the database clock is in a later second than ``timestamp_s``."""
    async with asyncio.timeout(5), pool.acquire() as connection:
        while True:
            now = await connection.fetchval("SELECT now()")
            if int(now.timestamp()) > timestamp_s:
                return now
            await asyncio.sleep(0.05)


async def test_a_report_as_of_a_past_moment_shows_the_books_then_and_writes_nothing(
    book, chain, haven_settings, config, anvil
):
    await book.settle(TEN_HNV)
    head = await book.index()
    then = await _database_clock_past(book.pool, await _timestamp(chain, head))
    # Later blocks are stamped well after the moment, as on a real chain.
    await anvil.rpc("evm_increaseTime", [60])
    await book.settle(5 * ONE_HNV)
    await book.index()
    before = await runs.latest(book.pool)

    report = await reports.build(
        book.pool, chain, haven_settings, as_of=then, config=config
    )

    assert report.verdict == runs.RECONCILED
    assert report.data["totals"]["db_confirmed_wei"] == str(TEN_HNV)
    assert report.data["window"]["as_of"] is not None
    assert report.run_id is None
    assert await runs.latest(book.pool) == before


async def test_breaks_are_aged_from_their_first_sighting(
    book, chain, haven_settings, config
):
    stale = await book.intent(status=intents.READY)
    await book.backdate(stale, config.stale_intent_grace_s + 60)
    await book.index()
    await runs.execute(book.pool, chain, config)
    await book.execute(
        "UPDATE breaks SET first_seen_at = first_seen_at - interval '10 days'"
    )

    report = await reports.build(book.pool, chain, haven_settings, config=config)

    [listed] = report.data["breaks"]
    assert listed["class"] == breaks.STALE_INTENT
    assert listed["age_s"] >= 10 * 86_400
    assert listed["age_bucket"] == "8_30d"
    stale_row = next(
        r for r in report.data["breaks_by_class"] if r["class"] == breaks.STALE_INTENT
    )
    assert (stale_row["count"], stale_row["accepted"]) == (1, 0)
    assert stale_row["buckets"] == {"under_1d": 0, "1_7d": 0, "8_30d": 1, "over_30d": 0}
    checker = _Checker()
    checker.feed(reports.render(report, "html"))
    assert checker.errors == [] and checker.open == []
    assert checker.fields["aging:stale_intent"] == "1"
    assert "10d" in reports.render(report, "table")


async def test_accepted_breaks_are_counted_apart_in_their_class(
    book, chain, haven_settings, config
):
    for _ in range(2):
        stale = await book.intent(status=intents.READY)
        await book.backdate(stale, config.stale_intent_grace_s + 60)
    await book.index()
    await runs.execute(book.pool, chain, config)
    async with book.pool.acquire() as connection:
        subject = await connection.fetchval(
            "SELECT subject FROM breaks WHERE class = $1 LIMIT 1", breaks.STALE_INTENT
        )
        await breaks.accept(
            connection, breaks.STALE_INTENT, subject, by="key:ops", note="known"
        )

    report = await reports.build(book.pool, chain, haven_settings, config=config)

    stale_row = next(
        r for r in report.data["breaks_by_class"] if r["class"] == breaks.STALE_INTENT
    )
    assert (stale_row["count"], stale_row["accepted"]) == (2, 1)
    table = reports.render(report, "table")
    assert "breaks  accepted" in table


def test_age_buckets_follow_whole_days():
    day = breaks.DAY_S
    assert [breaks.age_bucket(s) for s in (0, day - 1, day, 7 * day + 1)] == [
        "under_1d",
        "under_1d",
        "1_7d",
        "1_7d",
    ]
    assert [breaks.age_bucket(s) for s in (8 * day, 30 * day + 5, 31 * day)] == [
        "8_30d",
        "8_30d",
        "over_30d",
    ]


async def test_stuck_transactions_are_listed_with_their_attempts(
    book, chain, haven_settings, config, anvil
):
    intent = await book.intent(status=intents.SUBMITTED)
    signer = (await _signers(book.pool))[0]
    sent_block = await chain.block_number()
    async with db.transaction(book.pool) as connection:
        for nonce_fee in (1, 2):
            tx_hash = TxHash("0x" + f"{nonce_fee:064x}")
            await attempts.record(
                connection,
                intent_id=intent.id,
                signer=signer,
                nonce=Nonce(0),
                tx_hash=tx_hash,
                raw_tx=b"\x02",
                max_fee_wei=Wei(nonce_fee * 10**9),
                max_priority_fee_wei=Wei(10**9),
                gas_limit=200_000,
            )
            await attempts.mark_sent(connection, [tx_hash], block_number=sent_block)
    await anvil.mine(config.stuck_after_blocks + 1)
    await book.index()

    report = await reports.build(book.pool, chain, haven_settings, config=config)

    [stuck] = report.data["stuck"]
    assert stuck["intent_id"] == intent_id_hex(intent.id)
    assert stuck["blocks_waiting"] >= config.stuck_after_blocks
    assert [a["max_fee_wei"] for a in stuck["attempts"]] == [str(10**9), str(2 * 10**9)]
    assert {a["nonce"] for a in stuck["attempts"]} == {0}


async def _signers(pool: db.Pool) -> list[str]:
    async with pool.acquire() as connection:
        return [
            r["address"] for r in await connection.fetch("SELECT address FROM signers")
        ]


async def test_the_window_narrows_counts_but_not_the_verdict(
    book, chain, haven_settings, config
):
    old = await book.settle(TEN_HNV)
    await book.backdate(old, 3 * 86_400)
    await book.settle(2 * ONE_HNV)
    await book.index()
    since = datetime.now(UTC) - timedelta(days=1)

    report = await reports.build(
        book.pool, chain, haven_settings, from_=since, config=config
    )

    confirmed = next(r for r in report.data["by_status"] if r["status"] == "confirmed")
    assert confirmed["amount_wei"] == str(2 * ONE_HNV)
    assert report.data["totals"]["db_confirmed_wei"] == str(12 * ONE_HNV)
    assert report.verdict == runs.RECONCILED
    assert sum(d["intents"] for d in report.data["series"]) == 1


@pytest.mark.parametrize(
    ("to", "days"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), []),
        (
            datetime(1970, 1, 3, 12, tzinfo=UTC),
            ["1970-01-01", "1970-01-02", "1970-01-03"],
        ),
    ],
)
async def test_a_window_ending_near_1970_draws_no_day_before_it(
    book, chain, haven_settings, config, to, days
):
    report = await reports.build(book.pool, chain, haven_settings, to=to, config=config)

    assert [d["day"] for d in report.data["series"]] == days


async def test_a_window_ending_after_the_cut_draws_its_days_up_to_the_cut(
    book, chain, haven_settings, config
):
    await book.settle(TEN_HNV)
    await book.index()

    report = await reports.build(
        book.pool,
        chain,
        haven_settings,
        to=datetime(2999, 1, 1, tzinfo=UTC),
        config=config,
    )

    series = report.data["series"]
    cut_day = datetime.fromisoformat(report.data["cut"]["at"]).date()
    assert len(series) == reports.SERIES_DAYS
    assert series[-1]["day"] == cut_day.isoformat()
    assert sum(d["intents"] for d in series) == 1


async def test_the_series_counts_only_breaks_first_seen_in_the_window(
    book, chain, haven_settings, config
):
    stale = await book.intent(status=intents.READY)
    await book.backdate(stale, config.stale_intent_grace_s + 60)
    await book.index()
    started = datetime.now(UTC)

    everything = await reports.build(book.pool, chain, haven_settings, config=config)
    before = await reports.build(
        book.pool, chain, haven_settings, to=started, config=config
    )

    assert [b["subject"] for b in everything.data["breaks"]] == [
        intent_id_hex(stale.id)
    ]
    assert sum(d["breaks"] for d in everything.data["series"]) == 1
    # First seen by the first report, after the second window ends.
    assert sum(d["breaks"] for d in before.data["series"]) == 0


async def test_an_incomplete_report_shows_the_last_known_breaks(
    book, chain, haven_settings, config, anvil
):
    stale = await book.intent(status=intents.READY)
    await book.backdate(stale, config.stale_intent_grace_s + 60)
    await book.index()
    await runs.execute(book.pool, chain, config)
    await anvil.mine(config.max_tail_lag_blocks + 5)

    report = await reports.build(book.pool, chain, haven_settings, config=config)

    assert report.verdict == runs.INCOMPLETE
    assert report.data["breaks_source"] == "last_known"
    assert [b["subject"] for b in report.data["breaks"]] == [intent_id_hex(stale.id)]
    assert reports.exit_code(report.verdict) == reports.EXIT_INCOMPLETE


def test_the_command_line_flags_parse_dates_as_utc_and_document_exit_codes():
    parser = argparse.ArgumentParser(prog="haven report")
    reports.add_arguments(parser)

    args = parser.parse_args(
        ["--from", "2026-12-01", "--as-of", "2026-12-02T10:00+01:00", "--format", "csv"]
    )

    assert args.from_ == datetime(2026, 12, 1, tzinfo=UTC)
    assert args.as_of == datetime(2026, 12, 2, 9, tzinfo=UTC)
    assert args.to is None and args.output is None and args.format == "csv"
    assert "0 reconciled" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--format", "pdf"])


async def test_the_command_writes_the_report_and_exits_by_verdict(
    book, chain, haven_settings, tmp_path
):
    await book.settle(TEN_HNV)
    await book.index()
    parser = argparse.ArgumentParser()
    reports.add_arguments(parser)
    output = tmp_path / "report.json"

    reconciled = await reports.command(
        haven_settings, parser.parse_args(["--format", "json", "--output", str(output)])
    )
    await book.intent(status=intents.READY)
    pending = await reports.command(
        haven_settings,
        parser.parse_args(["--format", "csv", "--output", str(tmp_path / "r.csv")]),
    )

    assert reconciled == reports.EXIT_RECONCILED
    assert orjson.loads(output.read_bytes())["verdict"] == runs.RECONCILED
    assert pending == reports.EXIT_NOT_RECONCILED


_WRITE_CAPPED = """
import resource, signal, sys
from pathlib import Path
from haven.reconciler.reports import write_whole
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
write_whole(Path(sys.argv[1]), "x" * 100_000)
"""


def test_a_report_file_is_replaced_whole_or_left_as_it_was(tmp_path):
    output = tmp_path / "report.json"
    output.write_text("the previous report")

    failed = subprocess.run(
        [sys.executable, "-c", _WRITE_CAPPED, str(output)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert failed.returncode != 0 and "File too large" in failed.stderr
    assert output.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    reports.write_whole(output, "the next report")
    assert output.read_text() == "the next report"


def test_a_report_through_a_symbolic_link_leaves_the_link_in_place(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("the previous report")
    link = tmp_path / "latest"
    link.symlink_to(target)

    reports.write_whole(link, "the next report")

    assert link.is_symlink()
    assert target.read_text() == "the next report"


def test_a_report_to_a_pipe_is_written_into_it(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()))
    reader.start()

    reports.write_whole(pipe, "through the pipe")
    reader.join(timeout=10)

    assert received == ["through the pipe"]
    assert stat.S_ISFIFO(pipe.stat().st_mode)


NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "name", "expected"),
    [
        ({"as_of": datetime(1, 1, 1, tzinfo=UTC)}, "as_of", "from 1970-01-01"),
        ({"from_": datetime(1969, 12, 31, tzinfo=UTC)}, "from", "from 1970-01-01"),
        ({"as_of": NOW + timedelta(seconds=1)}, "as_of", "no later than now"),
        (
            {"from_": NOW - timedelta(days=1), "to": NOW - timedelta(days=2)},
            "from",
            "before to",
        ),
        ({"from_": NOW, "to": NOW}, "from", "before to"),
        ({"from_": NOW + timedelta(hours=1)}, "from", "before now"),
        (
            {"from_": NOW - timedelta(days=2), "as_of": NOW - timedelta(days=3)},
            "from",
            "before the as_of cut",
        ),
        (
            {
                "from_": datetime(2000, 1, 1, tzinfo=UTC),
                "to": datetime(2030, 1, 1, tzinfo=UTC),
            },
            "from",
            "at most 366 days, got 10958 days",
        ),
        ({"from_": NOW - timedelta(days=366)}, "from", "at most 366 days, got 367"),
    ],
)
def test_an_unusable_window_is_refused_naming_the_parameter(window, name, expected):
    with pytest.raises(reports.WindowError) as caught:
        reports.check_window(
            window.get("from_"), window.get("to"), window.get("as_of"), now=NOW
        )

    assert caught.value.name == name
    assert expected in str(caught.value)


def test_a_window_of_the_longest_allowed_length_is_accepted():
    first = datetime(2026, 1, 1, tzinfo=UTC)

    reports.check_window(first, first + timedelta(days=366), None, now=NOW)
    reports.check_window(NOW - timedelta(days=365), None, None, now=NOW)
    reports.check_window(None, None, datetime(1970, 1, 1, tzinfo=UTC), now=NOW)


@pytest.fixture
def dead_chain_settings(database_url, haven_settings):
    """The test's settings with HAVEN_RPC_URL at a port nothing listens on."""
    return dataclasses.replace(
        haven_settings, rpc_url=(f"http://127.0.0.1:{free_port()}",)
    )


@pytest.mark.parametrize(
    ("argv", "option", "expected"),
    [
        (["--as-of", "0001-01-01"], "--as-of", "expected a moment from 1970-01-01"),
        (["--as-of", "2099-01-01"], "--as-of", "expected a moment no later than now"),
        (
            ["--from", "2026-12-05", "--to", "2026-12-01"],
            "--from",
            "expected a moment before to",
        ),
        (
            ["--from", "2000-01-01", "--to", "2030-01-01"],
            "--from",
            "expected a window of at most 366 days",
        ),
        (
            ["--output", "/nonexistent/dir/x.html"],
            "--output",
            "expected a writable file in an existing directory",
        ),
    ],
    ids=["as-of-year-1", "as-of-future", "from-after-to", "30-years", "no-dir"],
)
async def test_the_command_refuses_bad_arguments_with_one_line_before_any_run(
    book, haven_settings, capsys, argv, option, expected
):
    parser = argparse.ArgumentParser(prog="haven report")
    reports.add_arguments(parser)

    code = await reports.command(haven_settings, parser.parse_args(argv))

    err = capsys.readouterr().err
    assert code == reports.EXIT_USAGE == 2
    assert err.startswith(f"haven report: error: argument {option}: {expected}")
    assert err.count("\n") == 1
    assert await runs.latest(book.pool) is None


def test_an_empty_output_path_is_an_argument_error(capsys):
    parser = argparse.ArgumentParser(prog="haven report")
    reports.add_arguments(parser)

    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--output", ""])

    assert caught.value.code == 2
    assert "--output: expected a file path, got an empty value" in (
        capsys.readouterr().err
    )


def test_an_offset_that_leaves_the_calendar_is_an_argument_error():
    parser = argparse.ArgumentParser(prog="haven report")
    reports.add_arguments(parser)

    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--to", "9999-12-31T23:00-05:00"])

    assert caught.value.code == 2


async def test_with_the_chain_unreachable_indexed_figures_are_still_reported(
    book, dead_chain_settings, tmp_path, capsys
):
    await book.settle(TEN_HNV)
    await book.settle(2 * ONE_HNV, partner="tribe")
    indexed = await book.index()
    parser = argparse.ArgumentParser(prog="haven report")
    reports.add_arguments(parser)
    output = tmp_path / "report.json"

    code = await reports.command(
        dead_chain_settings,
        parser.parse_args(["--format", "json", "--output", str(output)]),
    )
    table_code = await reports.command(dead_chain_settings, parser.parse_args([]))

    data = orjson.loads(output.read_bytes())
    table = capsys.readouterr().out
    assert code == table_code == reports.EXIT_INCOMPLETE
    assert data["verdict"] == runs.INCOMPLETE
    assert data["cut"]["block_number"] == indexed
    totals = data["totals"]
    assert totals["minted_indexed_wei"] == str(12 * ONE_HNV)
    assert totals["transfers_minted_wei"] == str(12 * ONE_HNV)
    assert totals["transfers_burned_wei"] == "0"
    assert totals["db_confirmed_wei"] == str(12 * ONE_HNV)
    assert totals["minted_chain_wei"] is None
    assert totals["total_supply_wei"] is None
    assert f" at block {indexed}\n" in table
    assert re.search(r"^minted_indexed +12 HNV$", table, re.MULTILINE)
    assert re.search(r"^transfers_minted +12 HNV$", table, re.MULTILINE)
    assert re.search(r"^total_supply +-$", table, re.MULTILINE)


async def test_a_cut_without_a_block_reports_indexed_figures_as_unknown(
    book, dead_chain_settings, config
):
    await book.settle(TEN_HNV)
    await book.index()
    async with book.pool.acquire() as connection:
        now = await connection.fetchval("SELECT now()")

    async with ChainClient(dead_chain_settings.rpc_url, chain_id=31337) as dead:
        report = await reports.build(
            book.pool, dead, dead_chain_settings, as_of=now, config=config
        )

    totals = report.data["totals"]
    assert report.verdict == runs.INCOMPLETE
    assert report.data["cut"]["block_number"] is None
    assert totals["minted_indexed_wei"] is None
    assert totals["transfers_minted_wei"] is None
    assert totals["db_confirmed_wei"] == str(TEN_HNV)
    table = reports.render(report, "table")
    assert " at an unknown block\n" in table
    assert "\nas of:   " + report.data["window"]["as_of"] + " (recomputed" in table
