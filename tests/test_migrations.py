from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from harness.anvil import free_port
from haven import db, migrations
from haven.errors import MigrationError, SchemaOutdatedError


async def test_migrate_applies_every_file_once_and_records_checksums(
    empty_database_url,
):
    first = await migrations.apply(empty_database_url)
    second = await migrations.apply(empty_database_url)

    assert first == [m.version for m in migrations.discover()]
    assert second == []
    connection = await asyncpg.connect(empty_database_url)
    try:
        rows = await connection.fetch("SELECT version, checksum FROM schema_migrations")
    finally:
        await connection.close()
    assert {r["version"]: r["checksum"] for r in rows} == {
        m.version: m.checksum for m in migrations.discover()
    }


async def test_concurrent_migrations_apply_each_file_exactly_once(empty_database_url):
    results = await asyncio.gather(
        *(migrations.apply(empty_database_url) for _ in range(4))
    )

    applied = [version for result in results for version in result]
    assert sorted(applied) == sorted(m.version for m in migrations.discover())


async def test_an_edited_applied_migration_is_an_error_naming_the_file(
    empty_database_url, tmp_path: Path
):
    sql_dir = tmp_path / "sql"
    shutil.copytree(migrations.SQL_DIR, sql_dir)
    await migrations.apply(empty_database_url, sql_dir)
    first = sorted(sql_dir.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")

    with pytest.raises(MigrationError, match=first.name):
        await migrations.apply(empty_database_url, sql_dir)


async def test_a_failing_migration_leaves_nothing_half_applied(
    empty_database_url, tmp_path: Path
):
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (sql_dir / "0002_bad.sql").write_text("CREATE TABLE b (x int); SELECT nope;")

    with pytest.raises(MigrationError, match=r"0002_bad\.sql failed.*nope"):
        await migrations.apply(empty_database_url, sql_dir)

    connection = await asyncpg.connect(empty_database_url)
    try:
        versions = await connection.fetch("SELECT version FROM schema_migrations")
        has_b = await connection.fetchval("SELECT to_regclass('b') IS NOT NULL")
    finally:
        await connection.close()
    assert [r["version"] for r in versions] == ["0001_ok"]
    assert has_b is False


async def test_start_up_refuses_a_schema_older_than_the_code(empty_database_url):
    pool = await db.create_pool(empty_database_url)
    try:
        with pytest.raises(SchemaOutdatedError, match="haven migrate"):
            await migrations.ensure_current(pool)
        await migrations.apply(empty_database_url)
        await migrations.ensure_current(pool)
    finally:
        await pool.close()


def run_migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")}
    return subprocess.run(
        [sys.executable, "-m", "haven.cli", "migrate"],
        env=environ | {"HAVEN_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("postgresql://postgres@127.0.0.1:{port}/haven", "PostgreSQL"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_{port}", "does not exist"),
    ],
    ids=["nothing listening", "no such database"],
)
def test_migrate_without_a_database_says_so_and_exits_3(where: str, said: str):
    finished = run_migrate(where.format(port=free_port()))

    assert finished.returncode == 3, finished.stderr
    assert said in finished.stderr
    assert "Traceback" not in finished.stderr


def test_migrate_prints_what_it_applied_then_nothing(empty_database_url: str):
    first = run_migrate(empty_database_url)
    second = run_migrate(empty_database_url)

    assert first.returncode == 0, first.stderr
    assert f"applied {len(migrations.discover())} migration(s)" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "applied 0 migration(s)" in second.stdout
