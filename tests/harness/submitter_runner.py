"""Run the daemon with only its submitter, as a subprocess the crash matrix kills.

Settings come from the ``HAVEN_*`` environment like ``haven run``;
``HAVENTEST_CRASH_AT`` (read by the Submitter) arms a crash point. Run as
``python tests/harness/submitter_runner.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from haven import db, logs, settings
from haven.chain import ChainClient
from haven.daemon import service
from haven.daemon.service import Component
from haven.daemon.submitter import Submitter


async def _components(
    loaded: settings.Settings, pool: db.Pool, chain: ChainClient
) -> list[Component]:
    return [Submitter(loaded, pool, chain)]


def main() -> int:
    loaded = settings.load(os.environ)
    logs.configure(loaded, process="submitter")
    asyncio.run(service.run(loaded, components=_components, grace_s=5.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
