"""The real services a benchmark runs against, each thrown away afterwards.

PostgreSQL: one migrated template per run, and a fresh copy of it per
benchmark. Redis: a key prefix per benchmark, deleted afterwards. anvil and
the HNV helpers come from the test harness (``tests/harness``), which is
put on the import path here so benchmarks and tests start nodes the same
way. Workers: benchmark code that must run in its own process (to measure
its memory, or to keep the client's CPU apart from the server's) is run as
``python -m benches.<worker>`` with a JSON spec on stdin and a JSON answer
as the last line of stdout.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    # The harness is a test-only package; benchmarks share its node helpers.
    sys.path.insert(0, str(ROOT / "tests"))

from harness import databases  # noqa: E402
from harness.anvil import ANVIL_BIN, AnvilNode, free_port, running_anvil  # noqa: E402
from haven import migrations  # noqa: E402

__all__ = [
    "ANVIL_BIN",
    "REDIS_URL",
    "AnvilNode",
    "Databases",
    "WorkerError",
    "answer",
    "free_port",
    "peak_rss_mb",
    "percentile",
    "read_spec",
    "redis_prefix",
    "run_worker",
    "running_anvil",
]

REDIS_URL = os.environ.get("HAVEN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_DSN = databases.ADMIN_DSN


class WorkerError(RuntimeError):
    """A worker process failed; the message holds the end of its stderr."""


class Databases:
    """Fresh migrated databases, copied from one template migrated per run."""

    def __init__(self) -> None:
        self._template: str | None = None

    async def __aenter__(self) -> Databases:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._template is not None:
            await databases.drop_database(self._template)
            self._template = None

    @asynccontextmanager
    async def fresh(self) -> AsyncIterator[str]:
        """Yield the DSN of a new, fully migrated database; drop it afterwards."""
        if self._template is None:
            self._template = await databases.create_database(prefix="haven_benchtpl")
            await migrations.apply(databases.dsn_for(self._template))
        name = await databases.create_database(
            template=self._template, prefix="haven_bench"
        )
        try:
            yield databases.dsn_for(name)
        finally:
            await databases.drop_database(name)


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """Yield a Redis key prefix of this benchmark alone; delete its keys afterwards."""
    prefix = f"haven-bench-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        client = aioredis.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


async def run_worker(
    module: str,
    spec: Mapping[str, Any],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python -m benches.<module>`` with ``spec`` on stdin; return its answer.

    Raises WorkerError when it exits non-zero or answers no JSON, and
    TimeoutError (after killing it) when it runs past ``timeout_s``.
    """
    with tempfile.TemporaryFile() as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"benches.{module}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            env=dict(env) if env is not None else None,
        )
        try:
            stdout, _ = await asyncio.wait_for(
                process.communicate(orjson.dumps(dict(spec))), timeout_s
            )
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            stderr.seek(0)
            tail = stderr.read()[-2000:].decode(errors="replace")
            raise WorkerError(f"{module} exited {process.returncode}: {tail}")
    lines = stdout.decode().strip().splitlines()
    if not lines:
        raise WorkerError(f"{module} answered nothing")
    answer: dict[str, Any] = orjson.loads(lines[-1])
    return answer


def read_spec() -> dict[str, Any]:
    """Read a worker's spec from stdin (the worker side of :func:`run_worker`)."""
    spec: dict[str, Any] = orjson.loads(sys.stdin.buffer.read())
    return spec


def answer(result: Mapping[str, Any]) -> None:
    """Print a worker's answer as the last line of stdout."""
    sys.stdout.write(orjson.dumps(dict(result)).decode() + "\n")
    sys.stdout.flush()


def cpu_s() -> float:
    """Return the CPU seconds (user and system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """Return the peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of already sorted values (0 if empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]
