"""Fixtures of the operations tests: settings for real `haven` processes."""

from __future__ import annotations

import pytest
from ops.processes import haven_environ


@pytest.fixture
def environ(database_url: str, redis_prefix: str) -> dict[str, str]:
    """HAVEN_* settings on this test's migrated database and Redis prefix."""
    return haven_environ(database_url, redis_prefix)
