"""The machine a run measured: processor, memory and the versions of every server.

Figures only compare within one run, but a person comparing two runs needs
to know whether they ran on the same kind of machine.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from benches import services


async def describe(*, admin_dsn: str, redis_url: str) -> dict[str, Any]:
    """Return the machine block of the results file; unknown parts are None."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": _memory_mb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": await _postgres_version(admin_dsn),
        "redis": await _redis_version(redis_url),
        "anvil": _anvil_version(),
    }


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return None


def _memory_mb() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


async def _postgres_version(dsn: str) -> str | None:
    connection = await asyncpg.connect(dsn)
    try:
        version: str = await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()
    return version


async def _redis_version(url: str) -> str | None:
    client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return str(info.get("redis_version"))


def _anvil_version() -> str | None:
    binary = services.ANVIL_BIN
    if not binary.exists():
        return None
    answer = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=10
    )
    first = answer.stdout.splitlines()[0] if answer.stdout else ""
    return first.removeprefix("anvil Version:").strip() or None
