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

This module only reads. It reads ``intents``, ``intent_events``,
``reward_mints``, ``token_transfers``, ``signers``, ``tx_attempts`` and
``tail_checkpoints`` directly because their owners offer no as-of queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime

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
class ChainFacts:
    total_supply_wei: Wei
    balances_wei: dict[ChecksumAddress, Wei]
    minted_logs_wei: Wei | None


@dataclass(frozen=True)
class Snapshot:
    """Everything one reconciliation decides from."""

    cut: Cut
    token_address: ChecksumAddress | None
    intents: tuple[IntentAt, ...]
    mints: tuple[Mint, ...]
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
        return Wei(sum(m.amount_wei for m in self.mints))


async def take(
    pool: asyncpg.Pool,
    chain: ChainClient | None,
    config: ReconcilerConfig,
    cut: Cut,
    *,
    scan_logs: bool = False,
) -> Snapshot:
    """Read the books at ``cut``; chain failures become problems, not errors.

    Raises DatabaseUnavailableError (from the pool) when PostgreSQL is down.
    """
    async with (
        db.translate_errors(),
        pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        book = await _read_database(connection, cut, config.tail_checkpoint)

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
        indexed = sum(m.amount_wei for m in book.mints)
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
    later_mint_ids: frozenset[bytes]
    transfers_minted_wei: Wei
    transfers_burned_wei: Wei
    signers: tuple[SignerAt, ...]
    attempts: tuple[AttemptAt, ...]
    checkpoint_block: int | None
    accepted: dict[tuple[str, str], bytes]


async def _read_database(
    connection: asyncpg.Connection, cut: Cut, checkpoint_name: str | None
) -> _Book:
    block = cut.block_number if cut.block_number is not None else -1
    # TODO: match confirmed intents to their mints in SQL and load only the
    # rest — every row is read into Python, so a million-row book takes tens
    # of seconds where one join takes one.
    address = _checksums()
    found = await _intents_at(connection, cut.at, address)
    mints = await _mints_to(connection, block, address)
    minted_ids = {m.intent_id for m in mints}
    confirmed_unminted = [
        i.id for i in found if i.status == intents.CONFIRMED and i.id not in minted_ids
    ]
    submitted = [i.id for i in found if i.status == intents.SUBMITTED]
    minted, burned = await _supply_to(connection, block)
    return _Book(
        intents=found,
        mints=mints,
        later_mint_ids=await _later_mints(connection, block, confirmed_unminted),
        transfers_minted_wei=minted,
        transfers_burned_wei=burned,
        signers=await _signers_at(connection, cut.at),
        attempts=await _attempts_at(connection, cut.at, submitted),
        checkpoint_block=await _checkpoint(connection, checkpoint_name),
        accepted=await breaks.accepted_as_of(connection, cut.at),
    )


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
) -> tuple[IntentAt, ...]:
    # The status at the cut is the last status event recorded by then; an
    # intent without any history (written around intents.create) falls back
    # to its current status.
    rows = await connection.fetch(
        """
        SELECT i.id, i.partner, i.kind, i.wallet, i.amount_wei, i.reversed_at,
               i.created_at,
               coalesce(e.to_status, i.status) AS status,
               coalesce(e.at, i.updated_at) AS status_since
          FROM intents i
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
) -> tuple[Mint, ...]:
    rows = await connection.fetch(
        "SELECT * FROM reward_mints WHERE block_number <= $1 "
        "ORDER BY block_number, log_index",
        block,
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
