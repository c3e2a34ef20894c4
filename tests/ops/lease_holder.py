"""A stand-alone lease holder: one daemon's lease part, run as a real process.

Usage: ``python lease_holder.py DSN POLL_MS TTL_MS NAME[,NAME...]``. Prints one
JSON line per change of the held set, starting with the empty set, and exits
cleanly on SIGTERM. The scale-out tests SIGKILL and SIGSTOP it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson

from haven.daemon.leases import Leases


def report(held: frozenset[str]) -> None:
    line = orjson.dumps({"held": sorted(held)}).decode()
    print(line, flush=True)


async def main(dsn: str, poll_ms: int, ttl_ms: int, names: list[str]) -> None:
    async def wanted() -> list[str]:
        return names

    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    leases = Leases(dsn, wanted, poll_ms=poll_ms, ttl_ms=ttl_ms)
    runner = asyncio.create_task(leases.run(stopping))
    held: frozenset[str] = frozenset()
    report(held)
    while not runner.done():
        changed = asyncio.create_task(leases.wait_changed(held))
        await asyncio.wait([changed, runner], return_when=asyncio.FIRST_COMPLETED)
        if changed.done():
            held = changed.result()
            report(held)
        else:
            changed.cancel()
    await runner


if __name__ == "__main__":
    dsn, poll, ttl, names = sys.argv[1:5]
    asyncio.run(main(dsn, int(poll), int(ttl), names.split(",")))
