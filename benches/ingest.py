"""ingest: signed webhooks accepted per second by the real listener.

The real listener (``create_app`` on a real pool and Redis) and a bare
aiohttp handler answering 202 are served in turn by the same runner code
in a server process, and driven by the same client process: every request
is a distinct booking, so every accepted one creates a ready intent.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from cryptography.fernet import Fernet

from benches import services
from benches.context import Context
from benches.figures import Check, Figure
from benches.ingest_server import BARE, REAL

NAME = "ingest"
FULL_REQUESTS = 20_000
CONCURRENCY = 64
HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 600.0


def listener_environ(
    database_url: str, redis_prefix: str, secret: str
) -> dict[str, str]:
    """The HAVEN_* environment of a production-like listener on this database."""
    return {
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_REDIS_URL": services.REDIS_URL,
        "HAVEN_REDIS_PREFIX": redis_prefix,
        "HAVEN_RPC_URL": "http://127.0.0.1:8545",
        "HAVEN_CHAIN_ID": "31337",
        "HAVEN_WEBHOOK_SECRETS_AURORA": secret,
        "HAVEN_WEBHOOK_SECRETS_TRIBE": _new_secret(),
        "HAVEN_MASTER_KEY": Fernet.generate_key().decode(),
        "HAVEN_ADMIN_API_KEYS": "bench-admin-key-" + "x" * 24,
        "HAVEN_LOG_FORMAT": "json",
    }


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@asynccontextmanager
async def serving(mode: str, environ: Mapping[str, str]) -> AsyncIterator[str]:
    """Run the ingest server of ``mode`` in a process; yield its webhook URL."""
    port = services.free_port()
    spec = {"mode": mode, "host": HOST, "port": port, "environ": dict(environ)}
    # The listener's log lines cost it their formatting, as in production;
    # where they go is not what is measured.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benches.ingest_server",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=services.ROOT,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(orjson.dumps(spec))
        process.stdin.close()
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
        if line.strip() != b"ready":
            raise services.WorkerError(f"ingest server ({mode}) did not start")
        yield f"http://{HOST}:{port}/webhooks/aurora"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _drive(
    mode: str, environ: Mapping[str, str], secret: str, count: int
) -> dict[str, Any]:
    async with serving(mode, environ) as url:
        spec = {
            "url": url,
            "secret": secret,
            "count": count,
            "warmup": max(CONCURRENCY, count // 20),
            "concurrency": CONCURRENCY,
            "tag": mode,
        }
        return await services.run_worker(
            "ingest_client", spec, timeout_s=CLIENT_TIMEOUT_S
        )


def _accepted_per_s(run: Mapping[str, Any]) -> float:
    accepted = int(run["statuses"].get("202", 0))
    return accepted / run["elapsed_s"] if run["elapsed_s"] > 0 else 0.0


async def measure(context: Context) -> Figure:
    """Drive the bare handler, then the real listener; return the figure."""
    count = context.size(FULL_REQUESTS, minimum=200)
    secret = _new_secret()
    async with context.databases.fresh() as dsn, services.redis_prefix() as prefix:
        environ = listener_environ(dsn, prefix, secret)
        bare = await _drive(BARE, {}, secret, count)
        real = await _drive(REAL, environ, secret, count)
        connection = await asyncpg.connect(dsn)
        try:
            intents = await connection.fetchval("SELECT count(*) FROM intents")
        finally:
            await connection.close()

    measured, baseline = _accepted_per_s(real), _accepted_per_s(bare)
    ratio = measured / baseline if baseline > 0 else 0.0
    return Figure(
        name=NAME,
        unit="webhooks/s",
        measured=measured,
        baseline=baseline,
        checks=(
            Check("ratio", ">=", 0.5, ratio),
            Check("p99_ms", "<", 25, real["p99_ms"]),
        ),
        sizes={"requests": count, "concurrency": CONCURRENCY},
        details={
            "listener": _summary(real),
            "bare": _summary(bare),
            "intents_created": intents,
        },
    )


def _summary(run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "elapsed_s": round(run["elapsed_s"], 3),
        "statuses": run["statuses"],
        "p50_ms": round(run["p50_ms"], 2),
        "p90_ms": round(run["p90_ms"], 2),
        "p99_ms": round(run["p99_ms"], 2),
        "max_ms": round(run["max_ms"], 2),
    }
