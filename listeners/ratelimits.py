"""Rate limits of the webhook endpoints, kept in Redis so every listener shares them.

Two moving-window limits apply: one per client IP, counted before anything
else so floods are cheap to refuse, and one per partner, counted only for
requests whose signature holds, so nobody can exhaust a partner's budget by
posting forgeries to its path. Keys live under ``<redis_prefix>:ratelimit``.

Redis is an optimisation here, not a source of truth: when it cannot be
reached, requests are let through and a warning is logged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from loguru import logger
from redis.exceptions import RedisError

from haven.errors import RedisUnavailableError
from haven.listeners.answers import Rejection


@dataclass(frozen=True)
class RateLimits:
    """Limits in the ``limits`` notation, e.g. ``600/minute``."""

    per_partner: str = "1200/minute"
    per_ip: str = "600/minute"


class Limiter:
    """Counts requests against the per-IP and per-partner limits."""

    def __init__(
        self, redis: aioredis.Redis, *, prefix: str, limits: RateLimits
    ) -> None:
        """Share ``redis``'s connection pool; raise ValueError on a bad limit."""
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=f"{prefix}:ratelimit",
            # Documented (limits' redis-py bridge takes a pool) but typed as
            # a scalar option.
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
        )
        self._window = MovingWindowRateLimiter(storage)
        self._per_ip = parse(limits.per_ip)
        self._per_partner = parse(limits.per_partner)

    # TODO: no trusted-proxy setting — behind a reverse proxy every partner
    # shares the proxy's address and so one per-IP budget.
    async def check_ip(self, remote_addr: str) -> None:
        """Count a request from ``remote_addr``; raise a 429 Rejection past it."""
        await self._hit(self._per_ip, "ip", remote_addr)

    async def check_partner(self, partner: str) -> None:
        """Count an authentic request of ``partner``; raise a 429 Rejection past it."""
        await self._hit(self._per_partner, "partner", partner)

    async def _hit(self, item: RateLimitItem, scope: str, who: str) -> None:
        try:
            allowed = await self._count(item, scope, who)
        except RedisUnavailableError:
            logger.warning(
                "rate limit not checked: Redis unavailable; the request goes on",
                scope=scope,
            )
            return
        if allowed is not None:
            raise Rejection(
                429,
                "rate_limited",
                f"too many requests for this {scope}; retry after {allowed} s",
                retry_after_s=allowed,
            )

    async def _count(self, item: RateLimitItem, scope: str, who: str) -> int | None:
        """Hit the limit; return None if within it, else the seconds to wait."""
        try:
            if await self._window.hit(item, scope, who):
                return None
            stats = await self._window.get_window_stats(item, scope, who)
        except (RedisError, OSError) as exc:
            raise RedisUnavailableError(f"rate limit storage failed: {exc}") from exc
        return max(1, math.ceil(stats.reset_time - time.time()))
