"""Rate limits of the listener, kept in Redis so every listener shares them.

Three moving-window limits apply. On the webhooks: one per client IP,
counted before anything else so floods are cheap to refuse, and one per
partner, counted only for requests whose signature holds, so nobody can
exhaust a partner's budget by posting forgeries to its path. On the admin
API: one per client IP counting only *refused* keys, which bounds key
guessing and the audit rows a flood of bad keys writes, while a caller with
a valid key is never slowed. Keys live under ``<redis_prefix>:ratelimit``.

The client IP is the TCP peer, unless the peer is a trusted proxy
(``HAVEN_TRUSTED_PROXIES``): then ``X-Forwarded-For`` is read from the right,
each hop believed only while the address that reported it is trusted, and
the first untrusted address is the client. Entries left of it are written
by the client itself and prove nothing.

Concurrent hits of one key are counted together: while Redis is asked
about a key, the hits that arrive for it wait and go in the next call as
one hit of their number, so a flood costs a call per round trip, not per
request.

Redis is an optimisation here, not a source of truth: when it cannot be
reached, requests are let through. After a failure the limits are not
asked for ``redis_retry_s`` (5 s): a Redis that hangs rather than refuses
costs one request in that time its socket timeout, not every request. One
warning is logged when Redis goes away and one line when it answers
again, not one per request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from loguru import logger
from redis.exceptions import RedisError

from haven.errors import RedisUnavailableError
from haven.listeners.answers import Rejection
from haven.settings import Settings

# After Redis fails, how long requests skip the limits before it is asked again.
REDIS_RETRY_S = 5.0

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RateLimits:
    """Limits in the ``limits`` notation, e.g. ``600/minute``."""

    per_partner: str = "1200/minute"
    per_ip: str = "600/minute"
    # CIDR networks whose X-Forwarded-For is believed; empty: none is.
    trusted_proxies: tuple[str, ...] = ()
    # Requests with a missing or wrong admin key, per client IP.
    admin_refusals: str = "30/minute"

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        """Return the limits and trusted proxies of ``settings``."""
        return cls(
            per_partner=settings.webhook_rate_limit_partner,
            per_ip=settings.webhook_rate_limit_ip,
            trusted_proxies=settings.trusted_proxies,
        )


def client_address(
    peer: str, forwarded_for: str | None, trusted: Iterable[IpNetwork]
) -> str:
    """Return the address to count a request against: the right-most untrusted.

    ``peer`` is the TCP peer; ``forwarded_for`` the X-Forwarded-For value,
    believed hop by hop only while the address that wrote it is trusted. A
    hop that is not an IP address stops the walk at the proxy that wrote it.
    """
    networks = tuple(trusted)
    client = peer
    hops = (forwarded_for or "").split(",")
    for hop in reversed(hops):
        if not _is_trusted(client, networks):
            break
        address = _parse_ip(hop)
        if address is None:
            break
        client = str(address)
    return client


def _is_trusted(address: str, networks: tuple[IpNetwork, ...]) -> bool:
    parsed = _parse_ip(address)
    return parsed is not None and any(parsed in network for network in networks)


def _parse_ip(text: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class Limiter:
    """Counts requests against the per-IP and per-partner limits."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        limits: RateLimits,
        redis_retry_s: float = REDIS_RETRY_S,
    ) -> None:
        """Share ``redis``'s pool; raise ValueError on a bad limit or network."""
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
        self._admin_refusals = parse(limits.admin_refusals)
        self._trusted = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in limits.trusted_proxies
        )
        self._is_redis_lost = False
        # Hits waiting to be counted, by (scope, who), and the tasks counting them.
        self._tallies: dict[tuple[str, str], list[asyncio.Future[int | None]]] = {}
        self._counting: set[asyncio.Task[None]] = set()
        self._redis_retry_s = redis_retry_s
        self._skip_until = 0.0

    async def check_ip(
        self, remote_addr: str, *, forwarded_for: str | None = None
    ) -> None:
        """Count a request from ``remote_addr``; raise a 429 Rejection past it.

        ``forwarded_for`` (the X-Forwarded-For header) names the client only
        when ``remote_addr`` is a trusted proxy; see :func:`client_address`.
        """
        client = client_address(remote_addr, forwarded_for, self._trusted)
        await self._hit(self._per_ip, "ip", client, "requests for this ip")

    async def check_partner(self, partner: str) -> None:
        """Count an authentic request of ``partner``; raise a 429 Rejection past it."""
        await self._hit(
            self._per_partner, "partner", partner, "requests for this partner"
        )

    async def check_admin_refusal(
        self, remote_addr: str, *, forwarded_for: str | None = None
    ) -> None:
        """Count a refused admin key from a client; raise a 429 Rejection past it.

        The client is found as in :meth:`check_ip`.
        """
        client = client_address(remote_addr, forwarded_for, self._trusted)
        await self._hit(
            self._admin_refusals,
            "admin_refusal",
            client,
            "refused admin keys from this ip",
        )

    async def _hit(
        self, item: RateLimitItem, scope: str, who: str, counted: str
    ) -> None:
        if self._is_redis_lost and time.monotonic() < self._skip_until:
            return
        try:
            allowed = await self._count(item, scope, who)
        except RedisUnavailableError:
            self._lost_redis()
            return
        self._found_redis()
        if allowed is not None:
            raise Rejection(
                429,
                "rate_limited",
                f"too many {counted}; retry after {allowed} s",
                retry_after_s=allowed,
            )

    def _lost_redis(self) -> None:
        self._skip_until = time.monotonic() + self._redis_retry_s
        # Every request fails the same way during an outage: say it once.
        if self._is_redis_lost:
            return
        self._is_redis_lost = True
        logger.warning(
            "rate limits not counted: Redis unavailable; requests go on "
            "unlimited until it answers again"
        )

    def _found_redis(self) -> None:
        if not self._is_redis_lost:
            return
        self._is_redis_lost = False
        logger.info("rate limits counted again: Redis answers")

    async def _count(self, item: RateLimitItem, scope: str, who: str) -> int | None:
        """Hit the limit; return None if within it, else the seconds to wait.

        Hits of one key that arrive while its count is being asked of Redis
        wait and are counted together, in one call, when it answers.
        """
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        tally = self._tallies.get((scope, who))
        if tally is None:
            tally = self._tallies[(scope, who)] = []
            task = asyncio.create_task(self._count_tally(item, scope, who, tally))
            self._counting.add(task)
            task.add_done_callback(self._counting.discard)
        tally.append(future)
        return await future

    async def _count_tally(
        self,
        item: RateLimitItem,
        scope: str,
        who: str,
        tally: list[asyncio.Future[int | None]],
    ) -> None:
        try:
            while tally:
                futures = tally[:]
                del tally[:]
                try:
                    waits = await self._count_many(item, scope, who, len(futures))
                except RedisUnavailableError as exc:
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for future, wait in zip(futures, waits, strict=True):
                    if not future.done():
                        future.set_result(wait)
        finally:
            del self._tallies[(scope, who)]

    async def _count_many(
        self, item: RateLimitItem, scope: str, who: str, hits: int
    ) -> list[int | None]:
        """Count ``hits`` hits at once; return for each None (within the
        limit) or the seconds to wait.

        Near the limit, the room left is taken by the first hits and the
        rest refused; a concurrent counter taking that room meanwhile
        leaves them all refused, never more admitted than the limit.
        """
        try:
            if await self._window.hit(item, scope, who, cost=hits):
                return [None] * hits
            stats = await self._window.get_window_stats(item, scope, who)
            admitted = 0
            if 0 < stats.remaining < hits and await self._window.hit(
                item, scope, who, cost=stats.remaining
            ):
                admitted = stats.remaining
        except (RedisError, OSError) as exc:
            raise RedisUnavailableError(f"rate limit storage failed: {exc}") from exc
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        return [None] * admitted + [wait] * (hits - admitted)
