"""Real processes for the operations tests: start, read, signal, wait.

Every wait has a deadline and names what it waited for; a failure message
carries the tail of the process's log, so a red test says what happened.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from cryptography.fernet import Fernet

from harness.anvil import free_port

HAVEN = [sys.executable, "-m", "haven.cli"]
REDIS_URL = "redis://127.0.0.1:6379/0"


def new_secret() -> str:
    """Return a fresh Standard Webhooks secret."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def haven_environ(database_url: str, redis_prefix: str, **extra: str) -> dict[str, str]:
    """Return a complete set of HAVEN_* settings for one deployment under test."""
    return {
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_REDIS_URL": REDIS_URL,
        "HAVEN_REDIS_PREFIX": redis_prefix,
        "HAVEN_RPC_URL": "http://127.0.0.1:8545",
        "HAVEN_CHAIN_ID": "31337",
        "HAVEN_WEBHOOK_SECRETS_AURORA": new_secret(),
        "HAVEN_WEBHOOK_SECRETS_TRIBE": new_secret(),
        "HAVEN_MASTER_KEY": Fernet.generate_key().decode(),
        "HAVEN_ADMIN_API_KEYS": "ops-admin-key-" + uuid.uuid4().hex,
        "HAVEN_LISTEN_PORT": str(free_port()),
        "HAVEN_DAEMON_PORT": "0",
    } | extra


class Process:
    """One child process: stdout read as JSON lines, stderr kept in a file."""

    def __init__(
        self, name: str, process: asyncio.subprocess.Process, log_path: Path
    ) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, signum: signal.Signals) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def next_line(self, timeout_s: float) -> dict[str, Any]:
        """Return the next stdout line, parsed as JSON."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} printed nothing within {timeout_s} s\n{self.log_tail()}"
            ) from None
        if not line:
            code = await self.wait_exit(5)
            raise AssertionError(
                f"{self.name} exited with {code} before printing\n{self.log_tail()}"
            )
        return dict(orjson.loads(line))

    async def until_line(
        self, matches: Callable[[dict[str, Any]], bool], timeout_s: float
    ) -> dict[str, Any]:
        """Read stdout lines until one matches; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: no matching line within {timeout_s} s\n"
                    f"{self.log_tail()}"
                )
            line = await self.next_line(remaining)
            if matches(line):
                return line

    async def wait_exit(self, timeout_s: float) -> int:
        """Return the exit code; fail if the process outlives ``timeout_s``."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} still running {timeout_s} s later\n{self.log_tail()}"
            ) from None

    async def stop(self) -> None:
        """Terminate, then kill: for clean-up only, never what a test asserts."""
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def start(
    name: str, args: list[str], env: Mapping[str, str], log_dir: Path
) -> Process:
    """Start ``args`` with exactly the ``HAVEN_*`` settings in ``env``."""
    log_path = log_dir / f"{name}.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")}
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *args,
            env=base | dict(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    return Process(name, process, log_path)


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.05,
) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after the timeout.

    For state held by another process (rows, locks, ports), where there is
    nothing to subscribe to.
    """
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def wait_http(url: str, process: Process, timeout_s: float = 30) -> None:
    """Wait until ``url`` answers at all; fail early if ``process`` exits."""

    async def answers() -> bool:
        if process.process.returncode is not None:
            raise AssertionError(
                f"{process.name} exited with {process.process.returncode}\n"
                f"{process.log_tail()}"
            )
        try:
            async with aiohttp.ClientSession() as session:
                timeout = aiohttp.ClientTimeout(total=1)
                async with session.get(url, timeout=timeout):
                    return True
        except (aiohttp.ClientError, TimeoutError):
            return False

    await wait_until(answers, timeout_s, f"{url} to answer", interval_s=0.1)
