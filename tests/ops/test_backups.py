"""Backups: sealed, compressed, retained, restorable only where it is safe.

Every test takes real backups with pg_dump and restores them with
pg_restore into real databases. The drill at the end destroys a database
with a running chain and daemon behind it and restores it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from ops import processes
from ops.deployments import (
    deployed_environ,
    mints_per_intent,
    seed_ready_intents,
    wait_confirmed,
)
from ops.processes import HAVEN, haven_environ

from harness import databases
from harness.anvil import AnvilNode, free_port
from haven import archives, backups, db, intents, settings
from haven.types import ChecksumAddress, Wei

WALLET = ChecksumAddress("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")


def new_keys() -> MultiFernet:
    return MultiFernet([Fernet(Fernet.generate_key())])


async def seed_intents(dsn: str, count: int, *, prefix: str = "AUR") -> None:
    """Insert ``count`` ready intents, each with its history row."""
    pool = await db.create_pool(dsn, max_size=2)
    try:
        async with db.transaction(pool) as connection:
            for index in range(count):
                await intents.create(
                    connection,
                    partner="aurora",
                    kind="booking",
                    source_key=f"{prefix}-{uuid.uuid4().hex[:8]}-{index}",
                    wallet=WALLET,
                    amount_wei=Wei(10**18 + index),
                    rule_version="ops-test",
                    status=intents.READY,
                )
    finally:
        await pool.close()


async def intent_rows(dsn: str) -> list[tuple[bytes, str, int]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT id, status, amount_wei FROM intents ORDER BY id"
        )
    finally:
        await connection.close()
    return [(bytes(r["id"]), r["status"], int(r["amount_wei"])) for r in rows]


async def database_exists(name: str) -> bool:
    connection = await asyncpg.connect(databases.ADMIN_DSN)
    try:
        found = await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", name
        )
    finally:
        await connection.close()
    return found is not None


@pytest.fixture
async def new_database_url() -> AsyncIterator[str]:
    """DSN of a database that does not exist yet; dropped afterwards if made."""
    name = f"haven_restore_{uuid.uuid4().hex[:12]}"
    yield databases.dsn_for(name)
    await databases.drop_database(name)


# --- sealing and restoring -----------------------------------------------------


async def test_a_backup_restores_every_row_into_a_new_database(
    database_url, new_database_url, tmp_path
):
    await seed_intents(database_url, 25)
    keys = new_keys()

    path = await backups.take(database_url, tmp_path, keys, keep=3)
    manifest = await backups.restore(path, new_database_url, keys)

    assert await intent_rows(new_database_url) == await intent_rows(database_url)
    assert manifest.row_counts["public.intents"] == 25
    assert manifest.migrations[-1] == sorted(manifest.migrations)[-1]
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_backup_is_encrypted_and_compressed(database_url, tmp_path):
    marker = f"MARKER{uuid.uuid4().hex}"
    await seed_intents(database_url, 400, prefix=marker)
    keys = new_keys()

    path = await backups.take(database_url, tmp_path, keys, keep=1)

    sealed = path.read_bytes()
    dump_bytes = sum(len(chunk) for chunk in archives.read_dump(path, keys))
    assert marker.encode() not in sealed
    assert WALLET.encode() not in sealed
    assert len(sealed) < dump_bytes / 2
    with pytest.raises(archives.BackupError, match="does not authenticate"):
        archives.inspect(path, new_keys())


def frames_of(sealed: bytes) -> list[bytes]:
    body, frames = sealed[len(archives.MAGIC) :], []
    while body:
        length = int.from_bytes(body[:4], "big")
        frames.append(body[: 4 + length])
        body = body[4 + length :]
    return frames


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "end frame dropped"])
async def test_a_damaged_backup_restores_nothing(
    database_url, new_database_url, tmp_path, damage
):
    await seed_intents(database_url, 5)
    keys = new_keys()
    path = await backups.take(database_url, tmp_path, keys, keep=1)
    sealed = bytearray(path.read_bytes())
    if damage == "flipped byte":
        sealed[len(sealed) // 2] ^= 0x01
    elif damage == "truncated":
        del sealed[-7:]
    else:
        sealed = bytearray(archives.MAGIC + b"".join(frames_of(bytes(sealed))[:-1]))
    path.write_bytes(bytes(sealed))

    with pytest.raises(archives.BackupError):
        await backups.restore(path, new_database_url, keys)

    assert not await database_exists(backups.database_name(new_database_url))


async def test_restore_refuses_a_live_database(database_url, tmp_path):
    await seed_intents(database_url, 3)
    keys = new_keys()
    path = await backups.take(database_url, tmp_path, keys, keep=1)
    await seed_intents(database_url, 2)
    before = await intent_rows(database_url)

    with pytest.raises(backups.RestoreRefusedError, match="is live: 5 intent"):
        await backups.restore(path, database_url, keys)

    assert await intent_rows(database_url) == before


async def test_restore_replaces_a_database_only_with_force_and_nobody_attached(
    database_url, new_database_url, tmp_path
):
    await seed_intents(database_url, 4)
    keys = new_keys()
    path = await backups.take(database_url, tmp_path, keys, keep=1)
    await backups.restore(path, new_database_url, keys)
    await seed_intents(new_database_url, 6)

    squatter = await asyncpg.connect(new_database_url)
    try:
        with pytest.raises(backups.RestoreRefusedError, match="other session"):
            await backups.restore(path, new_database_url, keys, force=True)
    finally:
        await squatter.close()
    assert len(await intent_rows(new_database_url)) == 10

    await backups.restore(path, new_database_url, keys, force=True)

    assert await intent_rows(new_database_url) == await intent_rows(database_url)


async def test_restore_refuses_a_migrated_but_empty_database_without_force(
    database_url, empty_database_url, tmp_path
):
    from haven import migrations

    keys = new_keys()
    path = await backups.take(database_url, tmp_path, keys, keep=1)
    await migrations.apply(empty_database_url)

    with pytest.raises(backups.RestoreRefusedError, match="not empty"):
        await backups.restore(path, empty_database_url, keys)


# --- consistency under load ----------------------------------------------------


async def test_a_backup_taken_under_writes_holds_exactly_its_manifest(
    database_url, new_database_url, tmp_path
):
    keys = new_keys()
    done = asyncio.Event()

    async def write_until_done() -> int:
        written = 0
        while not done.is_set():
            await seed_intents(database_url, 5)
            written += 5
        return written

    writer = asyncio.create_task(write_until_done())
    try:
        await seed_intents(database_url, 5)
        path = await backups.take(database_url, tmp_path, keys, keep=1)
    finally:
        done.set()
        written = await asyncio.wait_for(writer, 30)

    manifest = await backups.restore(path, new_database_url, keys)
    restored = manifest.row_counts["public.intents"]
    assert restored == len(await intent_rows(new_database_url))
    assert restored == manifest.row_counts["public.intent_events"]
    assert 5 <= restored <= 5 + written


# --- retention -----------------------------------------------------------------


async def test_retention_keeps_only_the_newest_backups(database_url, tmp_path):
    keys = new_keys()
    name = backups.database_name(database_url)
    stale = tmp_path / f"{name}-20000101T000000.000000Z.partial"
    stale.write_bytes(b"left by a crashed run")
    # Another database whose name starts like this one's.
    other = tmp_path / f"{name}-old-20000101T000000.000000Z{backups.SUFFIX}"
    other.write_bytes(b"another database's backup")

    taken = [await backups.take(database_url, tmp_path, keys, keep=2) for _ in range(4)]

    assert backups.backups_in(tmp_path, name) == taken[-2:]
    assert not stale.exists()
    assert other.exists()


async def test_a_second_backup_into_the_same_directory_at_once_is_refused(
    database_url, tmp_path
):
    keys = new_keys()
    running = pytest.raises(archives.BackupError, match="another backup is running")
    with backups.directory_lock(tmp_path), running:
        await backups.take(database_url, tmp_path, keys, keep=1)


# --- verification and the command line -------------------------------------------


async def scratch_databases() -> set[str]:
    connection = await asyncpg.connect(databases.ADMIN_DSN)
    try:
        rows = await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'haven_verify_%'"
        )
    finally:
        await connection.close()
    return {row["datname"] for row in rows}


def unreachable_chain_environ(database_url: str, redis_prefix: str) -> dict[str, str]:
    """Settings whose RPC URL is a free port: nothing answers there."""
    return haven_environ(
        database_url, redis_prefix, HAVEN_RPC_URL=f"http://127.0.0.1:{free_port()}"
    )


async def test_verify_restores_into_a_scratch_database_and_drops_it(
    database_url, redis_prefix, tmp_path
):
    await seed_intents(database_url, 7)
    loaded = settings.load(unreachable_chain_environ(database_url, redis_prefix))
    keys = backups.key_ring(loaded)
    path = await backups.take(database_url, tmp_path, keys, keep=1)
    before = await scratch_databases()

    result = await backups.verify(path, loaded, keys)

    assert result.problems == ()
    assert result.manifest is not None
    assert result.manifest.row_counts["public.intents"] == 7
    assert await scratch_databases() == before


async def test_verify_reports_a_damaged_backup_as_failed(
    database_url, redis_prefix, tmp_path
):
    loaded = settings.load(unreachable_chain_environ(database_url, redis_prefix))
    keys = backups.key_ring(loaded)
    path = await backups.take(database_url, tmp_path, keys, keep=1)
    path.write_bytes(path.read_bytes()[:-1])

    result = await backups.verify(path, loaded, keys)

    assert not result.is_ok
    assert result.exit_code == 1
    assert "truncated" in result.problems[0]


async def test_verify_that_cannot_reach_the_chain_says_the_books_are_unchecked(
    database_url, redis_prefix, tmp_path, capsys
):
    await seed_intents(database_url, 2)
    loaded = settings.load(unreachable_chain_environ(database_url, redis_prefix))
    directory = str(tmp_path)
    await backups.take(database_url, tmp_path, backups.key_ring(loaded), keep=1)

    code = await backups.command(
        loaded, command_line().parse_args(["backup", "verify", "--dir", directory])
    )

    out = capsys.readouterr().out
    assert code == 3
    assert "reconciliation incomplete" in out
    assert "reason         chain_unreachable" in out
    assert "verdict        UNCHECKED" in out
    assert "verdict        ok" not in out


async def test_verify_without_a_chain_configured_says_the_books_are_unchecked(
    database_url, redis_prefix, tmp_path
):
    await seed_intents(database_url, 2)
    loaded = dataclasses.replace(
        settings.load(haven_environ(database_url, redis_prefix)), rpc_url=()
    )
    keys = backups.key_ring(loaded)
    path = await backups.take(database_url, tmp_path, keys, keep=1)

    result = await backups.verify(path, loaded, keys)

    assert (result.problems, result.is_checked) == ((), False)
    assert result.exit_code == 3
    assert "HAVEN_RPC_URL" in result.reasons[0]


def test_backups_are_sealed_with_the_backup_key_and_never_the_master_key():
    backup_key = Fernet.generate_key().decode()
    environ = haven_environ("postgresql://haven@127.0.0.1/haven", "unused")
    loaded = settings.load(environ | {"HAVEN_BACKUP_KEY": backup_key})
    master = Fernet(environ["HAVEN_MASTER_KEY"].encode())

    sealed = backups.key_ring(loaded).encrypt(b"backup frame")

    assert Fernet(backup_key.encode()).decrypt(sealed) == b"backup frame"
    with pytest.raises(InvalidToken):
        master.decrypt(sealed)


def test_backups_are_sealed_with_the_master_key_without_a_backup_key():
    environ = haven_environ("postgresql://haven@127.0.0.1/haven", "unused")
    master = Fernet(environ["HAVEN_MASTER_KEY"].encode())

    sealed = backups.key_ring(settings.load(environ)).encrypt(b"backup frame")

    assert master.decrypt(sealed) == b"backup frame"


def command_line() -> argparse.ArgumentParser:
    """The CLI wiring the lead adds to haven.cli, reproduced."""
    parser = argparse.ArgumentParser(prog="haven")
    commands = parser.add_subparsers(dest="command", required=True)
    backups.add_arguments(commands.add_parser("backup"))
    backups.add_restore_arguments(commands.add_parser("restore"))
    return parser


async def test_backup_commands_create_list_verify_and_restore(
    database_url, redis_prefix, new_database_url, tmp_path, capsys
):
    await seed_intents(database_url, 3)
    parser = command_line()
    loaded = settings.load(unreachable_chain_environ(database_url, redis_prefix))
    directory = str(tmp_path)

    assert (
        await backups.command(loaded, parser.parse_args(["backup", "--dir", directory]))
        == 0
    )
    created = Path(capsys.readouterr().out.strip())
    assert created.parent == tmp_path

    assert (
        await backups.command(
            loaded, parser.parse_args(["backup", "list", "--dir", directory])
        )
        == 0
    )
    assert created.name in capsys.readouterr().out

    # No chain answers at the default RPC URL: restorable, books unchecked.
    assert (
        await backups.command(
            loaded, parser.parse_args(["backup", "verify", "--dir", directory])
        )
        == 3
    )
    assert "verdict        UNCHECKED" in capsys.readouterr().out

    target = settings.load(
        haven_environ(new_database_url, redis_prefix)
        | {"HAVEN_MASTER_KEY": loaded.master_key.reveal()[0]}
    )
    assert (
        await backups.command(target, parser.parse_args(["restore", str(created)])) == 0
    )
    assert await intent_rows(new_database_url) == await intent_rows(database_url)


# --- the drill ---------------------------------------------------------------------


async def run_daemon_until_confirmed(
    name: str,
    environ: dict[str, str],
    expected: int,
    node: AnvilNode,
    tmp_path: Path,
) -> None:
    daemon = await processes.start(name, [*HAVEN, "run"], environ, tmp_path)
    try:
        await wait_confirmed(environ["HAVEN_DATABASE_URL"], expected, node, 30)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0, daemon.log_tail()
    finally:
        await daemon.stop()


async def report_verdict(
    environ: dict[str, str], tmp_path: Path
) -> tuple[int, dict[str, Any]]:
    report = await processes.start(
        "report", [*HAVEN, "report", "--format", "json"], environ, tmp_path
    )
    assert report.process.stdout is not None
    output = await asyncio.wait_for(report.process.stdout.read(), 60)
    code = await report.wait_exit(10)
    return code, orjson.loads(output)


async def test_drill_restore_resumes_from_the_chain_and_reconciles_with_no_double_mint(
    database_url, redis_prefix, anvil, tmp_path
):
    environ = await deployed_environ(database_url, redis_prefix, anvil)
    keys = backups.key_ring(settings.load(environ))
    minted_before = await seed_ready_intents(database_url, 8, prefix="BEFORE")
    await run_daemon_until_confirmed("daemon-1", environ, 8, anvil, tmp_path)

    # Ready when the backup is taken, minted after it.
    minted_after = await seed_ready_intents(database_url, 8, prefix="AFTER")
    backup = await backups.take(database_url, tmp_path / "backups", keys, keep=2)
    # Born after the backup: lost with the database, replayed by the partner.
    born_after = await seed_ready_intents(database_url, 8, prefix="LATE")
    await run_daemon_until_confirmed("daemon-2", environ, 24, anvil, tmp_path)

    await databases.drop_database(backups.database_name(database_url))
    manifest = await backups.restore(backup, database_url, keys)
    assert manifest.row_counts["public.intents"] == 16

    await seed_ready_intents(database_url, 8, prefix="LATE")
    await run_daemon_until_confirmed("daemon-3", environ, 24, anvil, tmp_path)

    minted = await mints_per_intent(anvil, environ["HAVEN_TOKEN_ADDRESS"])
    everything = minted_before + minted_after + born_after
    assert {i: minted[i] for i in everything} == {i: 1 for i in everything}
    assert sum(minted.values()) == len(everything)
    code, report = await report_verdict(environ, tmp_path)
    assert report["verdict"] == "reconciled", report
    assert code == 0


async def chain_clock_passed(node: AnvilNode) -> bool:
    """Tell whether the wall clock has left the second of the newest block.

    A backup's reconciliation cuts the chain before the second it was taken
    in; a backup taken after this holds every block mined so far.
    """
    block = await node.rpc("eth_getBlockByNumber", ["latest", False])
    return int(time.time()) > int(block["timestamp"], 16)


async def confirmed_backup(
    environ: dict[str, str], node: AnvilNode, tmp_path: Path, name: str
) -> Path:
    """Back up the database once every block so far is in a past second."""
    await processes.wait_until(
        lambda: chain_clock_passed(node), 5, "the chain's newest second to pass"
    )
    keys = backups.key_ring(settings.load(environ))
    dsn = environ["HAVEN_DATABASE_URL"]
    return await backups.take(dsn, tmp_path / name, keys, keep=1)


async def test_verify_reconciles_a_backup_of_sound_books_and_fails_broken_ones(
    database_url, redis_prefix, anvil, tmp_path, capsys
):
    environ = await deployed_environ(database_url, redis_prefix, anvil)
    loaded = settings.load(environ)
    keys = backups.key_ring(loaded)
    minted = await seed_ready_intents(database_url, 4, prefix="VERIFY")
    await run_daemon_until_confirmed("daemon", environ, 4, anvil, tmp_path)

    sound = await confirmed_backup(environ, anvil, tmp_path, "sound")
    # The database now claims more than the chain paid for one intent.
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "UPDATE intents SET amount_wei = amount_wei + 1 WHERE id = $1", minted[0]
        )
    finally:
        await connection.close()
    broken = await confirmed_backup(environ, anvil, tmp_path, "broken")

    good = await backups.verify(sound, loaded, keys)
    bad = await backups.verify(broken, loaded, keys)
    code = await backups.command(
        loaded, command_line().parse_args(["backup", "verify", str(broken)])
    )

    assert (good.reconciliation, good.problems, good.exit_code) == (
        "reconciled",
        (),
        0,
    )
    assert bad.reconciliation == "breaks"
    assert "do not reconcile" in bad.problems[0]
    assert (bad.is_ok, bad.exit_code, code) == (False, 1, 1)
    assert "verdict        FAILED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["backup", "verify", "{missing}"], "No such file or directory"),
        (["backup", "verify", "{dir}"], "Is a directory"),
        (["restore", "{dir}"], "Is a directory"),
        (["backup", "--dir", "{file}"], "{file}"),
    ],
    ids=[
        "verify a missing file",
        "verify a directory",
        "restore a directory",
        "back up into a file",
    ],
)
def test_an_unusable_path_is_a_one_line_error_with_exit_2(
    database_url, redis_prefix, tmp_path, args, said
):
    paths = {
        "missing": str(tmp_path / "missing.backup"),
        "dir": str(tmp_path),
        "file": str(tmp_path / "a-file"),
    }
    (tmp_path / "a-file").write_text("not a directory")
    finished = subprocess.run(
        [*HAVEN, *(a.format(**paths) for a in args)],
        env=os.environ | haven_environ(database_url, redis_prefix),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 2, finished.stderr
    assert said.format(**paths) in finished.stderr
    assert "Traceback" not in finished.stderr
