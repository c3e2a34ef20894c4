"""The chain tailer: every HNV event of the canonical chain, exactly once.

One pipeline runs from the deployment block to the head; backfill and live
following are the same loop with different batch sizes. Rounds follow
one another at the poll interval; a ``newHeads`` socket, when configured,
only starts the next round early. Each round:

1. **choose** the endpoint to believe (the highest head that still moves);
2. **check** that the checkpoint block is still the node's block at that
   height, and if not find the fork point by walking back the stored
   headers, roll back above it and re-index, in one transaction;
3. **read** the next batch: logs in an adaptive range, and the headers that
   vouch for them (every header within the reorg window, plus each block
   with logs and the batch's last block below it);
4. **verify** parent links, each log's block hash against its header, and the
   logs bloom of every header against "no logs" answers;
5. **write** the headers, the events, the intents they settle and the
   checkpoint in one transaction;
6. once caught up, **settle** intents submitted after their mint was
   indexed, and fail those whose own transaction reverted (receipts).

The invariant: the stored events are exactly the canonical events of the
start block up to the checkpoint, so a restart at any point resumes with no
gap and no duplicate. A reorg is found from parent hashes alone, never from
a ``removed`` flag, and may keep the head at the same height.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
from loguru import logger

from haven import db, metrics
from haven.chain import ChainClient
from haven.daemon import (
    alerts_outbox,
    blocks,
    checkpoints,
    confirmations,
    logranges,
    newheads,
    receipts,
    transfers,
)
from haven.daemon.blocks import Header
from haven.daemon.checkpoints import Checkpoint
from haven.daemon.endpoints import Endpoint, Endpoints
from haven.daemon.transfers import Event
from haven.errors import (
    ChainError,
    DatabaseUnavailableError,
    RpcResponseError,
    RpcUnavailableError,
)
from haven.settings import Settings
from haven.token import REWARD_MINTED_TOPIC, TRANSFER_TOPIC, RewardMinted, decode_log

TOPICS = [[TRANSFER_TOPIC, REWARD_MINTED_TOPIC]]
_TOPIC_BYTES = tuple(
    bytes.fromhex(t[2:]) for t in (TRANSFER_TOPIC, REWARD_MINTED_TOPIC)
)
BEYOND_FINALITY_RULE = "reorg_beyond_finality"


class ChainMovedError(ChainError):
    """The node's chain changed, or contradicted itself, while a batch was read."""


class CheckpointMovedError(ChainError):
    """Another writer moved the checkpoint while a batch was read."""


@dataclass(frozen=True)
class TailerOptions:
    """Knobs of the tailer that operators never need to turn; tests tighten them.

    Timeouts, the stall limit and the widest log range are settings.
    """

    checkpoint_name: str = "hnv"
    header_concurrency: int = 8
    max_backoff_s: float = 30.0


@dataclass(frozen=True)
class Batch:
    """Verified headers and events of blocks ``first_block`` to ``last.number``."""

    first_block: int
    last: Header
    headers: tuple[Header, ...]
    events: tuple[Event, ...]


class Tailer:
    """Index HNV events and settle intents from them; a daemon component."""

    name = "tailer"

    def __init__(
        self,
        settings: Settings,
        pool: db.Pool,
        chain: ChainClient,
        *,
        options: TailerOptions | None = None,
    ) -> None:
        self._options = options or TailerOptions()
        self._pool = pool
        self._token = settings.require_token()
        self._token_bytes = bytes.fromhex(self._token[2:])
        self._start = settings.start_block
        self._confirmations = settings.confirmations
        self._finality = settings.finality_depth
        # Headers are held, every one, for twice the finality depth under the
        # head: a fork point inside that window is found exactly; one below
        # it is a catastrophe that re-indexes from the start.
        self._window = 2 * settings.finality_depth
        self._poll_s = settings.poll_interval_ms / 1000
        self._rpc_timeout_s = settings.rpc_timeout_s
        # Set by new-head announcements, when a socket is configured: they
        # start a round early, and the round polls as usual.
        self._ws_url = settings.ws_url
        self._wake = asyncio.Event()
        # ``chain`` is shared with the submitter and fails over on transport
        # errors only; the tailer must know which node said what, so it keeps
        # a client per configured endpoint instead and leaves ``chain`` alone.
        self._endpoints = Endpoints(
            settings.rpc_url,
            chain_id=settings.chain_id,
            timeout_s=settings.rpc_timeout_s,
            stall_s=settings.head_stall_s,
            max_range_blocks=settings.log_range_max_blocks,
        )

    # --- the loop ---------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Index until ``stopping`` is set; never raises for a passing fault."""
        watcher = self._watch_heads(stopping)
        failures = 0
        try:
            while not stopping.is_set():
                self._wake.clear()
                try:
                    more = await self.step()
                    failures = 0
                except Exception as exc:  # the task's top: log, back off, go on
                    failures += 1
                    more = False
                    self._log_failure(exc, self._delay_s(failures))
                if more:
                    continue
                await self._pause(stopping, failures)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await self._endpoints.close()

    def _watch_heads(self, stopping: asyncio.Event) -> asyncio.Task[None] | None:
        if self._ws_url is None:
            return None
        watch = newheads.HeadWatch(
            self._ws_url,
            self._wake,
            timeout_s=self._rpc_timeout_s,
            max_backoff_s=self._options.max_backoff_s,
        )
        return asyncio.create_task(watch.run(stopping), name="tailer-newheads")

    async def _pause(self, stopping: asyncio.Event, failures: int) -> None:
        """Wait out the poll interval (or backoff), or less when woken or stopped.

        A new-head announcement cuts the poll interval short, never a
        backoff: a failing node is not asked again because a block came.
        """
        waits = [asyncio.ensure_future(stopping.wait())]
        if failures == 0:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(
                waits,
                timeout=self._delay_s(failures),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _delay_s(self, failures: int) -> float:
        if failures == 0:
            return self._poll_s
        return min(self._options.max_backoff_s, self._poll_s * (1 << min(failures, 10)))

    def _log_failure(self, exc: Exception, delay_s: float) -> None:
        if isinstance(exc, ChainMovedError | CheckpointMovedError):
            logger.info("batch abandoned, reading it again", reason=str(exc))
        elif isinstance(
            exc, RpcUnavailableError | RpcResponseError | DatabaseUnavailableError
        ):
            logger.warning(
                "tailer round failed, retrying",
                error=self._endpoints.redact(str(exc)),
                retry_in_s=delay_s,
            )
        else:
            logger.opt(exception=exc).error(
                "tailer round failed; check the node and the database",
                retry_in_s=delay_s,
            )

    async def step(self) -> bool:
        """Index one batch or repair one reorg; return True when more is waiting.

        Safe to cancel at any point: each write is one transaction.
        """
        endpoint = await self._endpoints.refresh()
        head = endpoint.head
        assert head is not None
        checkpoint = await self._load_checkpoint()

        if checkpoint is not None:
            fork = await self._fork_point(endpoint, checkpoint, head)
            if fork is not None:
                await self._repair(endpoint, checkpoint, fork, head)
                return True

        indexed = checkpoint.block_number if checkpoint else self._start - 1
        if indexed < head:
            indexed = await self._advance(endpoint, checkpoint, head)
            if indexed < head:
                return True

        if indexed >= self._start:
            await self._settle_stragglers(indexed)
            await receipts.check(
                self._pool,
                endpoint.client,
                tip=indexed,
                confirmations=self._confirmations,
                concurrency=self._options.header_concurrency,
            )
        return False

    async def _advance(
        self, endpoint: Endpoint, checkpoint: Checkpoint | None, head: int
    ) -> int:
        """Index the next batch after the checkpoint; return its last block."""
        first = checkpoint.block_number + 1 if checkpoint else self._start
        anchor = (
            (checkpoint.block_number, checkpoint.block_hash) if checkpoint else None
        )
        # A batch lies wholly below the header window or wholly inside it, so
        # a "no logs" answer about a recent block always meets its bloom.
        # TODO: check blooms below the window too (a header per block) — a
        # node whose log index lags its head by more than the window can
        # still hide events of older blocks behind an empty answer.
        window_start = head - self._window + 1
        last_max = head if first >= window_start else window_start - 1
        batch = await self._read(endpoint, first, last_max, head, anchor)
        await self._write(checkpoint, [batch], fork=None)
        return batch.last.number

    async def _settle_stragglers(self, tip: int) -> None:
        through = confirmations.confirmed_through(tip, self._confirmations)
        async with db.transaction(self._pool) as connection:
            # The checkpoint lock keeps a concurrent rollback out.
            current = await checkpoints.lock(connection, self._options.checkpoint_name)
            if current is None or current.block_number != tip:
                return
            await confirmations.settle_stragglers(connection, confirmed_through=through)

    # --- reorgs -----------------------------------------------------------

    async def _fork_point(
        self, endpoint: Endpoint, checkpoint: Checkpoint, head: int
    ) -> int | None:
        """Return the fork point if the checkpoint block is no longer canonical."""
        probe = min(checkpoint.block_number, head)
        async with self._connection() as connection:
            stored = await blocks.get(connection, probe)
        if stored is None:
            return None
        node = await self._header(endpoint, probe)
        if node is None or node.hash == stored.hash:
            # None: the node has not got that far; wait for it, judge nothing.
            return None

        async with self._connection() as connection:
            older = await blocks.below(connection, probe)
        step = self._options.header_concurrency
        for offset in range(0, len(older), step):
            chunk = older[offset : offset + step]
            found = await blocks.fetch(endpoint.client, (h.number for h in chunk))
            for header in chunk:
                theirs = found[header.number]
                if theirs is not None and theirs.hash == header.hash:
                    return header.number
        return self._start - 1

    async def _repair(
        self, endpoint: Endpoint, checkpoint: Checkpoint, fork: int, head: int
    ) -> None:
        depth = checkpoint.block_number - fork
        logger.warning(
            "chain reorganised, rolling back and re-indexing",
            fork_block=fork,
            depth=depth,
            block_number=checkpoint.block_number,
        )
        batches: list[Batch] = []
        # Past a few windows a fork is a catastrophe, not a reorg: roll back
        # alone and let the normal batches re-index, rather than hold
        # thousands of blocks in memory for one transaction.
        if fork >= self._start and depth <= 2 * self._window:
            async with self._connection() as connection:
                base = await blocks.get(connection, fork)
            anchor = (base.number, base.hash) if base else None
            target = min(head, checkpoint.block_number)
            first = fork + 1
            while first <= target:
                batch = await self._read(
                    endpoint, first, target, head, anchor, contiguous=True
                )
                batches.append(batch)
                first = batch.last.number + 1
                anchor = (batch.last.number, batch.last.hash)
        await self._write(checkpoint, batches, fork=fork)
        metrics.REORGS.inc()
        metrics.REORG_DEPTH.observe(depth)

    # --- reading ----------------------------------------------------------

    async def _read(
        self,
        endpoint: Endpoint,
        first: int,
        last_max: int,
        head: int,
        anchor: tuple[int, bytes] | None,
        *,
        contiguous: bool = False,
    ) -> Batch:
        """Read and verify the batch from ``first``; ChainMovedError on any doubt."""
        last, raw = await logranges.fetch(
            endpoint.client,
            endpoint.span,
            address=self._token,
            topics=TOPICS,
            first_block=first,
            last_block=last_max,
        )
        events = self._decode(raw, first, last)

        window_from = first if contiguous else max(first, head - self._window + 1)
        wanted = {last, *range(window_from, last + 1)}
        wanted.update(e.position.block_number for e in events)
        headers = await self._headers(endpoint, wanted)

        _verify_links(headers, anchor, first)
        _verify_events(events, headers)
        events = await self._recover_omitted(endpoint, headers, events)
        return Batch(
            first_block=first,
            last=headers[last],
            headers=tuple(headers[n] for n in sorted(headers)),
            events=tuple(events),
        )

    def _decode(self, raw: list[dict[str, Any]], first: int, last: int) -> list[Event]:
        events: dict[tuple[bytes, int], Event] = {}
        for log in raw:
            try:
                event = decode_log(log, self._token)
            except (KeyError, ValueError) as exc:
                raise ChainMovedError(f"node answered a malformed log: {exc}") from exc
            if event is None:
                continue
            number = event.position.block_number
            if not first <= number <= last:
                raise ChainMovedError(
                    f"node answered a log of block {number} for blocks {first}-{last}"
                )
            key = (event.position.block_hash, event.position.log_index)
            events[key] = event
        return sorted(
            events.values(),
            key=lambda e: (e.position.block_number, e.position.log_index),
        )

    async def _header(self, endpoint: Endpoint, number: int) -> Header | None:
        found = await blocks.fetch(endpoint.client, [number])
        return found[number]

    async def _headers(
        self, endpoint: Endpoint, numbers: Iterable[int]
    ) -> dict[int, Header]:
        found = await blocks.fetch(
            endpoint.client, numbers, concurrency=self._options.header_concurrency
        )
        missing = sorted(n for n, header in found.items() if header is None)
        if missing:
            raise ChainMovedError(f"node has no block {missing[0]} under its own head")
        return {n: header for n, header in found.items() if header is not None}

    async def _recover_omitted(
        self, endpoint: Endpoint, headers: dict[int, Header], events: list[Event]
    ) -> list[Event]:
        # A node whose log index lags its blocks answers "no logs" for blocks
        # it has. The bloom of a header held says whether that can be true;
        # a block hash query reads the block itself.
        with_logs = {e.position.block_number for e in events}
        doubtful = [
            header
            for number, header in headers.items()
            if number not in with_logs
            and header.may_contain(self._token_bytes, _TOPIC_BYTES)
        ]
        found: list[Event] = []
        for header in doubtful:
            raw = await endpoint.client.get_logs_by_block_hash(
                address=self._token, block_hash=header.hash_hex, topics=TOPICS
            )
            recovered = self._decode(raw, header.number, header.number)
            _verify_events(recovered, headers)
            if recovered:
                logger.warning(
                    "node left logs out of a range answer, took them by block hash",
                    endpoint=endpoint.label,
                    block_number=header.number,
                )
            found.extend(recovered)
        if not found:
            return events
        return sorted(
            [*events, *found],
            key=lambda e: (e.position.block_number, e.position.log_index),
        )

    # --- writing ----------------------------------------------------------

    async def _write(
        self,
        expected: Checkpoint | None,
        batches: list[Batch],
        *,
        fork: int | None,
    ) -> None:
        """Roll back above ``fork`` if given and store ``batches``: one transaction."""
        headers = [h for batch in batches for h in batch.headers]
        events = [e for batch in batches for e in batch.events]
        async with db.transaction(self._pool) as connection:
            current = await checkpoints.lock(connection, self._options.checkpoint_name)
            if current != expected:
                raise CheckpointMovedError("the checkpoint moved under this batch")
            marker = current.confirmed_through if current else self._start - 1
            tip = batches[-1].last if batches else None

            if fork is not None and current is not None:
                marker = min(marker, fork)
                await self._roll_back(connection, current, fork)
                if tip is None:
                    tip = await blocks.get(connection, fork)
            if tip is None:
                await checkpoints.clear(connection, self._options.checkpoint_name)
                return

            await blocks.insert(connection, headers)
            await transfers.insert(connection, events)
            await confirmations.record_mints(
                connection, [e for e in events if isinstance(e, RewardMinted)]
            )
            through = confirmations.confirmed_through(tip.number, self._confirmations)
            await confirmations.promote(connection, after=marker, through=through)
            await checkpoints.save(
                connection,
                Checkpoint(
                    name=self._options.checkpoint_name,
                    block_number=tip.number,
                    block_hash=tip.hash,
                    confirmed_through=max(marker, through),
                ),
            )
            await blocks.prune_below(connection, tip.number - self._window + 1)
        logger.debug(
            "batch indexed",
            first_block=batches[0].first_block if batches else None,
            block_number=tip.number,
            events=len(events),
        )

    async def _roll_back(
        self, connection: asyncpg.Connection, current: Checkpoint, fork: int
    ) -> None:
        removed = await transfers.delete_above(connection, fork)
        await blocks.delete_above(connection, fork)
        await confirmations.unwind(
            connection,
            removed,
            fork_block=fork,
            old_tip=current.block_number,
            confirmations=self._confirmations,
        )
        await receipts.unwind(
            connection,
            fork_block=fork,
            old_tip=current.block_number,
            confirmations=self._confirmations,
        )
        depth = current.block_number - fork
        if depth >= self._finality:
            await _alert_beyond_finality(connection, current, fork, self._finality)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with db.translate_errors(), self._pool.acquire() as connection:
            yield connection

    async def _load_checkpoint(self) -> Checkpoint | None:
        async with self._connection() as connection:
            return await checkpoints.load(connection, self._options.checkpoint_name)


def _verify_links(
    headers: dict[int, Header], anchor: tuple[int, bytes] | None, first: int
) -> None:
    """Check parent hashes: of ``first`` against the anchor, then pairwise."""
    if anchor is not None and first in headers:
        number, block_hash = anchor
        if number == first - 1 and headers[first].parent_hash != block_hash:
            raise ChainMovedError(f"block {first} no longer follows block {number}")
    for number, header in headers.items():
        previous = headers.get(number - 1)
        if previous is not None and header.parent_hash != previous.hash:
            raise ChainMovedError(f"block {number} does not follow block {number - 1}")


def _verify_events(events: Iterable[Event], headers: dict[int, Header]) -> None:
    for event in events:
        header = headers.get(event.position.block_number)
        if header is None or header.hash != event.position.block_hash:
            raise ChainMovedError(
                f"log of block {event.position.block_number} names another block hash"
            )


async def _alert_beyond_finality(
    connection: asyncpg.Connection, current: Checkpoint, fork: int, finality: int
) -> None:
    evidence = {
        "fork_block": fork,
        "old_tip": current.block_number,
        "old_tip_hash": "0x" + current.block_hash.hex(),
        "reorg_depth": current.block_number - fork,
        "finality_depth": finality,
    }
    await alerts_outbox.raise_alert(
        connection,
        BEYOND_FINALITY_RULE,
        f"block {fork + 1}",
        alerts_outbox.CRITICAL,
        evidence,
    )
    logger.error(
        "reorg deeper than the finality depth; check the node and the chain",
        fork_block=fork,
        depth=current.block_number - fork,
    )
