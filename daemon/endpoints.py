"""RPC endpoints as the tailer sees them: each one's head, and which to believe.

ChainClient fails over only when a node stops answering. A node that answers
but lags, or whose head stands still, fails silently instead: it says "no
logs" for blocks it has not seen. So each round the tailer polls the head of
every endpoint, and reads from the one with the highest head among those
whose head still moves; it never asks an endpoint about blocks above that
endpoint's own head. An endpoint serving another chain is refused for good.

URLs may carry provider API keys, so endpoints are logged by position and
host only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from loguru import logger

from haven.chain import ChainClient
from haven.daemon.logranges import LogRange
from haven.errors import ChainMismatchError, HavenError, RpcUnavailableError


@dataclass(eq=False)
class Endpoint:
    """One node: its client, its learned log range and its last head."""

    label: str
    client: ChainClient
    span: LogRange
    head: int | None = None
    head_moved_at_s: float = 0.0
    answered: bool = False
    chain_checked: bool = False
    refused: str | None = field(default=None, repr=False)


def _label(position: int, url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"#{position} {parts.hostname}{port}"


class Endpoints:
    """The tailer's view of its nodes; owns one ChainClient per URL."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        chain_id: int,
        timeout_s: float,
        stall_s: float,
        max_range_blocks: int,
    ) -> None:
        if not urls:
            raise ValueError("at least one RPC URL is required")
        self._stall_s = stall_s
        self._all = [
            Endpoint(
                label=_label(position, url),
                client=ChainClient([url], chain_id=chain_id, timeout_s=timeout_s),
                span=LogRange(max_range_blocks),
            )
            for position, url in enumerate(urls)
        ]
        self._urls = {url: e.label for url, e in zip(urls, self._all, strict=True)}
        self.current: Endpoint | None = None

    def redact(self, text: str) -> str:
        """Replace every endpoint URL in ``text`` by its label, for logging."""
        for url, label in self._urls.items():
            text = text.replace(url, label)
        return text

    async def close(self) -> None:
        """Close every client; safe to call twice."""
        await asyncio.gather(*(e.client.close() for e in self._all))

    async def refresh(self) -> Endpoint:
        """Poll every head and return the endpoint to read from this round.

        Raises RpcUnavailableError when no endpoint answered.
        """
        await asyncio.gather(*(self._poll(e) for e in self._all))
        answered = [e for e in self._all if e.answered and e.head is not None]
        if not answered:
            raise RpcUnavailableError("no RPC endpoint answered eth_blockNumber")

        now = time.monotonic()
        choice = max(
            answered,
            key=lambda e: (
                not self._is_stalled(e, answered, now),
                e.head,
                e is self.current,
            ),
        )
        if choice is not self.current:
            self._log_switch(choice, answered, now)
            self.current = choice
        return choice

    def _is_stalled(
        self, endpoint: Endpoint, answered: list[Endpoint], now: float
    ) -> bool:
        # A head that stands still is only suspect when another one moves:
        # otherwise the chain itself is quiet (or halted) and no node is better.
        if now - endpoint.head_moved_at_s < self._stall_s:
            return False
        return any(
            now - other.head_moved_at_s < self._stall_s
            for other in answered
            if other is not endpoint
        )

    def _log_switch(
        self, choice: Endpoint, answered: list[Endpoint], now: float
    ) -> None:
        previous = self.current
        if previous is None:
            logger.info("rpc endpoint chosen", endpoint=choice.label, head=choice.head)
            return
        if previous not in answered:
            reason = "not answering"
        elif self._is_stalled(previous, answered, now):
            reason = "head stalled"
        else:
            reason = "head behind"
        logger.warning(
            "rpc endpoint switched, reading from the next",
            endpoint=choice.label,
            previous=previous.label,
            reason=reason,
            head=choice.head,
            previous_head=previous.head,
        )

    async def _poll(self, endpoint: Endpoint) -> None:
        endpoint.answered = False
        if endpoint.refused is not None:
            return
        try:
            if not endpoint.chain_checked:
                await endpoint.client.verify_chain_id()
                endpoint.chain_checked = True
            head = await endpoint.client.block_number()
        except ChainMismatchError as exc:
            endpoint.refused = str(exc)
            logger.error(
                "rpc endpoint serves another chain; check HAVEN_RPC_URL",
                endpoint=endpoint.label,
            )
            return
        except (HavenError, ValueError) as exc:
            logger.debug("rpc endpoint unavailable", endpoint=endpoint.label, error=exc)
            return
        if head != endpoint.head:
            endpoint.head = head
            endpoint.head_moved_at_s = time.monotonic()
        endpoint.answered = True
