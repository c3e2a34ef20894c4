"""The command line against a database it cannot use: one line, a precise exit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from ops.processes import HAVEN, haven_environ

from harness.anvil import DEV_KEYS, AnvilNode
from harness.databases import dsn_for

pytestmark = pytest.mark.timeout(120)

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
SOME_TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


async def haven(environ: dict[str, str], *argv: str) -> tuple[int, str]:
    """Run ``haven argv`` with only ``environ`` for settings; return code, stderr."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")}
    process = await asyncio.create_subprocess_exec(
        *HAVEN,
        *argv,
        env=inherited | environ,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.parametrize(
    ("dsn", "said"),
    [
        (dsn_for("haven_no_such_database"), 'database "haven_no_such_database"'),
        (
            "postgresql://haven_no_such_role@127.0.0.1:5432/postgres",
            'role "haven_no_such_role"',
        ),
    ],
    ids=["no-database", "no-role"],
)
@pytest.mark.parametrize("argv", [("wallet", "list"), ("report",)])
async def test_a_database_that_refuses_the_login_is_unavailable_not_a_traceback(
    redis_prefix: str, dsn: str, said: str, argv: tuple[str, ...]
):
    environ = haven_environ(dsn, redis_prefix, HAVEN_TOKEN_ADDRESS=SOME_TOKEN)

    code, err = await haven(environ, *argv)

    assert code == EXIT_UNAVAILABLE
    assert said in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv", [("wallet", "list"), ("wallet", "create"), ("deploy",)]
)
async def test_an_unmigrated_database_asks_for_haven_migrate(
    empty_database_url: str, redis_prefix: str, argv: tuple[str, ...]
):
    environ = haven_environ(
        empty_database_url, redis_prefix, HAVEN_DEPLOYER_KEY=DEV_KEYS[0]
    )

    code, err = await haven(environ, *argv)

    assert code == EXIT_CONFIG
    assert "run `haven migrate` first" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["deploy", "--signers", "0"], "--signers: expected a whole number from 1"),
        (["deploy", "--signers", "1000000"], "from 1 to 32"),
        (["backup", "--keep", "0", "--dir"], "--keep: expected a whole number of"),
    ],
    ids=["no-signers", "a-million-signers", "keep-none"],
)
async def test_a_count_out_of_range_is_refused_before_anything_is_done(
    database_url: str, redis_prefix: str, tmp_path: Path, argv: list[str], said: str
):
    environ = haven_environ(database_url, redis_prefix, HAVEN_DEPLOYER_KEY=DEV_KEYS[0])
    if argv[-1] == "--dir":
        argv = [*argv, str(tmp_path)]

    code, err = await haven(environ, *argv)

    assert code == EXIT_CONFIG
    assert said in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [("report",), ("run",)])
async def test_a_node_of_another_chain_is_a_settings_error_not_an_outage(
    database_url: str, redis_prefix: str, anvil: AnvilNode, argv: tuple[str, ...]
):
    environ = haven_environ(
        database_url,
        redis_prefix,
        HAVEN_RPC_URL=anvil.url,
        HAVEN_CHAIN_ID="1",
        HAVEN_TOKEN_ADDRESS=SOME_TOKEN,
    )

    code, err = await haven(environ, *argv)

    # The units do not restart on 2: a restart would meet the same node.
    assert code == EXIT_CONFIG
    assert f"serves chain id {anvil.chain_id}, expected HAVEN_CHAIN_ID=1" in err
    assert "Traceback" not in err
