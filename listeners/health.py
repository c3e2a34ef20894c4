"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz``.

``/healthz`` answers 200 while the process can run a handler at all: a
supervisor restarts it otherwise. ``/readyz`` checks PostgreSQL, Redis
(where the process uses it), an RPC endpoint and the tailer's lag behind
the chain head, and spells every check out. It answers 503 only when a check
the process cannot work without fails, so a load balancer stops sending work
and a person sees why; a failing check the process can work around answers
200 with the status ``degraded``. The daemon needs all of them. The
listener needs only PostgreSQL: without Redis its rate limits are not
counted, and it takes webhooks without the chain.
Neither route needs a key; neither says anything secret (no DSN, no URL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypedDict

import asyncpg
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from haven import db, readings
from haven.chain import ChainClient
from haven.errors import ChainError, DatabaseUnavailableError
from haven.settings import Settings

CHECK_TIMEOUT_S = 2.0
HEALTHZ = "/healthz"
READYZ = "/readyz"
READY = "ready"
DEGRADED = "degraded"
NOT_READY = "not_ready"
# Strict by default: the daemon cannot sign, send or tail without any of
# them (it runs no Redis check).
EVERY_CHECK = frozenset(("postgres", "chain", "tail", "redis"))
# Webhooks are verified and stored with PostgreSQL alone.
LISTENER_NEEDS = frozenset(("postgres",))


class Check(TypedDict):
    """The result of one readiness check."""

    ok: bool
    detail: str | None


class Outcome(TypedDict):
    """A check's result, and whether the process is not ready without it."""

    ok: bool
    detail: str | None
    required: bool


@dataclass(frozen=True)
class Readiness:
    """The dependencies a process needs before it is ready for work."""

    pool: asyncpg.Pool
    chain: ChainClient
    redis: aioredis.Redis | None
    max_tail_lag_blocks: int
    # The checks whose failure makes the process not ready; a failure of
    # any other only degrades it.
    needs: frozenset[str] = EVERY_CHECK

    @classmethod
    def of(
        cls,
        settings: Settings,
        pool: asyncpg.Pool,
        chain: ChainClient,
        redis: aioredis.Redis | None,
        *,
        needs: frozenset[str] = EVERY_CHECK,
    ) -> Readiness:
        return cls(pool, chain, redis, settings.ready_max_tail_lag_blocks, needs)

    async def check(self) -> dict[str, Outcome]:
        """Run every check concurrently and return their outcomes by name."""
        names = ["postgres", "chain", "tail"]
        runs = [self._postgres(), self._chain(), self._tail()]
        if self.redis is not None:
            names.append("redis")
            runs.append(self._redis())
        results = await asyncio.gather(*(_timed(run) for run in runs))
        return {
            name: Outcome(
                ok=result["ok"], detail=result["detail"], required=name in self.needs
            )
            for name, result in zip(names, results, strict=True)
        }

    async def _postgres(self) -> Check:
        async with db.translate_errors():
            await self.pool.fetchval("SELECT 1")
        return {"ok": True, "detail": None}

    async def _redis(self) -> Check:
        assert self.redis is not None
        await self.redis.ping()
        return {"ok": True, "detail": None}

    async def _chain(self) -> Check:
        head_block = await self.chain.block_number()
        return {"ok": True, "detail": f"head at block {head_block}"}

    async def _tail(self) -> Check:
        position = await readings.tail_position(self.pool, self.chain)
        lag = position.lag_blocks
        detail = f"{lag} blocks behind the head (at most {self.max_tail_lag_blocks})"
        return {"ok": lag <= self.max_tail_lag_blocks, "detail": detail}


async def _timed(run: Awaitable[Check]) -> Check:
    try:
        return await asyncio.wait_for(run, CHECK_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "detail": f"no answer within {CHECK_TIMEOUT_S} s"}
    except (ChainError, DatabaseUnavailableError, RedisError, OSError) as exc:
        # The class name only: messages of drivers may carry hosts and users.
        return {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}


READINESS = web.AppKey("haven.health.readiness", Readiness)


def setup(app: web.Application, readiness: Readiness) -> None:
    """Add ``/healthz`` and ``/readyz`` to ``app``."""
    app[READINESS] = readiness
    app.router.add_get(HEALTHZ, healthz)
    app.router.add_get(READYZ, readyz)


async def healthz(request: web.Request) -> web.Response:
    """Answer 200 while the process runs."""
    return _json(200, {"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """Answer 200 unless a required check fails, then 503; the body says which."""
    checks = await request.app[READINESS].check()
    status = readiness_status(checks)
    body = {"status": status, "checks": checks}
    return _json(503 if status == NOT_READY else 200, body)


def readiness_status(checks: dict[str, Outcome]) -> str:
    """Return ``ready``, ``degraded`` (an optional check failed) or ``not_ready``."""
    failed = [check for check in checks.values() if not check["ok"]]
    if any(check["required"] for check in failed):
        return NOT_READY
    return DEGRADED if failed else READY


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
