"""The books as of a cut: everything a reconciliation reads, read once.

A cut is a database time and a block number. The database side is read in
one repeatable-read transaction and filtered to the cut: an intent's status
is the last one its history recorded at or before the cut's time, and only
mints and transfers at or below the cut's block count. The chain side
(total supply, signer balances, optionally the RewardMinted logs) is read at
the cut's block. Reading the same cut again therefore yields the same
snapshot as long as nothing at or before the cut changed.

One hazard is inherent: PostgreSQL stamps a row with its transaction's start
time, not its commit time, so a transaction that started before the cut and
committed after it is seen by a re-run but not by the run. Our writers'
transactions last milliseconds; a re-run that differs names such a straddler.

Most of a book is settled: confirmed intents whose one canonical mint
agrees in amount, recipient and minter, never reversed. No rule of matching
can apply to them, so by default they are matched and summed in SQL and only
counted here (:class:`Settled`); every other intent and every mint not of a
settled intent is loaded row by row. Asked for every intent, the snapshot
loads them all and counts nothing apart; both ways give the same run. Asked
for a window of creation times, it also sums the settled intents created in
it per partner and UTC day, which is all a report needs of them.

This module only reads. It reads ``intents``, ``intent_events``,
``reward_mints``, ``token_transfers``, ``signers``, ``tx_attempts`` and
``tail_checkpoints`` directly because their owners offer no as-of queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime

import asyncpg

from haven import chain as chain_client
from haven import db, intents, token
from haven.chain import ChainClient
from haven.errors import ChainError, RpcResponseError
from haven.reconciler import breaks
from haven.reconciler.config import ReconcilerConfig
from haven.types import ZERO_ADDRESS, ChecksumAddress, IntentId, Wei, checksum

# Problems that make a run incomplete; each is a stable word plus detail.
CHAIN_UNREACHABLE = "chain_unreachable"
CHAIN_STATE_UNAVAILABLE = "chain_state_unavailable"
TOKEN_UNSET = "token_address_unset"
TAILER_NOT_STARTED = "tailer_not_started"
TAILER_BEHIND = "tailer_behind"
INDEX_DISAGREES = "index_disagrees_with_chain"


@dataclass(frozen=True)
class Cut:
    """Where a run looks: database time and the block it reads the chain at."""

    at: datetime
    block_number: int | None
    block_hash: str | None = None


@dataclass(frozen=True)
class IntentAt:
    """An intent as it stood at the cut."""

    id: IntentId
    partner: str
    kind: str
    wallet: ChecksumAddress
    amount_wei: Wei
    status: str
    status_since: datetime
    reversed_at: datetime | None
    created_at: datetime

    @property
    def is_outstanding(self) -> bool:
        return self.status in intents.OUTSTANDING


@dataclass(frozen=True)
class Mint:
    """A RewardMinted event on the canonical chain."""

    intent_id: IntentId
    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes
    to_address: ChecksumAddress
    amount_wei: Wei
    minter: ChecksumAddress


@dataclass(frozen=True)
class SignerAt:
    address: ChecksumAddress
    is_active: bool


@dataclass(frozen=True)
class AttemptAt:
    """A signed transaction of an intent, as recorded by the cut's time."""

    intent_id: IntentId
    signer: str
    nonce: int
    tx_hash: bytes
    status: str
    max_fee_wei: Wei
    max_priority_fee_wei: Wei
    created_at: datetime
    sent_block: int | None


@dataclass(frozen=True)
class SettledDay:
    """The settled intents of one partner created on one UTC day."""

    partner: str
    day: date
    count: int
    amount_wei: Wei


@dataclass(frozen=True)
class Settled:
    """Confirmed intents matched in SQL: counted and summed, not loaded.

    Each has exactly one mint at or below the cut, by one of our signers, to
    its wallet and of its amount, so ``amount_wei`` is also what they minted;
    none is reversed by the cut. ``days`` breaks down those created in the
    window the snapshot was asked for (none when it was asked for none).
    """

    count: int
    amount_wei: Wei
    days: tuple[SettledDay, ...] = ()


NOTHING_SETTLED = Settled(count=0, amount_wei=Wei(0))

# A window of creation times, [from, to); None is open on that side.
Window = tuple[datetime | None, datetime | None]


@dataclass(frozen=True)
class ChainFacts:
    total_supply_wei: Wei
    balances_wei: dict[ChecksumAddress, Wei]
    minted_logs_wei: Wei | None


@dataclass(frozen=True)
class Snapshot:
    """Everything one reconciliation decides from."""

    cut: Cut
    token_address: ChecksumAddress | None
    # The intents and mints loaded row by row: all of them, or all but the
    # settled ones and their mints, which ``settled`` counts instead.
    intents: tuple[IntentAt, ...]
    mints: tuple[Mint, ...]
    settled: Settled
    later_mint_ids: frozenset[bytes]
    transfers_minted_wei: Wei
    transfers_burned_wei: Wei
    signers: tuple[SignerAt, ...]
    attempts: tuple[AttemptAt, ...]
    checkpoint_block: int | None
    accepted: dict[tuple[str, str], bytes]
    chain: ChainFacts | None
    problems: tuple[str, ...]

    @property
    def is_complete(self) -> bool:
        return not self.problems

    @property
    def minted_indexed_wei(self) -> Wei:
        loaded = sum(m.amount_wei for m in self.mints)
        return Wei(loaded + self.settled.amount_wei)


async def take(
    pool: asyncpg.Pool,
    chain: ChainClient | None,
    config: ReconcilerConfig,
    cut: Cut,
    *,
    scan_logs: bool = False,
    every_intent: bool = False,
    window: Window | None = None,
) -> Snapshot:
    """Read the books at ``cut``; chain failures become problems, not errors.

    With ``every_intent`` no intent is left out as settled: for callers
    that list intents row by row. With ``window``, the settled intents
    created in it are also summed per partner and day (``settled.days``).

    Raises DatabaseUnavailableError (from the pool) when PostgreSQL is down.
    """
    async with (
        db.translate_errors(),
        pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        book = await _read_database(
            connection,
            cut,
            config.tail_checkpoint,
            every_intent=every_intent,
            window=window,
        )

    problems = _index_problems(config, cut, book.checkpoint_block)
    if chain is None:
        problems.append(f"{CHAIN_UNREACHABLE}: no chain client")
    facts = None
    if not problems:
        assert chain is not None and cut.block_number is not None
        try:
            facts = await _read_chain(
                chain, config, cut.block_number, book.signers, scan_logs=scan_logs
            )
        except RpcResponseError as exc:
            problems.append(f"{CHAIN_STATE_UNAVAILABLE}: {exc.message}")
        except ChainError as exc:
            problems.append(f"{CHAIN_UNREACHABLE}: {type(exc).__name__}")
    if facts is not None and facts.minted_logs_wei is not None:
        indexed = sum(m.amount_wei for m in book.mints) + book.settled.amount_wei
        if facts.minted_logs_wei != indexed:
            problems.append(
                f"{INDEX_DISAGREES}: RewardMinted logs total {facts.minted_logs_wei} "
                f"wei, indexed {indexed} wei"
            )
    return Snapshot(
        cut=cut,
        token_address=config.token_address,
        chain=facts,
        problems=tuple(problems),
        **{f.name: getattr(book, f.name) for f in fields(book)},
    )


def _index_problems(
    config: ReconcilerConfig, cut: Cut, checkpoint: int | None
) -> list[str]:
    if cut.block_number is None:
        return [f"{CHAIN_UNREACHABLE}: no block for the cut"]
    if config.token_address is None:
        return [f"{TOKEN_UNSET}: HAVEN_TOKEN_ADDRESS is not set"]
    if checkpoint is None:
        return [f"{TAILER_NOT_STARTED}: no tail checkpoint"]
    if checkpoint < cut.block_number:
        return [
            f"{TAILER_BEHIND}: indexed to block {checkpoint}, "
            f"cut at block {cut.block_number}"
        ]
    return []


@dataclass(frozen=True)
class _Book:
    intents: tuple[IntentAt, ...]
    mints: tuple[Mint, ...]
    settled: Settled
    later_mint_ids: frozenset[bytes]
    transfers_minted_wei: Wei
    transfers_burned_wei: Wei
    signers: tuple[SignerAt, ...]
    attempts: tuple[AttemptAt, ...]
    checkpoint_block: int | None
    accepted: dict[tuple[str, str], bytes]


async def _read_database(
    connection: asyncpg.Connection,
    cut: Cut,
    checkpoint_name: str | None,
    *,
    every_intent: bool,
    window: Window | None,
) -> _Book:
    block = cut.block_number if cut.block_number is not None else -1
    address = _checksums()
    signers = await _signers_at(connection, cut.at)
    settled, rest = NOTHING_SETTLED, None
    if not every_intent:
        settled, rest = await _settle(connection, cut.at, block, signers, window)
    found = await _intents_at(connection, cut.at, address, rest)
    mints = await _mints_to(connection, block, address, rest)
    minted_ids = {m.intent_id for m in mints}
    confirmed_unminted = [
        i.id for i in found if i.status == intents.CONFIRMED and i.id not in minted_ids
    ]
    submitted = [i.id for i in found if i.status == intents.SUBMITTED]
    minted, burned = await _supply_to(connection, block)
    return _Book(
        intents=found,
        mints=mints,
        settled=settled,
        later_mint_ids=await _later_mints(connection, block, confirmed_unminted),
        transfers_minted_wei=minted,
        transfers_burned_wei=burned,
        signers=signers,
        attempts=await _attempts_at(connection, cut.at, submitted),
        checkpoint_block=await _checkpoint(connection, checkpoint_name),
        accepted=await breaks.accepted_as_of(connection, cut.at),
    )


# Intents whose row may not tell their status at the cut, or that were
# minted more than once: the settled ones are sought among the others.
#
# Every status change writes its event in the same transaction as the row
# (haven.intents), so for an intent with no event later than the cut the
# last event by the cut is the last of all, and its status the row's; the
# others are left to _intents_at, which reads their history. A settled
# intent has one mint at all, so counting the mints of each intent over
# the intent index alone (not per block) is enough to rule out the rest.
_UNSURE = """
SELECT intent_id FROM intent_events WHERE at > $1
UNION
SELECT intent_id FROM reward_mints GROUP BY intent_id HAVING count(*) > 1
"""

# One row per intent at the cut and per intent id minted to without one,
# flagged settled when no rule of matching can apply to it; grouped into
# one row of the settled and one row per id of the rest. The settled rows
# created in the window ($7 true, [$8, $9)) are grouped by partner and UTC
# day instead. Addresses are equal when their lower-case forms are, which
# for hex addresses is their checksums being equal; comparing them exactly
# first spares most rows the lower-casing.
_SETTLE = """
SELECT CASE WHEN settled THEN NULL ELSE id END AS id,
       CASE WHEN settled AND shown THEN partner END AS partner,
       CASE WHEN settled AND shown
            THEN (created_at AT TIME ZONE 'UTC')::date END AS day,
       count(*) AS count, coalesce(sum(amount_wei), 0) AS amount_wei
  FROM (SELECT coalesce(i.id, m.intent_id) AS id, i.amount_wei, i.partner,
               i.created_at,
               i.status = $2 AND u.id IS NULL AND m.by_us
               AND (i.reversed_at IS NULL OR i.reversed_at > $1)
               AND m.amount_wei = i.amount_wei
               AND (m.to_address = i.wallet
                    OR lower(m.to_address) = lower(i.wallet)) AS settled,
               $7::boolean
               AND i.created_at >= coalesce($8::timestamptz, '-infinity')
               AND i.created_at < coalesce($9::timestamptz, 'infinity') AS shown
          FROM (SELECT id, amount_wei, wallet, status, reversed_at, partner,
                       created_at
                  FROM intents WHERE created_at <= $1) i
          LEFT JOIN unnest($6::bytea[]) AS u (id) ON u.id = i.id
          FULL JOIN (SELECT intent_id, amount_wei, to_address,
                            minter = ANY($4::text[])
                            OR lower(minter) = ANY($5::text[]) AS by_us
                       FROM reward_mints WHERE block_number <= $3) m
                 ON m.intent_id = i.id) book
 GROUP BY 1, 2, 3
"""


async def _settle(
    connection: asyncpg.Connection,
    at: datetime,
    block: int,
    signers: Sequence[SignerAt],
    window: Window | None,
) -> tuple[Settled, list[bytes]]:
    """Count the settled intents in SQL; return them and the ids of the rest."""
    unsure = await connection.fetch(_UNSURE, at)
    from_, to = window or (None, None)
    rows = await connection.fetch(
        _SETTLE,
        at,
        intents.CONFIRMED,
        block,
        [s.address for s in signers],
        [s.address.lower() for s in signers],
        [r["intent_id"] for r in unsure],
        window is not None,
        from_,
        to,
    )
    count = amount = 0
    days = []
    rest = []
    for row in rows:
        if row["id"] is not None:
            rest.append(bytes(row["id"]))
            continue
        some = Wei(int(row["amount_wei"]))
        count += row["count"]
        amount += some
        if row["partner"] is not None:
            days.append(SettledDay(row["partner"], row["day"], row["count"], some))
    days.sort(key=lambda d: (d.partner, d.day))
    return Settled(count, Wei(amount), tuple(days)), rest


def _checksums() -> Callable[[str], ChecksumAddress]:
    """Return :func:`checksum` remembering every address it saw, for one read.

    A book repeats a few wallets over millions of rows; each checksum is a
    keccak.
    """
    seen: dict[str, ChecksumAddress] = {}

    def address(value: str) -> ChecksumAddress:
        found = seen.get(value)
        if found is None:
            found = seen[value] = checksum(value)
        return found

    return address


async def _intents_at(
    connection: asyncpg.Connection,
    at: datetime,
    address: Callable[[str], ChecksumAddress],
    only: Sequence[bytes] | None,
) -> tuple[IntentAt, ...]:
    # The status at the cut is the last status event recorded by then; an
    # intent without any history (written around intents.create) falls back
    # to its current status. ``only`` (None for every one) names the intents
    # to load; they are joined, not tested with ANY, which a generic plan
    # would run as a scan of the list for every row.
    if only is None:
        source, named = "intents i", []
    elif not only:
        return ()
    else:
        source = "unnest($3::bytea[]) AS o (id) JOIN intents i ON i.id = o.id"
        named = [list(only)]
    rows = await connection.fetch(
        f"""
        SELECT i.id, i.partner, i.kind, i.wallet, i.amount_wei, i.reversed_at,
               i.created_at,
               coalesce(e.to_status, i.status) AS status,
               coalesce(e.at, i.updated_at) AS status_since
          FROM {source}
          LEFT JOIN LATERAL (
                SELECT to_status, at FROM intent_events
                 WHERE intent_id = i.id AND at <= $1
                   AND to_status = ANY($2::text[])
                 ORDER BY id DESC LIMIT 1) e ON true
         WHERE i.created_at <= $1
         ORDER BY i.id
        """,
        at,
        list(intents.STATUSES),
        *named,
    )
    return tuple(
        IntentAt(
            id=IntentId(bytes(r["id"])),
            partner=r["partner"],
            kind=r["kind"],
            wallet=address(r["wallet"]),
            amount_wei=Wei(int(r["amount_wei"])),
            status=r["status"],
            status_since=r["status_since"],
            reversed_at=_if_by(r["reversed_at"], at),
            created_at=r["created_at"],
        )
        for r in rows
    )


def _if_by(value: datetime | None, at: datetime) -> datetime | None:
    return value if value is not None and value <= at else None


async def _mints_to(
    connection: asyncpg.Connection,
    block: int,
    address: Callable[[str], ChecksumAddress],
    of_intents: Sequence[bytes] | None,
) -> tuple[Mint, ...]:
    # As in _intents_at, the intents named are joined.
    if of_intents is None:
        source, named = "reward_mints m", []
    elif not of_intents:
        return ()
    else:
        source = (
            "unnest($2::bytea[]) AS o (id) JOIN reward_mints m ON m.intent_id = o.id"
        )
        named = [list(of_intents)]
    rows = await connection.fetch(
        f"SELECT m.* FROM {source} WHERE m.block_number <= $1 "
        "ORDER BY m.block_number, m.log_index",
        block,
        *named,
    )
    return tuple(
        Mint(
            intent_id=IntentId(bytes(r["intent_id"])),
            block_number=r["block_number"],
            block_hash=bytes(r["block_hash"]),
            log_index=r["log_index"],
            tx_hash=bytes(r["tx_hash"]),
            to_address=address(r["to_address"]),
            amount_wei=Wei(int(r["amount_wei"])),
            minter=address(r["minter"]),
        )
        for r in rows
    )


async def _later_mints(
    connection: asyncpg.Connection, block: int, intent_ids: Sequence[bytes]
) -> frozenset[bytes]:
    # A confirmed intent whose mint sits just above the cut is not reorged
    # out: the tailer counts confirmations from its own head, which may be
    # one block off ours.
    if not intent_ids:
        return frozenset()
    rows = await connection.fetch(
        "SELECT DISTINCT intent_id FROM reward_mints "
        "WHERE block_number > $1 AND intent_id = ANY($2::bytea[])",
        block,
        list(intent_ids),
    )
    return frozenset(bytes(r["intent_id"]) for r in rows)


async def _supply_to(connection: asyncpg.Connection, block: int) -> tuple[Wei, Wei]:
    row = await connection.fetchrow(
        """
        SELECT coalesce(sum(amount_wei) FILTER (WHERE from_address = $2), 0) AS minted,
               coalesce(sum(amount_wei) FILTER (WHERE to_address = $2), 0) AS burned
          FROM token_transfers WHERE block_number <= $1
        """,
        block,
        ZERO_ADDRESS,
    )
    return Wei(int(row["minted"])), Wei(int(row["burned"]))


async def _signers_at(
    connection: asyncpg.Connection, at: datetime
) -> tuple[SignerAt, ...]:
    # Every signer ever created is "ours" for telling minters apart; only
    # those live at the cut are checked for gas.
    rows = await connection.fetch(
        """
        SELECT address,
               created_at <= $1 AND (revoked_at IS NULL OR revoked_at > $1)
                   AND (status <> 'revoked' OR revoked_at IS NOT NULL) AS active
          FROM signers ORDER BY address
        """,
        at,
    )
    return tuple(SignerAt(checksum(r["address"]), bool(r["active"])) for r in rows)


async def _attempts_at(
    connection: asyncpg.Connection, at: datetime, intent_ids: Sequence[bytes]
) -> tuple[AttemptAt, ...]:
    if not intent_ids:
        return ()
    rows = await connection.fetch(
        """
        SELECT intent_id, signer, nonce, tx_hash, status, max_fee_wei,
               max_priority_fee_wei, created_at, sent_block
          FROM tx_attempts
         WHERE created_at <= $1 AND intent_id = ANY($2::bytea[])
         ORDER BY intent_id, id
        """,
        at,
        list(intent_ids),
    )
    return tuple(
        AttemptAt(
            intent_id=IntentId(bytes(r["intent_id"])),
            signer=r["signer"],
            nonce=r["nonce"],
            tx_hash=bytes(r["tx_hash"]),
            status=r["status"],
            max_fee_wei=Wei(int(r["max_fee_wei"])),
            max_priority_fee_wei=Wei(int(r["max_priority_fee_wei"])),
            created_at=r["created_at"],
            sent_block=r["sent_block"],
        )
        for r in rows
    )


async def checkpoint_block(pool: asyncpg.Pool, name: str | None) -> int | None:
    """Return the tailer's checkpoint block (the lowest one when ``name`` is None)."""
    async with db.translate_errors(), pool.acquire() as connection:
        return await _checkpoint(connection, name)


async def _checkpoint(connection: asyncpg.Connection, name: str | None) -> int | None:
    value: int | None = await connection.fetchval(
        "SELECT min(block_number) FROM tail_checkpoints "
        "WHERE $1::text IS NULL OR name = $1",
        name,
    )
    return value


async def confirmed_block(
    pool: asyncpg.Pool, name: str | None
) -> tuple[int, str | None] | None:
    """Return the newest block the tailer counted as confirmed, and its hash.

    The hash is None once the header has been pruned; the whole answer is
    None before the tailer's first batch. Reads only the index: this is the
    cut of last resort when the chain does not answer.
    """
    async with db.translate_errors(), pool.acquire() as connection:
        row = await connection.fetchrow(
            """
            SELECT t.through, b.hash
              FROM (SELECT min(coalesce(confirmed_through, block_number)) AS through
                      FROM tail_checkpoints
                     WHERE $1::text IS NULL OR name = $1) t
              LEFT JOIN chain_blocks b ON b.number = t.through
            """,
            name,
        )
    if row is None or row["through"] is None:
        return None
    block_hash = "0x" + bytes(row["hash"]).hex() if row["hash"] is not None else None
    return int(row["through"]), block_hash


async def _read_chain(
    chain: ChainClient,
    config: ReconcilerConfig,
    block: int,
    signers: tuple[SignerAt, ...],
    *,
    scan_logs: bool,
) -> ChainFacts:
    assert config.token_address is not None
    # TODO: fall back to indexed supply and balances when the node has pruned
    # the state of an old cut — until then --as-of further back than a full
    # node's state window (about 128 blocks) needs an archive node, or the
    # report is incomplete.
    raw = await chain.eth_call(config.token_address, token.total_supply_data(), block)
    # Before the token's deployment block the call answers empty data.
    supply = Wei(token.decode_uint(raw)) if raw else Wei(0)
    balances = {}
    for signer in signers:
        if signer.is_active:
            balances[signer.address] = await chain.get_balance(
                signer.address, chain_client.to_hex(block)
            )
    minted = await scan_minted(chain, config, block) if scan_logs else None
    return ChainFacts(
        total_supply_wei=supply, balances_wei=balances, minted_logs_wei=minted
    )


async def scan_minted(chain: ChainClient, config: ReconcilerConfig, block: int) -> Wei:
    """Sum RewardMinted amounts straight from the node, start block to ``block``.

    Ranges the node refuses as too large are halved and retried.
    """
    assert config.token_address is not None
    total = 0
    start = config.start_block
    chunk = config.log_scan_chunk_blocks
    while start <= block:
        end = min(start + chunk - 1, block)
        try:
            logs = await chain.get_logs(
                address=config.token_address,
                from_block=start,
                to_block=end,
                topics=[token.REWARD_MINTED_TOPIC],
            )
        except RpcResponseError as exc:
            if exc.kind != chain_client.RANGE_TOO_LARGE or chunk == 1:
                raise
            chunk = max(chunk // 2, 1)
            continue
        for log in logs:
            event = token.decode_log(log, config.token_address)
            if isinstance(event, token.RewardMinted):
                total += event.amount_wei
        start = end + 1
    return Wei(total)
