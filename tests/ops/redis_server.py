"""A Redis server of the test's own, on a free port: started, killed, restarted.

Tests that take Redis away must never touch the shared server on 6379;
this one lives and dies with the test, and keeps nothing on disk.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from harness.anvil import free_port

START_TIMEOUT_S = 10.0


class RedisServer:
    """One ``redis-server`` process on ``port``, without persistence."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / f"redis-{self.port}.log"),
            stdout=asyncio.subprocess.DEVNULL,
        )
        await self._wait_answers()

    async def kill(self) -> None:
        """SIGKILL the server and reap it: what a crash looks like to clients."""
        if self._process is None or self._process.returncode is not None:
            return
        self._process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self._process.wait(), 10)

    async def ping(self) -> bool:
        """Tell whether the server answers PING right now."""
        client = aioredis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()

    async def _wait_answers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await self.ping():
            assert self._process is not None
            if self._process.returncode is not None:
                raise AssertionError(
                    f"redis-server on port {self.port} exited with "
                    f"{self._process.returncode}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"redis-server on port {self.port} did not answer within "
                    f"{START_TIMEOUT_S} s"
                )
            # Nothing to wait on before the port opens.
            await asyncio.sleep(0.05)


@asynccontextmanager
async def running_redis(directory: Path) -> AsyncIterator[RedisServer]:
    """Run a Redis server of this test's own; kill it afterwards."""
    server = RedisServer(free_port(), directory)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
