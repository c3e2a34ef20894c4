"""A fault-injecting JSON-RPC proxy in front of anvil, for the tailer's tests.

anvil answers every ``eth_getLogs`` in full and never lags, so the failures
the tailer must survive are staged here: block-range and result caps in the
wordings of real providers, a head that lags or stands still (blocks and
logs above it do not exist), range queries that answer "no logs" for the
newest blocks, calls that are forwarded and then answered too late, and
calls dropped with a 502. Faults are changed at run time through
``proxy.faults``; ``proxy.stats`` counts what was served, so a test can
check that a fault really happened.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from harness.anvil import free_port

# (code, message) per provider; {cap} is a block span, {results} a log count.
RANGE_WORDINGS: dict[str, tuple[int, str]] = {
    "alchemy": (
        -32602,
        "Log response size exceeded. You can make eth_getLogs requests with up to "
        "a {cap} block range and no limit on the response size, or you can request "
        "any block range with a cap of 10K logs in the response.",
    ),
    "quicknode": (-32614, "eth_getLogs is limited to a {cap} range"),
    "ankr": (-32600, "block range is too wide"),
    "maxrange": (-32000, "exceed maximum block range: {cap}"),
}
RESULT_WORDINGS: dict[str, tuple[int, str]] = {
    "infura": (
        -32005,
        "query returned more than {results} results. "
        "Try with this block range [{hint_from}, {hint_to}].",
    ),
    "infura_bare": (-32005, "query returned more than {results} results"),
    "alchemy": RANGE_WORDINGS["alchemy"],
}


def _span_text(blocks: int) -> str:
    # Alchemy says "2K"; keep that style when the cap allows it.
    return f"{blocks // 1000}K" if blocks % 1000 == 0 else str(blocks)


@dataclass
class Faults:
    """What the proxy does wrong; every field off by default."""

    range_cap: int | None = None
    range_wording: str = "quicknode"
    result_cap: int | None = None
    result_wording: str = "infura"
    lag_blocks: int = 0
    frozen_head: int | None = None
    empty_logs_newest: int = 0
    slow_logs_over: int | None = None
    hang_rate: float = 0.0
    hang_s: float = 3.0
    drop_rate: float = 0.0
    delay_s: float = 0.0


@dataclass
class Stats:
    calls: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    log_spans: list[int] = field(default_factory=list)
    # (first block, span) of every range forwarded, in call order.
    log_ranges: list[tuple[int, int]] = field(default_factory=list)


class FaultProxy:
    """An aiohttp JSON-RPC server forwarding to ``upstream`` with faults."""

    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self.stats = Stats()
        self.url = ""
        self._rng = random.Random(seed)
        self._closing = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def clear(self) -> None:
        """Turn every fault off."""
        self.faults = Faults()

    # --- upstream ------------------------------------------------------------

    async def _forward(self, method: str, params: list[Any]) -> dict[str, Any]:
        assert self._session is not None
        payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self._session.post(self.upstream, json=payload) as response:
            body: dict[str, Any] = await response.json(content_type=None)
        return body

    async def _result(self, method: str, params: list[Any]) -> Any:
        body = await self._forward(method, params)
        if "error" in body:
            raise RuntimeError(f"upstream {method} failed: {body['error']}")
        return body["result"]

    async def _heads(self) -> tuple[int, int]:
        """Return (real head, head this proxy admits to)."""
        real = int(await self._result("eth_blockNumber", []), 16)
        visible = real - self.faults.lag_blocks
        if self.faults.frozen_head is not None:
            visible = min(visible, self.faults.frozen_head)
        return real, max(visible, 0)

    # --- serving -------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        faults = self.faults
        method = body.get("method", "")
        self.stats.calls[method] += 1
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if self._rng.random() < faults.drop_rate:
            self.stats.served["drop"] += 1
            return web.Response(status=502, text="bad gateway")

        answer, slow = await self._answer(method, list(body.get("params", [])))
        answer["id"] = body.get("id")
        if slow or self._rng.random() < faults.hang_rate:
            # The node did the work; the answer comes after the caller gave up.
            self.stats.served["hang"] += 1
            with suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), faults.hang_s)
        return web.json_response(answer)

    async def _answer(
        self, method: str, params: list[Any]
    ) -> tuple[dict[str, Any], bool]:
        lagging = self.faults.lag_blocks or self.faults.frozen_head is not None
        if method == "eth_getLogs":
            return await self._logs(params)
        if not lagging:
            return await self._forward(method, params), False
        _, visible = await self._heads()
        if method == "eth_blockNumber":
            return _ok(hex(visible)), False
        if method == "eth_getBlockByNumber":
            tag = params[0]
            if tag in ("latest", "pending", "safe", "finalized"):
                params = [hex(visible), *params[1:]]
            elif int(tag, 16) > visible:
                self.stats.served["lag"] += 1
                return _ok(None), False
        answer = await self._forward(method, params)
        result = answer.get("result")
        if isinstance(result, dict):
            # Blocks, receipts and transactions above the admitted head are
            # unknown to a lagging node.
            number = result.get("blockNumber") or result.get("number")
            if isinstance(number, str) and int(number, 16) > visible:
                self.stats.served["lag"] += 1
                return _ok(None), False
        return answer, False

    async def _logs(self, params: list[Any]) -> tuple[dict[str, Any], bool]:
        faults = self.faults
        query = dict(params[0])
        real, visible = await self._heads()
        if "blockHash" in query:
            self.stats.served["by_hash"] += 1
            answer = await self._forward("eth_getLogs", [query])
            logs = answer.get("result") or []
            if logs and int(logs[0]["blockNumber"], 16) > visible:
                self.stats.served["lag"] += 1
                return _ok([]), False
            return answer, False

        first = _block(query.get("fromBlock", "latest"), visible)
        last = min(_block(query.get("toBlock", "latest"), visible), visible)
        if first > last:
            return _ok([]), False
        span = last - first + 1
        if faults.range_cap is not None and span > faults.range_cap:
            self.stats.served["range_cap"] += 1
            code, text = RANGE_WORDINGS[faults.range_wording]
            return _error(code, text.format(cap=_span_text(faults.range_cap))), False

        query.update(fromBlock=hex(first), toBlock=hex(last))
        answer = await self._forward("eth_getLogs", [query])
        logs = answer.get("result")
        if logs is None:
            return answer, False
        if faults.result_cap is not None and len(logs) > faults.result_cap:
            self.stats.served["result_cap"] += 1
            return self._too_many(logs, first), False
        if faults.empty_logs_newest and last > real - faults.empty_logs_newest:
            self.stats.served["empty"] += 1
            return _ok([]), False
        self.stats.log_spans.append(span)
        self.stats.log_ranges.append((first, span))
        slow = faults.slow_logs_over is not None and span > faults.slow_logs_over
        return answer, slow

    def _too_many(self, logs: list[dict[str, Any]], first: int) -> dict[str, Any]:
        cap = self.faults.result_cap
        assert cap is not None
        code, text = RESULT_WORDINGS[self.faults.result_wording]
        # Like Infura: hint the widest range from `first` that fits the cap.
        numbers = sorted(int(log["blockNumber"], 16) for log in logs)
        fits = numbers[cap] - 1 if cap < len(numbers) else numbers[-1]
        message = text.format(
            cap=_span_text(2000),
            results=cap,
            hint_from=hex(first),
            hint_to=hex(max(first, fits)),
        )
        return _error(code, message)


def _block(tag: str, visible: int) -> int:
    if tag in ("latest", "pending", "safe", "finalized"):
        return visible
    if tag == "earliest":
        return 0
    return int(tag, 16)


def _ok(result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": result}


def _error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}}


@asynccontextmanager
async def running_proxy(upstream: str, *, seed: int = 0) -> AsyncIterator[FaultProxy]:
    """Run one proxy in front of ``upstream`` for the duration of the block."""
    proxy = FaultProxy(upstream, seed=seed)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
