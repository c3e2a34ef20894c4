"""Reconciliation runs: the only module that talks SQL to ``reconciliation_runs``.

A run picks a cut (database time, then the newest block that counts as
confirmed under the chain head), reads the books at that cut, matches them
and writes one canonical JSON document. The document depends on nothing but
the data at or before the cut, so re-running a stored cut yields the same
bytes.

Verdicts, worst first::

    incomplete               index behind the cut, or the chain did not answer
    breaks                   an unaccepted P1-P3 break, or totals that disagree
    reconciled_with_pending  no breaks, but intents are still on their way
    reconciled               minted on chain == confirmed in the database

Only a complete run whose cut is the newest moves break state (seen,
resolved) and raises or resolves their alerts; older cuts are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
from loguru import logger

from haven import db, intents
from haven.chain import ChainClient
from haven.errors import ChainError
from haven.reconciler import alerts, breaks, matches, snapshot
from haven.reconciler import evidence as ev
from haven.reconciler.breaks import Break
from haven.reconciler.config import ReconcilerConfig
from haven.reconciler.matches import Matching
from haven.reconciler.snapshot import Cut, Snapshot
from haven.types import HNV_DECIMALS

SCHEMA = "haven.reconciliation/1"
INCOMPLETE = "incomplete"
BREAKS = "breaks"
PENDING = "reconciled_with_pending"
RECONCILED = "reconciled"
VERDICTS = (INCOMPLETE, BREAKS, PENDING, RECONCILED)

INCOMPLETE_RULE = "reconcile.incomplete"
INCOMPLETE_SUBJECT = "books"
# Serialises runs that persist, across processes ("HAVENREC").
_LOCK_KEY = 0x484156454E524543


@dataclass(frozen=True)
class Run:
    """One reconciliation: its cut, verdict, canonical document and findings."""

    cut: Cut
    verdict: str
    reasons: tuple[str, ...]
    document: bytes
    snapshot: Snapshot
    matching: Matching | None
    scanned_logs: bool
    id: int | None = None
    opened: tuple[Break, ...] = ()
    resolved: tuple[tuple[str, str], ...] = ()

    @property
    def found(self) -> tuple[Break, ...]:
        return self.matching.found if self.matching is not None else ()


async def choose_cut(
    pool: asyncpg.Pool,
    chain: ChainClient | None,
    config: ReconcilerConfig,
    *,
    at: datetime | None = None,
) -> Cut:
    """Return the cut of now (or of ``at``).

    When the chain does not answer, a cut of now falls back to the newest
    block the tailer counted as confirmed; a past cut's block is then None.

    Raises ValueError for an ``at`` later than the database's clock.
    """
    async with db.translate_errors(), pool.acquire() as connection:
        now: datetime = await connection.fetchval("SELECT now()")
    if at is not None and at > now:
        raise ValueError(f"cut time {at.isoformat()} is in the future (now {now})")
    cut_at = at or now
    if chain is None:
        return await _index_cut(pool, config, cut_at, past=at is not None)
    checkpoint = await snapshot.checkpoint_block(pool, config.tail_checkpoint)
    try:
        head = await (chain.block_number() if at is None else block_at(chain, at))
        block_number = _cut_block(head, checkpoint, config)
        block = await chain.get_block(block_number)
    except ChainError as exc:
        logger.warning("chain unreachable, the run will be incomplete", error=str(exc))
        return await _index_cut(pool, config, cut_at, past=at is not None)
    block_hash = block["hash"] if block is not None else None
    return Cut(at=cut_at, block_number=block_number, block_hash=block_hash)


async def _index_cut(
    pool: asyncpg.Pool, config: ReconcilerConfig, cut_at: datetime, *, past: bool
) -> Cut:
    # Without the chain, the index is the only witness of where the books
    # stand: cut where the tailer last counted blocks confirmed, so what
    # PostgreSQL holds is still reported (the run stays incomplete). For a
    # past moment the index cannot tell which block was confirmed then.
    found = (
        None if past else await snapshot.confirmed_block(pool, config.tail_checkpoint)
    )
    if found is None:
        return Cut(at=cut_at, block_number=None)
    block_number, block_hash = found
    return Cut(at=cut_at, block_number=block_number, block_hash=block_hash)


def _cut_block(head: int, checkpoint: int | None, config: ReconcilerConfig) -> int:
    # A tailer a few blocks behind is normal (it polls; blocks keep coming
    # after the daemon stops): cut where it stands rather than call the run
    # incomplete. Further behind, keep the confirmed head so the run says so.
    confirmed = confirmed_through(head, config.confirmations)
    if checkpoint is None or checkpoint >= confirmed:
        return confirmed
    if confirmed - checkpoint <= config.max_tail_lag_blocks:
        return checkpoint
    return confirmed


def confirmed_through(head: int, confirmations: int) -> int:
    """Return the newest block ``confirmations`` deep under ``head`` (tailer rule).

    A depth of 0 or 1 both mean the head itself.
    """
    return max(head - max(confirmations, 1) + 1, 0)


async def block_at(chain: ChainClient, at: datetime) -> int:
    """Return the last block stamped before the second of ``at`` (0 if none).

    Block timestamps have whole seconds; a block stamped in the same second
    as ``at`` may hold work done after it (a dev chain mines at once), so
    the cut leaves it out. Erring early is safe: a confirmed intent whose
    mint falls after the cut counts as pending, never as a break.
    """
    low, high = 0, await chain.block_number()
    limit = int(at.timestamp())
    while low < high:
        middle = (low + high + 1) // 2
        block = await chain.get_block(middle)
        if block is not None and int(block["timestamp"], 16) < limit:
            low = middle
        else:
            high = middle - 1
    return low


async def compute(
    pool: asyncpg.Pool,
    chain: ChainClient | None,
    config: ReconcilerConfig,
    cut: Cut,
    *,
    scan_logs: bool = False,
    every_intent: bool = False,
    window: snapshot.Window | None = None,
) -> Run:
    """Reconcile the books at ``cut`` without writing anything.

    ``every_intent`` loads settled intents row by row too, and ``window``
    sums those created in it by partner and day (see :mod:`snapshot`), for
    callers that list or group them; the run is the same either way.
    """
    snap = await snapshot.take(
        pool,
        chain,
        config,
        cut,
        scan_logs=scan_logs,
        every_intent=every_intent,
        window=window,
    )
    matching = matches.match(snap, config) if snap.is_complete else None
    verdict, reasons = decide(snap, matching)
    document = render_document(snap, matching, verdict, reasons)
    return Run(
        cut=cut,
        verdict=verdict,
        reasons=reasons,
        document=document,
        snapshot=snap,
        matching=matching,
        scanned_logs=scan_logs,
    )


def decide(snap: Snapshot, matching: Matching | None) -> tuple[str, tuple[str, ...]]:
    """Return the verdict of a run and the reasons behind it."""
    if matching is None or not snap.is_complete:
        return INCOMPLETE, snap.problems
    blocking = matching.blocking
    if blocking:
        classes = ", ".join(sorted({b.cls for b in blocking}))
        return BREAKS, (f"{len(blocking)} break(s): {classes}",)
    if matching.pending:
        return PENDING, (f"{len(matching.pending)} intent(s) outstanding",)
    confirmed = _confirmed_wei(snap)
    if snap.minted_indexed_wei != confirmed:
        return BREAKS, (
            f"totals disagree: minted {snap.minted_indexed_wei} wei, "
            f"confirmed {confirmed} wei",
        )
    return RECONCILED, ()


def _confirmed_wei(snap: Snapshot) -> int:
    loaded: int = sum(
        i.amount_wei for i in snap.intents if i.status == intents.CONFIRMED
    )
    settled: int = snap.settled.amount_wei
    return loaded + settled


def render_document(
    snap: Snapshot, matching: Matching | None, verdict: str, reasons: tuple[str, ...]
) -> bytes:
    """Serialise a run canonically: same cut and data, same bytes."""
    outstanding = [i for i in snap.intents if i.is_outstanding]
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "cut": {
            "at": ev.timestamp(snap.cut.at),
            "block_number": snap.cut.block_number,
            "block_hash": snap.cut.block_hash,
        },
        "token": snap.token_address,
        "decimals": HNV_DECIMALS,
        "verdict": verdict,
        "reasons": list(reasons),
        "totals": totals(snap, matching),
        "intents": {
            "by_status": _by_status(snap),
            "matched": matching.matched if matching else None,
            "outstanding": len(outstanding),
        },
        "breaks": [b.to_json() for b in matching.found] if matching else [],
    }
    return ev.dumps(document, indent=True) + b"\n"


def totals(snap: Snapshot, matching: Matching | None) -> dict[str, str | None]:
    """Return the run's totals as integer strings in wei (None when unknown)."""
    chain = snap.chain
    # The index is read up to the cut block: with no block, nothing of it.
    indexed = snap.cut.block_number is not None
    outstanding = sum(i.amount_wei for i in snap.intents if i.is_outstanding)
    return {
        "minted_indexed_wei": _opt(snap.minted_indexed_wei if indexed else None),
        "minted_chain_wei": _opt(chain.minted_logs_wei if chain else None),
        "total_supply_wei": _opt(chain.total_supply_wei if chain else None),
        "transfers_minted_wei": _opt(snap.transfers_minted_wei if indexed else None),
        "transfers_burned_wei": _opt(snap.transfers_burned_wei if indexed else None),
        "db_confirmed_wei": str(_confirmed_wei(snap)),
        "db_outstanding_wei": str(outstanding),
        "discrepancy_gross_wei": _opt(
            matching.discrepancy_gross_wei if matching else None
        ),
        "discrepancy_net_wei": _opt(matching.discrepancy_net_wei if matching else None),
    }


def _opt(value: int | None) -> str | None:
    return None if value is None else str(value)


def _by_status(snap: Snapshot) -> list[dict[str, Any]]:
    counts = dict.fromkeys(intents.STATUSES, 0)
    sums = dict.fromkeys(intents.STATUSES, 0)
    counts[intents.CONFIRMED] = snap.settled.count
    sums[intents.CONFIRMED] = snap.settled.amount_wei
    for intent in snap.intents:
        counts[intent.status] += 1
        sums[intent.status] += intent.amount_wei
    return [
        {"status": s, "count": counts[s], "amount_wei": str(sums[s])}
        for s in intents.STATUSES
    ]


async def execute(
    pool: asyncpg.Pool,
    chain: ChainClient | None,
    config: ReconcilerConfig,
    *,
    trigger: str = "schedule",
    scan_logs: bool = False,
    window: snapshot.Window | None = None,
) -> Run:
    """Reconcile now, store the run and move break and alert state; return the run.

    ``window`` is as for :func:`compute`. Safe to call from several
    processes: persistence is serialised.
    """
    cut = await choose_cut(pool, chain, config)
    run = await compute(pool, chain, config, cut, scan_logs=scan_logs, window=window)
    async with db.transaction(pool) as connection:
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        run = await _persist(connection, run, trigger)
    logger.info(
        "books reconciled",
        run_id=run.id,
        verdict=run.verdict,
        block_number=cut.block_number,
        breaks=len(run.found),
        opened=len(run.opened),
        resolved=len(run.resolved),
    )
    return run


async def _persist(connection: asyncpg.Connection, run: Run, trigger: str) -> Run:
    newest: datetime | None = await connection.fetchval(
        "SELECT max(cut_at) FROM reconciliation_runs WHERE moved_state"
    )
    moves_state = newest is None or run.cut.at > newest
    run = replace(run, id=await _insert(connection, run, trigger, moves_state))
    if not moves_state:
        return run
    if run.verdict == INCOMPLETE:
        await _alert_incomplete(connection, run)
        return run
    return await _move_break_state(connection, run)


async def _alert_incomplete(connection: asyncpg.Connection, run: Run) -> None:
    # The problem kinds make the identity of the evidence; their details
    # (how many blocks behind) change every run and are only observed.
    await alerts.raise_alert(
        connection,
        rule=INCOMPLETE_RULE,
        subject=INCOMPLETE_SUBJECT,
        severity=alerts.WARNING,
        evidence={
            "problems": sorted({p.split(":")[0] for p in run.reasons}),
            ev.OBSERVED: {"detail": list(run.reasons)},
        },
    )


async def _move_break_state(connection: asyncpg.Connection, run: Run) -> Run:
    found = list(run.found)
    opened = await breaks.record_seen(connection, found, at=run.cut.at)
    resolved = await breaks.resolve_unseen(connection, found, at=run.cut.at)
    for brk in found:
        await alerts.raise_alert(
            connection,
            rule=break_rule(brk.cls),
            subject=brk.subject,
            severity=breaks.ALERT_SEVERITY[brk.priority],
            evidence=brk.evidence,
        )
    for cls, subject in resolved:
        await alerts.resolve_identity(
            connection, break_rule(cls), subject, by="reconciler"
        )
    await alerts.resolve_identity(
        connection, INCOMPLETE_RULE, INCOMPLETE_SUBJECT, by="reconciler"
    )
    for brk in opened:
        logger.info(
            "break opened", cls=brk.cls, priority=brk.priority, subject=brk.subject
        )
    for cls, subject in resolved:
        logger.info("break resolved", cls=cls, subject=subject)
    return replace(run, opened=tuple(opened), resolved=tuple(resolved))


def break_rule(cls: str) -> str:
    """Return the alert rule of a break class."""
    return f"{alerts.BREAK_RULE_PREFIX}{cls}"


async def _insert(
    connection: asyncpg.Connection, run: Run, trigger: str, moves_state: bool
) -> int:
    run_id: int = await connection.fetchval(
        """
        INSERT INTO reconciliation_runs (cut_at, cut_block, cut_block_hash, verdict,
                                         document, document_sha256, scanned_logs,
                                         moved_state, trigger)
        VALUES ($1, $2, $3, $4, $5, sha256($5), $6, $7, $8)
        RETURNING id
        """,
        run.cut.at,
        run.cut.block_number,
        run.cut.block_hash,
        run.verdict,
        run.document,
        run.scanned_logs,
        moves_state,
        trigger,
    )
    return run_id


@dataclass(frozen=True)
class StoredRun:
    id: int
    cut: Cut
    verdict: str
    document: bytes
    scanned_logs: bool
    trigger: str
    finished_at: datetime


async def get(pool: asyncpg.Pool, run_id: int) -> StoredRun | None:
    """Return a stored run, or None."""
    async with pool.acquire() as connection:
        row = await connection.fetchrow(
            "SELECT * FROM reconciliation_runs WHERE id = $1", run_id
        )
    return _stored(row) if row is not None else None


async def latest(pool: asyncpg.Pool) -> StoredRun | None:
    """Return the run with the newest cut, or None."""
    async with pool.acquire() as connection:
        row = await connection.fetchrow(
            "SELECT * FROM reconciliation_runs ORDER BY cut_at DESC, id DESC LIMIT 1"
        )
    return _stored(row) if row is not None else None


def _stored(row: asyncpg.Record) -> StoredRun:
    return StoredRun(
        id=row["id"],
        cut=Cut(
            at=row["cut_at"],
            block_number=row["cut_block"],
            block_hash=row["cut_block_hash"],
        ),
        verdict=row["verdict"],
        document=bytes(row["document"]),
        scanned_logs=row["scanned_logs"],
        trigger=row["trigger"],
        finished_at=row["finished_at"],
    )


async def rerun(
    pool: asyncpg.Pool, chain: ChainClient | None, config: ReconcilerConfig, run_id: int
) -> Run:
    """Recompute a stored run at its own cut, writing nothing.

    Raises LookupError for an unknown run id.
    """
    stored = await get(pool, run_id)
    if stored is None:
        raise LookupError(f"no reconciliation run with id {run_id}")
    return await compute(pool, chain, config, stored.cut, scan_logs=stored.scanned_logs)
