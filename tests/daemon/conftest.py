"""Fixtures of the daemon's tests: a minting rig on a fresh anvil and database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from harness import minting
from harness.anvil import AnvilNode
from harness.minting import Rig


@pytest.fixture
async def rig(database_url: str, anvil: AnvilNode) -> AsyncIterator[Rig]:
    """HNV deployed, one funded custody signer holding MINTER_ROLE."""
    async with minting.rig(database_url, anvil) as built:
        yield built
