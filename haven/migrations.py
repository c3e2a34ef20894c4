"""Schema migrations: plain SQL files in ``sql/`` applied in name order.

Each file runs in its own transaction and is recorded with its SHA-256 in
``schema_migrations``. A PostgreSQL advisory lock serialises concurrent
``haven migrate`` runs. A file edited after it was applied is an error that
names it; the schema is never silently re-applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from loguru import logger

from haven import db
from haven.errors import (
    DatabaseUnavailableError,
    MigrationError,
    SchemaOutdatedError,
)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# Arbitrary but fixed: the advisory lock key of the migrator ("HAVENMIG").
LOCK_KEY = 0x484156454E4D4947
CONNECT_TIMEOUT_S = 10.0

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path
    checksum: str

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(directory: Path = SQL_DIR) -> list[Migration]:
    """Return the migrations in ``directory``, ordered by file name."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found.append(Migration(version=path.stem, path=path, checksum=digest))
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return found


async def _applied(connection: asyncpg.Connection) -> dict[str, str]:
    rows = await connection.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


def _check_edits(migrations: list[Migration], applied: dict[str, str]) -> None:
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"{migration.path.name} was edited after it was applied "
                f"(recorded sha256 {recorded[:12]}, file {migration.checksum[:12]}); "
                "add a new migration instead"
            )


async def apply(dsn: str, directory: Path = SQL_DIR) -> list[str]:
    """Apply every pending migration; return the versions applied.

    Idempotent and safe to run from several processes at once.
    """
    migrations = discover(directory)
    connection = await _connect(dsn)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await connection.execute(_CREATE_TABLE)
            applied = await _applied(connection)
            _check_edits(migrations, applied)
            done = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                async with _naming(migration), connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, checksum) "
                        "VALUES ($1, $2)",
                        migration.version,
                        migration.checksum,
                    )
                logger.info("migration applied", version=migration.version)
                done.append(migration.version)
            return done
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await connection.close()


async def _connect(dsn: str) -> asyncpg.Connection:
    """Connect; a refused login or a missing database is unavailable too."""
    try:
        async with db.translate_errors():
            return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except asyncpg.PostgresError as exc:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc


@asynccontextmanager
async def _naming(migration: Migration) -> AsyncIterator[None]:
    """Turn an SQL error of ``migration`` into a MigrationError naming its file."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"{migration.path.name} failed and was rolled back: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


async def ensure_current(pool: asyncpg.Pool, directory: Path = SQL_DIR) -> None:
    """Raise SchemaOutdatedError unless every migration of the code is applied."""
    migrations = discover(directory)
    async with pool.acquire() as connection:
        exists = await connection.fetchval(
            "SELECT to_regclass('schema_migrations') IS NOT NULL"
        )
        applied = await _applied(connection) if exists else {}
    _check_edits(migrations, applied)
    missing = [m.version for m in migrations if m.version not in applied]
    if missing:
        raise SchemaOutdatedError(
            f"database schema is older than the code (missing {', '.join(missing)}); "
            "run `haven migrate` first"
        )
