"""The client side of the ingest benchmark: ``python -m benches.ingest_client``.

Runs in its own process so its CPU is not the server's. Builds and signs
every request before the clock starts (a partner's signing is not the
listener's cost), sends a warm-up, then sends ``count`` requests through
``concurrency`` connections and answers the elapsed time, the status codes
and the latency percentiles in milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from benches import services

WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Request:
    """One signed webhook, ready to send."""

    body: bytes
    headers: dict[str, str]


def signed_requests(secret: str, tag: str, count: int) -> list[Request]:
    """Build ``count`` signed ``booking.completed`` webhooks with distinct bookings."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sent_s = str(int(time.time()))
    built = []
    for number in range(count):
        booking_id = f"{tag}-{number:07d}"
        body = json.dumps(
            {
                "type": "booking.completed",
                "timestamp": "2026-12-01T10:00:00Z",
                "data": {
                    "booking_id": booking_id,
                    "guest_id": "G-5521",
                    "wallet": WALLET,
                    "total_paid_cents": 45000,
                    "currency": "CAD",
                    "nights": 3,
                },
            }
        ).encode()
        delivery_id = f"msg_{booking_id}"
        message = f"{delivery_id}.{sent_s}.".encode() + body
        digest = hmac.digest(key, message, hashlib.sha256)
        headers = {
            "webhook-id": delivery_id,
            "webhook-timestamp": sent_s,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
            "Content-Type": "application/json",
        }
        built.append(Request(body, headers))
    return built


async def _send_all(
    session: aiohttp.ClientSession, url: str, requests: list[Request], concurrency: int
) -> tuple[float, Counter[int], list[float]]:
    statuses: Counter[int] = Counter()
    latencies_ms: list[float] = []
    queue: Iterator[Request] = iter(requests)

    async def worker() -> None:
        for request in queue:
            started = time.perf_counter()
            async with session.post(
                url, data=request.body, headers=request.headers
            ) as response:
                await response.read()
            latencies_ms.append((time.perf_counter() - started) * 1000)
            statuses[response.status] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, statuses, latencies_ms


async def run(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Send the warm-up, then the timed requests; return what was measured."""
    concurrency = int(spec["concurrency"])
    warmup = signed_requests(spec["secret"], f"{spec['tag']}w", int(spec["warmup"]))
    timed = signed_requests(spec["secret"], spec["tag"], int(spec["count"]))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _send_all(session, spec["url"], warmup, concurrency)
        elapsed_s, statuses, latencies_ms = await _send_all(
            session, spec["url"], timed, concurrency
        )
    latencies_ms.sort()
    return {
        "elapsed_s": elapsed_s,
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "p50_ms": services.percentile(latencies_ms, 0.50),
        "p90_ms": services.percentile(latencies_ms, 0.90),
        "p99_ms": services.percentile(latencies_ms, 0.99),
        "max_ms": latencies_ms[-1] if latencies_ms else 0.0,
    }


if __name__ == "__main__":
    services.answer(asyncio.run(run(services.read_spec())))
