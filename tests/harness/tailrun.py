"""A tailer process for tests that kill it: ``python -m harness.tailrun``.

Configured by the JSON in ``HAVENTEST_TAILER`` (written by
``tailkit.spawn_tailer``); stops cleanly on SIGTERM. Imports as little as
it can, since tests start it many times.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

from haven import db, settings
from haven.chain import ChainClient
from haven.daemon.tailer import Tailer, TailerOptions


async def main() -> None:
    spec = json.loads(os.environ["HAVENTEST_TAILER"])
    options = TailerOptions(**spec.pop("options"))
    config = settings.load(
        {},
        overrides={**spec, "chain_id": 31337},
        require=("database_url", "rpc_url", "chain_id"),
    )
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    pool = await db.create_pool(config.database_url.reveal(), max_size=4)
    chain = ChainClient(config.rpc_url, chain_id=config.chain_id)
    try:
        await Tailer(config, pool, chain, options=options).run(stopping)
    finally:
        await chain.close()
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
