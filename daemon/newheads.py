"""New-head announcements over WebSocket: a wake-up for the tailer, nothing more.

A ``newHeads`` subscription tells of a block as soon as the node has it,
where polling learns of it up to one poll interval later. An announcement
is never believed: it only starts the tailer's next round early, and that
round polls every endpoint's head as usual. So a dead, slow or lying socket
costs at most the poll interval, and the watcher reconnects on its own.

The socket's URL may carry a provider API key: it is logged by host only.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from loguru import logger

SUBSCRIBE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "eth_subscribe",
    "params": ["newHeads"],
}
FIRST_RETRY_S = 0.5


class HeadWatch:
    """Set ``wake`` each time the node at ``url`` announces a new head."""

    def __init__(
        self,
        url: str,
        wake: asyncio.Event,
        *,
        timeout_s: float,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._url = url
        self._wake = wake
        self._timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s
        parts = urlsplit(url)
        host = parts.hostname or "?"
        self.label = f"{host}:{parts.port}" if parts.port else host
        self._failures = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Follow the socket until ``stopping`` is set; reconnect after any loss.

        Never raises for a network fault; safe to cancel.
        """
        async with aiohttp.ClientSession() as session:
            while not stopping.is_set():
                try:
                    await self._follow(session)
                    reason = "closed by the node"
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    reason = str(exc) or type(exc).__name__
                self._failures += 1
                retry_s = self._retry_s()
                self._log_loss(reason, retry_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), retry_s)

    def _retry_s(self) -> float:
        doubled = FIRST_RETRY_S * (1 << min(self._failures - 1, 10))
        return min(self._max_backoff_s, doubled)

    def _log_loss(self, reason: str, retry_s: float) -> None:
        # One warning per outage; the retries of a long one are not news.
        log = logger.warning if self._failures == 1 else logger.debug
        log(
            "newheads socket lost, polling alone until it is back",
            endpoint=self.label,
            reason=reason.replace(self._url, self.label),
            retry_in_s=retry_s,
        )

    async def _follow(self, session: aiohttp.ClientSession) -> None:
        """Subscribe, then wake the tailer per announced head until the socket ends."""
        async with asyncio.timeout(self._timeout_s):
            socket = await session.ws_connect(
                self._url,
                heartbeat=max(self._timeout_s, 5.0),
                timeout=aiohttp.ClientWSTimeout(ws_close=self._timeout_s),
            )
        async with socket:
            await socket.send_json(SUBSCRIBE)
            reply = await socket.receive_json(timeout=self._timeout_s)
            _check_subscribed(reply)
            self._failures = 0
            logger.info("newheads subscribed", endpoint=self.label)
            # Heads announced while the socket was down were missed: look now.
            self._wake.set()

            async for message in socket:
                if message.type is aiohttp.WSMsgType.ERROR:
                    raise aiohttp.ClientError(f"socket error: {socket.exception()}")
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                if _is_announcement(message.data):
                    self._wake.set()


def _check_subscribed(reply: Any) -> None:
    if not isinstance(reply, dict) or not isinstance(reply.get("result"), str):
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise ValueError(f"node refused the newHeads subscription: {error!r}")


def _is_announcement(text: str) -> bool:
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("method") == "eth_subscription"
