"""scripts/services.sh and `make demo`: stop exactly the servers they started.

Every server here runs on a free port of the test's own, with its state
under a directory of the test's own; the shared PostgreSQL and Redis on
5432 and 6379 are never pointed at, so a wrong stop cannot reach them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from ops.redis_server import RedisServer, running_redis

from harness.anvil import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/services.sh"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        shutil.which("redis-server") is None
        or not any(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        reason="needs redis-server and PostgreSQL's server binaries",
    ),
]


@dataclass(frozen=True)
class Services:
    """One use of services.sh: its ports and its state directory."""

    pg_port: int
    redis_port: int
    var_dir: Path

    def environ(self) -> dict[str, str]:
        return os.environ | {
            "SERVICES_PG_PORT": str(self.pg_port),
            "SERVICES_REDIS_PORT": str(self.redis_port),
            "SERVICES_VAR": str(self.var_dir),
        }

    def run(self, action: str) -> str:
        done = subprocess.run(
            [str(SCRIPT), action],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def recorded(self) -> list[str]:
        state = self.var_dir / "services.state"
        if not state.exists():
            return []
        return [line.split()[0] for line in state.read_text().splitlines()]


@pytest.fixture
def var_dirs() -> Iterator[list[Path]]:
    """Make state directories the postgres user can enter; stop what they hold."""
    made: list[Path] = []
    yield made
    for directory in made:
        # Clean-up after a failure: stop whatever a directory still records.
        subprocess.run(
            [str(SCRIPT), "stop"],
            env=os.environ | {"SERVICES_VAR": str(directory)},
            capture_output=True,
            timeout=90,
            check=False,
        )
        shutil.rmtree(directory, ignore_errors=True)


def new_var_dir(made: list[Path]) -> Path:
    # Not under pytest's tmp_path: that is private to root, and the
    # throwaway PostgreSQL runs as the postgres user.
    directory = Path(tempfile.mkdtemp(prefix="haven-services-"))
    directory.chmod(0o755)
    made.append(directory)
    return directory


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A Redis already running before services.sh looks: it must survive."""
    directory = Path(tempfile.mkdtemp(prefix="haven-redis-"))
    try:
        async with running_redis(directory) as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def postgres_answers(port: int) -> bool:
    try:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", timeout=5
        )
    except OSError:
        return False
    try:
        return await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()


async def redis_answers(port: int) -> bool:
    return await RedisServer(port, Path()).ping()


async def test_stop_stops_exactly_the_servers_start_started(
    var_dirs: list[Path], own_redis: RedisServer
):
    pg_port, redis_port = free_port(), free_port()
    first = Services(pg_port, own_redis.port, new_var_dir(var_dirs))
    # The second finds the first one's PostgreSQL already running.
    second = Services(pg_port, redis_port, new_var_dir(var_dirs))

    first.run("start")
    second.run("start")

    assert first.recorded() == ["postgres-throwaway"]
    assert second.recorded() == ["redis"]
    assert await postgres_answers(pg_port)
    assert await redis_answers(redis_port)

    second.run("stop")

    assert not await redis_answers(redis_port)
    assert await postgres_answers(pg_port)
    assert await redis_answers(own_redis.port)

    first.run("stop")

    assert not await postgres_answers(pg_port)
    assert await redis_answers(own_redis.port)
    assert "nothing to stop" in first.run("stop")


FAKE_HAVEN = """#!/bin/sh
# Stands in for `haven demo`: notes what answered, exits as told.
redis-cli -p "$SERVICES_REDIS_PORT" ping >"$SERVICES_VAR/seen-by-demo"
exit "$HAVENTEST_DEMO_EXIT"
"""


def make_demo(
    bin_dir: Path, services: Services, demo_exit: int
) -> subprocess.CompletedProcess[str]:
    """Run `make demo` with ``bin_dir``'s haven and the toolchain taken as built."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            ".venv/.installed",
            "-o",
            "node_modules/.installed",
            "demo",
            f"BIN={bin_dir}",
        ],
        cwd=ROOT,
        env={
            k: v
            for k, v in services.environ().items()
            # Run under `make test`, the outer make's flags would leak in.
            if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
        }
        | {"HAVENTEST_DEMO_EXIT": str(demo_exit)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("demo_exit", [0, 3])
async def test_make_demo_stops_what_it_started_and_keeps_the_demos_exit_code(
    var_dirs: list[Path], tmp_path: Path, demo_exit: int
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "haven").write_text(FAKE_HAVEN)
    (bin_dir / "haven").chmod(0o755)
    services = Services(free_port(), free_port(), new_var_dir(var_dirs))

    done = make_demo(bin_dir, services, demo_exit)

    output = done.stdout + done.stderr
    assert (services.var_dir / "seen-by-demo").read_text().strip() == "PONG"
    assert not await redis_answers(services.redis_port), output
    assert not await postgres_answers(services.pg_port), output
    assert services.recorded() == []
    if demo_exit == 0:
        assert done.returncode == 0, output
    else:
        assert done.returncode != 0
        assert f"Error {demo_exit}" in output
