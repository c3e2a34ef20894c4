"""Headless Chromium for tests, driven over the DevTools protocol (CDP).

Starts Debian's ``chromium`` with a throwaway profile and a debugging port
chosen by the browser itself (read back from ``DevToolsActivePort``), opens
one page target over a websocket and records every console message, page
exception and browser log entry (failed loads, CSP violations) it sees.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
)
START_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0


def is_installed() -> bool:
    return Path(CHROMIUM).exists()


@dataclass
class Page:
    """One page target: send CDP commands, read what the page complained about."""

    socket: aiohttp.ClientWebSocketResponse
    problems: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _events: dict[str, asyncio.Event] = field(default_factory=dict)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[call_id] = answer
        await self.socket.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(answer, CALL_TIMEOUT_S)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    async def evaluate(self, expression: str) -> Any:
        """Evaluate ``expression`` (awaiting a promise) and return its value."""
        result = await self.send(
            "Runtime.evaluate",
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluation failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        """Open ``url`` and wait for its load event."""
        loaded = self.event("Page.loadEventFired")
        loaded.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(loaded.wait(), CALL_TIMEOUT_S)

    async def screenshot(self) -> bytes:
        shot = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])

    async def read_messages(self) -> None:
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            self._dispatch(message.json())

    def _dispatch(self, payload: dict[str, Any]) -> None:
        if "id" in payload:
            waiting = self._waiting.pop(payload["id"], None)
            if waiting is not None and not waiting.done():
                waiting.set_result(payload)
            return
        method, params = payload.get("method", ""), payload.get("params", {})
        self.event(method).set()
        if method == "Runtime.consoleAPICalled" and params["type"] in (
            "error",
            "warning",
            "assert",
        ):
            texts = [str(a.get("value", a.get("description"))) for a in params["args"]]
            self.problems.append(f"console.{params['type']}: {' '.join(texts)}")
        elif method == "Runtime.exceptionThrown":
            self.problems.append(f"exception: {params['exceptionDetails']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in (
            "error",
            "warning",
        ):
            self.problems.append(f"log: {params['entry']['text']}")


async def _debugging_port(profile: Path, process: asyncio.subprocess.Process) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    # Chromium announces its port only by writing this file.
    while not marker.exists() or not marker.read_text().strip():
        if process.returncode is not None:
            raise RuntimeError(f"chromium exited with code {process.returncode}")
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("chromium did not open its debugging port")
        await asyncio.sleep(0.05)
    return int(marker.read_text().splitlines()[0])


@asynccontextmanager
async def open_page() -> AsyncIterator[Page]:
    """Start Chromium and yield its first page with console capture on."""
    profile = Path(tempfile.mkdtemp(prefix="haven-chromium-"))
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    reader: asyncio.Task[None] | None = None
    try:
        port = await _debugging_port(profile, process)
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        target = next(t for t in targets if t["type"] == "page")
        socket = await session.ws_connect(
            target["webSocketDebuggerUrl"], max_msg_size=64 * 2**20
        )
        page = Page(socket)
        reader = asyncio.create_task(page.read_messages())
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        yield page
        await socket.close()
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await session.close()
        await _stop(process)
        shutil.rmtree(profile, ignore_errors=True)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()
