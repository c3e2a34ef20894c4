"""Fixtures of the daemon's tests: a minting rig, or HNV and a pool, on a fresh
anvil and database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from harness import minting
from harness.anvil import AnvilNode
from harness.minting import Rig
from harness.tailkit import Hnv, deploy_hnv
from haven import db


@pytest.fixture
async def rig(database_url: str, anvil: AnvilNode) -> AsyncIterator[Rig]:
    """HNV deployed, one funded custody signer holding MINTER_ROLE."""
    async with minting.rig(database_url, anvil) as built:
        yield built


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    """A pool on the test's database; tests needing another size define their own."""
    created = await db.create_pool(database_url, max_size=6)
    yield created
    await created.close()


@pytest.fixture
async def hnv(anvil: AnvilNode) -> Hnv:
    """HNV deployed on the test's anvil, with no signer of ours."""
    return await deploy_hnv(anvil)
