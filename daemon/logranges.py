"""Adaptive ``eth_getLogs`` block ranges, one per endpoint.

Every provider caps ``eth_getLogs`` somewhere: by block span (Alchemy,
QuickNode, Ankr), by result count (Infura), or by time. The cap is learned
from the errors: a range is shrunk to what the error message suggests, or
halved when it suggests nothing smaller, and grown again while calls are
fast. A learned span cap is never exceeded again; a result-count hint is not
a cap, since the next range may hold fewer logs. The span is also fitted to
the logs it returns, so that one answer holds about :data:`MAX_LOGS_PER_CALL`
at most and a dense stretch of history is never read into memory at once;
the first span is therefore short, and grows. A single block that still
fails is read by block hash, which providers do not cap, so the tailer can
never be stuck on one block.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger

from haven.chain import RANGE_TOO_LARGE, ChainClient
from haven.errors import RpcResponseError, RpcUnavailableError

# Timeouts tolerated within one fetch before it gives up and lets the caller
# back off: enough to shrink from thousands of blocks to a few hundred.
MAX_TIMEOUTS_PER_FETCH = 4
FAST_CALL_S = 1.0
PATIENCE_CALLS = 16
# Logs one answer should hold at most: a few tens of megabytes once parsed,
# and the result cap of the strictest providers.
MAX_LOGS_PER_CALL = 10_000
FIRST_SPAN_BLOCKS = 250


@dataclass(frozen=True)
class Suggestion:
    """A block span read from a provider's error; ``is_cap`` when it is a hard limit."""

    blocks: int
    is_cap: bool


_NUMBER = r"(\d[\d,_]*)\s*(k|K)?"
_CAPS = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # Alchemy: "... with up to a 2K block range and no limit on the response size"
        rf"up to an? {_NUMBER}\s*block range",
        # QuickNode: "eth_getLogs is limited to a 10000 range"
        rf"limited to an? {_NUMBER}\s*(?:blocks?\s*)?range",
        # "exceed maximum block range: 5000", "max block range 1000"
        rf"max(?:imum)? block range(?: (?:is|of))?:?\s*{_NUMBER}",
        rf"block range (?:limit|is limited to|must not exceed|should not exceed)"
        rf":?\s*{_NUMBER}",
        rf"ranges? (?:over|above|greater than) {_NUMBER}\s*blocks",
    )
)
# Infura: "query returned more than 10000 results. Try with this block range
# [0x1e8480, 0x1e8c4f]." The span fits the logs of that place only.
_HINTED_RANGE = re.compile(r"\[\s*(0x[0-9a-f]+)\s*,\s*(0x[0-9a-f]+)\s*\]", re.I)


def suggested_blocks(message: str) -> Suggestion | None:
    """Return the block span a provider's error suggests, or None if it names none."""
    hinted = _HINTED_RANGE.search(message)
    if hinted is not None:
        first, last = (int(group, 16) for group in hinted.groups())
        if last >= first:
            return Suggestion(blocks=last - first + 1, is_cap=False)
    for pattern in _CAPS:
        found = pattern.search(message)
        if found is not None:
            digits, thousands = found.groups()
            blocks = int(re.sub(r"[,_]", "", digits)) * (1000 if thousands else 1)
            if blocks > 0:
                return Suggestion(blocks=blocks, is_cap=True)
    return None


class LogRange:
    """The block span of the next ``eth_getLogs`` call to one endpoint."""

    def __init__(
        self,
        max_blocks: int,
        *,
        fast_s: float = FAST_CALL_S,
        max_logs: int = MAX_LOGS_PER_CALL,
    ) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")
        self.size = min(max_blocks, FIRST_SPAN_BLOCKS)
        self.ceiling = max_blocks
        self._fast_s = fast_s
        self._max_logs = max_logs
        # The smallest span refused without a stated cap, and how many fast
        # calls to make before daring it again: growing straight back into a
        # refusal would cost a failed call per doubling.
        self._refused_blocks: int | None = None
        self._patience_calls = 0

    def too_large(self, requested_blocks: int, message: str | None) -> None:
        """Shrink after a range or size error on a span of ``requested_blocks``."""
        hint = suggested_blocks(message) if message else None
        if hint is not None and hint.blocks < requested_blocks:
            self.size = hint.blocks
            if hint.is_cap:
                self.ceiling = min(self.ceiling, hint.blocks)
        else:
            # No hint, or one that names the span just refused: halving is
            # the only way forward.
            self.size = max(1, requested_blocks // 2)
        self._refused(requested_blocks)
        logger.debug(
            "getlogs range shrunk", blocks=self.size, ceiling_blocks=self.ceiling
        )

    def timed_out(self, requested_blocks: int) -> None:
        """Halve after a call over ``requested_blocks`` timed out."""
        self.size = max(1, requested_blocks // 2)
        self._refused(requested_blocks)
        logger.debug("getlogs range shrunk after a timeout", blocks=self.size)

    def succeeded(self, requested_blocks: int, elapsed_s: float, logs: int = 0) -> None:
        """Fit the span to the ``logs`` read; grow it after a fast, light, full call."""
        if logs > self._max_logs:
            self.size = max(1, requested_blocks * self._max_logs // logs)
            return
        if requested_blocks < self.size or elapsed_s >= self._fast_s:
            return
        if 2 * logs > self._max_logs:
            return
        grown = min(self.ceiling, self.size * 2)
        refused = self._refused_blocks
        if refused is not None and grown >= refused and self._patience_calls > 0:
            self._patience_calls -= 1
            return
        self.size = grown

    def _refused(self, requested_blocks: int) -> None:
        self._refused_blocks = min(requested_blocks, self._refused_blocks or 2**62)
        self._patience_calls = PATIENCE_CALLS


def _is_timeout(exc: BaseException) -> bool:
    # ChainClient wraps the transport error once per endpoint tried, so the
    # TimeoutError sits somewhere down the cause/context chain.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def fetch(
    client: ChainClient,
    span: LogRange,
    *,
    address: str,
    topics: Sequence[Any],
    first_block: int,
    last_block: int,
) -> tuple[int, list[dict[str, Any]]]:
    """Read the logs of ``first_block`` up to at most ``last_block``.

    Returns the last block actually covered and the raw logs, unverified.
    Covers as much as the endpoint allows in one call. Safe to retry and to
    cancel. Raises RpcResponseError for errors other than range or size
    errors, RpcUnavailableError when the endpoint is down or keeps timing out.
    """
    timeouts = 0
    while True:
        to_block = min(last_block, first_block + span.size - 1)
        requested = to_block - first_block + 1
        started = time.monotonic()
        try:
            logs = await client.get_logs(
                address=address,
                from_block=first_block,
                to_block=to_block,
                topics=topics,
            )
        except RpcResponseError as exc:
            if exc.kind != RANGE_TOO_LARGE:
                raise
            if requested == 1:
                return first_block, await _by_hash(client, first_block, address, topics)
            span.too_large(requested, exc.message)
            continue
        except RpcUnavailableError as exc:
            timeouts += 1
            if not _is_timeout(exc) or timeouts > MAX_TIMEOUTS_PER_FETCH:
                raise
            span.timed_out(requested)
            continue
        span.succeeded(requested, time.monotonic() - started, len(logs))
        return to_block, logs


async def _by_hash(
    client: ChainClient, number: int, address: str, topics: Sequence[Any]
) -> list[dict[str, Any]]:
    block = await client.get_block(number)
    if block is None:
        raise RpcUnavailableError(f"node has no block {number} to read logs from")
    logger.debug("getlogs fell back to a block hash filter", block_number=number)
    return await client.get_logs_by_block_hash(
        address=address, block_hash=block["hash"], topics=topics
    )
