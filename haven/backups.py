"""Backups: encrypted, compressed, verifiable copies of the database.

``haven backup`` streams ``pg_dump --format=custom`` through gzip into a
sealed archive (:mod:`haven.archives`) and keeps the newest N;
``haven restore`` refuses to write over a database that holds anything
unless told to; ``haven backup verify`` restores into a scratch database and
checks it against what the archive says it holds.

The invariant: a restore writes only bytes that authenticated, in order, in
one transaction, from a file whose every frame authenticated beforehand; and
a backup appears under its final name only once it is complete and on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from cryptography.fernet import Fernet, MultiFernet
from loguru import logger

from haven import archives, db, migrations
from haven.archives import BackupError, Manifest, inspect
from haven.chain import ChainClient
from haven.errors import SchemaOutdatedError
from haven.reconciler import reports, runs
from haven.settings import Settings, mask_dsn

SUFFIX = ".havenbk"
DEFAULT_DIR = Path("var/backups")
DEFAULT_KEEP = 14
MAINTENANCE_DB = "postgres"
_TOOL_TIMEOUT_S = 6 * 3600


class RestoreRefusedError(BackupError):
    """The restore target holds data or has users: nothing was written."""


# --- keys ----------------------------------------------------------------------


def key_ring(settings: Settings) -> MultiFernet:
    """Return the keys backups are sealed with: the first seals, all open.

    ``HAVEN_BACKUP_KEY`` when set, else the master key — under which whoever
    holds a backup and the master key also holds the signer keys.
    """
    configured = settings.backup_key or settings.master_key
    return MultiFernet([Fernet(key.encode()) for key in configured.reveal()])


# --- PostgreSQL tools ------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} not found on PATH; install the PostgreSQL client tools "
            "of the server's major version (postgresql-client-15)"
        )
    return found


def _libpq_target(dsn: str) -> tuple[str, dict[str, str]]:
    # Keep the password off the command line, where `ps` would show it.
    parts = urlsplit(dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if parts.password is not None:
        env["PGPASSWORD"] = parts.password
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        parts = parts._replace(netloc=f"{user}{host}")
    return urlunsplit(parts), env


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def database_name(dsn: str) -> str:
    """Return the database name a DSN points at; raise BackupError if unusable."""
    name = urlsplit(dsn).path.lstrip("/")
    if not name or '"' in name or name == MAINTENANCE_DB:
        raise BackupError(
            f"{mask_dsn(dsn)} must name an application database "
            f"(not {MAINTENANCE_DB!r}, no double quotes)"
        )
    return name


async def _finish(process: asyncio.subprocess.Process, what: str) -> None:
    assert process.stderr is not None
    errors = await process.stderr.read()
    code = await process.wait()
    if code != 0:
        detail = errors.decode(errors="replace").strip().splitlines()[-5:]
        raise BackupError(f"{what} failed with exit code {code}: {' | '.join(detail)}")


# --- taking a backup -----------------------------------------------------------


_USER_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname) AS name
  FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg_toast%'
 ORDER BY 1
"""


async def _row_counts(connection: asyncpg.Connection) -> dict[str, int]:
    counts = {}
    for row in await connection.fetch(_USER_TABLES):
        counts[row["name"]] = await connection.fetchval(
            f"SELECT count(*) FROM {row['name']}"
        )
    return counts


async def _describe(connection: asyncpg.Connection, dsn: str) -> Manifest:
    migrations: list[str] = []
    if await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        rows = await connection.fetch(
            "SELECT version FROM schema_migrations ORDER BY version"
        )
        migrations = [row["version"] for row in rows]
    return Manifest(
        # The database's clock just after the snapshot: what `verify` asks
        # the reconciler to judge the books as of.
        created_at=(await connection.fetchval("SELECT clock_timestamp()")).isoformat(),
        database=database_name(dsn),
        server_version=await connection.fetchval("SHOW server_version"),
        migrations=tuple(migrations),
        row_counts=await _row_counts(connection),
    )


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (directory / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(
                f"another backup is running in {directory} (its .lock is held)"
            ) from None
        yield


def _name(database: str, at: datetime) -> str:
    return f"{database}-{at.strftime('%Y%m%dT%H%M%S.%fZ')}{SUFFIX}"


async def take(dsn: str, directory: Path, keys: MultiFernet, *, keep: int) -> Path:
    """Write a new backup of ``dsn`` into ``directory``; keep the ``keep`` newest.

    The dump and the manifest read one exported snapshot, so the row counts
    are exactly what the dump holds. Safe to run while the services run; not
    safe to run twice at once on one directory (the second refuses).
    """
    with directory_lock(directory):
        final = directory / _name(database_name(dsn), datetime.now(UTC))
        partial = final.with_suffix(".partial")
        try:
            manifest = await _dump_to(partial, dsn, keys)
            _publish(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        removed = prune(directory, database_name(dsn), keep=keep)
    logger.info(
        "backup taken",
        path=str(final),
        size_bytes=final.stat().st_size,
        tables=len(manifest.row_counts),
        pruned=len(removed),
    )
    return final


async def _dump_to(path: Path, dsn: str, keys: MultiFernet) -> Manifest:
    connection = await _connect(dsn)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await connection.fetchval("SELECT pg_export_snapshot()")
            manifest = await _describe(connection, dsn)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                sealer = archives.Sealer(out, keys)
                sealer.manifest(manifest)
                await _pg_dump(dsn, snapshot, sealer)
                sealer.end()
                out.flush()
                os.fsync(out.fileno())
    finally:
        await connection.close()
    return manifest


async def _pg_dump(dsn: str, snapshot: str, sealer: archives.Sealer) -> None:
    target, env = _libpq_target(dsn)
    process = await asyncio.create_subprocess_exec(
        _tool("pg_dump"),
        "--format=custom",
        "--compress=0",
        f"--snapshot={snapshot}",
        "--lock-wait-timeout=30s",
        f"--dbname={target}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(_TOOL_TIMEOUT_S):
            while chunk := await process.stdout.read(archives.CHUNK_BYTES):
                sealer.data(chunk)
            await _finish(process, "pg_dump")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _publish(partial: Path, final: Path) -> None:
    partial.rename(final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backups_in(directory: Path, database: str | None = None) -> list[Path]:
    """Return the complete backups in ``directory`` (of ``database``), oldest first."""
    found = [
        path
        for path in directory.glob(f"*{SUFFIX}")
        if database is None or _database_of(path) == database
    ]
    return sorted(found, key=lambda path: path.name)


def _database_of(path: Path) -> str:
    # "<database>-<stamp>.havenbk": the stamp holds no hyphen, a name may.
    return path.name.removesuffix(SUFFIX).rsplit("-", 1)[0]


def prune(directory: Path, database: str, *, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest backups of ``database``; return the deleted.

    Call with the directory lock held: leftover ``.partial`` files of crashed
    runs are deleted too.
    """
    if keep < 1:
        raise BackupError(f"keep must be 1 or more, got {keep}")
    stale = [
        path
        for path in directory.glob("*.partial")
        if path.name.removesuffix(".partial").rsplit("-", 1)[0] == database
    ]
    doomed = backups_in(directory, database)[:-keep]
    for path in stale + doomed:
        path.unlink(missing_ok=True)
    return doomed


# --- restoring -------------------------------------------------------------------


async def _connect(dsn: str) -> asyncpg.Connection:
    async with db.translate_errors():
        return await asyncpg.connect(dsn, timeout=10)


async def _ensure_database(dsn: str) -> bool:
    """Create the database ``dsn`` names if missing; return whether it was created."""
    name = database_name(dsn)
    admin = await _connect(_with_database(dsn, MAINTENANCE_DB))
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.PostgresError as exc:
            raise BackupError(
                f"cannot create database {name!r} ({exc}); create it empty and retry"
            ) from exc
        return True
    finally:
        await admin.close()


async def _recreate_database(dsn: str) -> None:
    name = database_name(dsn)
    admin = await _connect(_with_database(dsn, MAINTENANCE_DB))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError as exc:
        raise BackupError(f"cannot replace database {name!r}: {exc}") from exc
    finally:
        await admin.close()
    logger.warning("database dropped and recreated for restore", database=name)


@dataclass(frozen=True)
class TargetState:
    """What a restore target holds, seen just before restoring into it."""

    tables: int
    intents: int
    last_activity: datetime | None
    other_sessions: tuple[str, ...]

    @property
    def is_empty(self) -> bool:
        return self.tables == 0


async def survey(dsn: str) -> TargetState:
    """Describe what ``dsn`` holds: tables, intents, latest activity, other users."""
    connection = await _connect(dsn)
    try:
        tables = len(await connection.fetch(_USER_TABLES))
        intents, last = 0, None
        if await connection.fetchval("SELECT to_regclass('intents') IS NOT NULL"):
            row = await connection.fetchrow(
                "SELECT count(*) AS n, max(updated_at) AS last FROM intents"
            )
            intents, last = row["n"], row["last"]
        sessions = await connection.fetch(
            "SELECT coalesce(nullif(application_name, ''), 'pid ' || pid) AS who "
            "FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return TargetState(tables, intents, last, tuple(row["who"] for row in sessions))


def _refusal(name: str, state: TargetState, force: bool) -> str | None:
    if state.other_sessions:
        return (
            f"database {name!r} has {len(state.other_sessions)} other session(s) "
            f"({', '.join(sorted(set(state.other_sessions)))}); stop `haven listen` "
            "and `haven run` everywhere first"
        )
    if state.is_empty or force:
        return None
    if state.intents:
        return (
            f"database {name!r} is live: {state.intents} intent(s), last changed "
            f"{state.last_activity:%Y-%m-%d %H:%M:%S %Z}; restore into a new "
            "database, or pass --force to replace it"
        )
    return (
        f"database {name!r} is not empty ({state.tables} table(s), no intents); "
        "pass --force to replace it"
    )


async def restore(
    path: Path, dsn: str, keys: MultiFernet, *, force: bool = False
) -> Manifest:
    """Restore ``path`` into the database ``dsn`` names; return the manifest.

    The target is created when missing. A target holding any table, or with
    other sessions attached, is refused (RestoreRefusedError) unless ``force``
    (which drops and recreates it, and still refuses while others are
    attached). The restore is one transaction: it lands whole or not at all.
    Raises BackupError when the file does not authenticate or the restored row
    counts differ from the manifest.
    """
    manifest = inspect(path, keys)
    await _ensure_database(dsn)
    state = await survey(dsn)
    refusal = _refusal(database_name(dsn), state, force)
    if refusal is not None:
        raise RestoreRefusedError(refusal)
    if not state.is_empty:
        await _recreate_database(dsn)

    await _pg_restore(path, dsn, keys)
    mismatches = await compare_counts(dsn, manifest)
    if mismatches:
        raise BackupError(f"restored row counts differ: {'; '.join(mismatches)}")
    logger.info(
        "backup restored",
        path=str(path),
        database=database_name(dsn),
        taken_at=manifest.created_at,
    )
    return manifest


async def _pg_restore(path: Path, dsn: str, keys: MultiFernet) -> None:
    target, env = _libpq_target(dsn)
    process = await asyncio.create_subprocess_exec(
        _tool("pg_restore"),
        "--format=custom",
        "--exit-on-error",
        "--single-transaction",
        "--no-owner",
        "--no-privileges",
        f"--dbname={target}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stdin is not None
    try:
        async with asyncio.timeout(_TOOL_TIMEOUT_S):
            for chunk in archives.read_dump(path, keys):
                process.stdin.write(chunk)
                await process.stdin.drain()
            process.stdin.close()
            await _finish(process, "pg_restore")
    except (BrokenPipeError, ConnectionResetError):
        # pg_restore stopped reading: its own words say why.
        await _finish(process, "pg_restore")
        raise BackupError("pg_restore stopped reading its input") from None
    finally:
        # Killed before it read the end of its input, pg_restore never
        # commits: its single transaction dies with its connection.
        if process.returncode is None:
            process.kill()
            await process.wait()


async def compare_counts(dsn: str, manifest: Manifest) -> list[str]:
    """Return one line per table whose row count in ``dsn`` is not the manifest's."""
    connection = await _connect(dsn)
    try:
        actual = await _row_counts(connection)
    finally:
        await connection.close()
    problems = []
    for table in sorted(set(actual) | set(manifest.row_counts)):
        expected = manifest.row_counts.get(table)
        found = actual.get(table)
        if expected != found:
            problems.append(f"{table}: backup {expected}, restored {found}")
    return problems


# --- verifying -------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """The outcome of restoring a backup into a scratch database.

    ``problems`` hold what proves the backup bad: an unreadable file, a
    failed restore, row counts that differ, books that break. The books are
    ``checked`` only when the reconciler reached a verdict: a chain it
    could not read (or none configured) leaves the backup restorable but
    not vouched for, which the command says with its own exit code.
    """

    path: Path
    manifest: Manifest | None
    problems: tuple[str, ...]
    reconciliation: str
    reasons: tuple[str, ...] = ()

    @property
    def is_checked(self) -> bool:
        return self.reconciliation in CHECKED_VERDICTS

    @property
    def is_ok(self) -> bool:
        return not self.problems and self.is_checked

    @property
    def exit_code(self) -> int:
        """0 ok; 1 the backup is bad; 3 restored but the books not checked."""
        if self.problems:
            return reports.EXIT_NOT_RECONCILED
        if not self.is_checked:
            return reports.EXIT_INCOMPLETE
        return reports.EXIT_RECONCILED


# Verdicts that vouch for the books as of the backup. Intents outstanding
# when it was taken are normal for a live system, and not a fault of it.
CHECKED_VERDICTS = (runs.RECONCILED, runs.PENDING)
NOT_CHECKED = "not checked"


async def verify(path: Path, settings: Settings, keys: MultiFernet) -> Verification:
    """Restore ``path`` into a scratch database, compare it, drop the scratch.

    The scratch database lives on the server of ``settings.database_url``
    under a random ``haven_verify_`` name; the live database is not touched.
    A bad file or a bad restore is reported in ``problems``, not raised;
    books the reconciler could not judge are reported as not checked.
    """
    try:
        manifest = inspect(path, keys)
    except BackupError as exc:
        return Verification(path, None, (str(exc),), NOT_CHECKED)
    scratch = _with_database(
        settings.database_url.reveal(), f"haven_verify_{uuid.uuid4().hex[:12]}"
    )
    try:
        await restore(path, scratch, keys)
        verdict, reasons = await _reconciliation(scratch, settings, manifest)
    except BackupError as exc:
        return Verification(path, manifest, (str(exc),), NOT_CHECKED)
    finally:
        await _drop(scratch)
    problems: tuple[str, ...] = ()
    if verdict == runs.BREAKS:
        detail = "; ".join(reasons) or "breaks"
        problems = (f"the books as of the backup do not reconcile ({detail})",)
    return Verification(path, manifest, problems, verdict, reasons)


async def _reconciliation(
    dsn: str, settings: Settings, manifest: Manifest
) -> tuple[str, tuple[str, ...]]:
    """Return the reconciler's verdict on the restored books as of the backup.

    With its reasons: why the books break, or why they could not be checked
    (chain unreachable, index behind, no chain configured).
    """
    if not settings.rpc_url or settings.chain_id is None:
        return NOT_CHECKED, ("HAVEN_RPC_URL or HAVEN_CHAIN_ID is unset",)
    pool = await db.create_pool(dsn, max_size=2)
    try:
        try:
            await migrations.ensure_current(pool)
        except SchemaOutdatedError as exc:
            # A backup taken before an upgrade's migrations: its books are
            # checked once restored and migrated.
            return NOT_CHECKED, (f"the backup's {exc}",)
        async with ChainClient(settings.rpc_url, chain_id=settings.chain_id) as chain:
            report = await reports.build(
                pool, chain, settings, as_of=datetime.fromisoformat(manifest.created_at)
            )
    finally:
        await pool.close()
    return str(report.verdict), tuple(report.data["reasons"])


async def _drop(dsn: str) -> None:
    admin = await _connect(_with_database(dsn, MAINTENANCE_DB))
    try:
        await admin.execute(
            f'DROP DATABASE IF EXISTS "{database_name(dsn)}" WITH (FORCE)'
        )
    finally:
        await admin.close()


# --- the command line -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``haven backup [create|verify|list] [FILE]``."""
    parser.set_defaults(backup_command="backup")
    parser.add_argument(
        "action",
        nargs="?",
        choices=("create", "verify", "list"),
        default="create",
        help="create a backup (default), verify one, or list them",
    )
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="backup to verify (default: the newest in --dir)",
    )
    _add_directory(parser)
    parser.add_argument(
        "--keep",
        type=_keep_count,
        default=DEFAULT_KEEP,
        help=f"backups of this database to keep (default {DEFAULT_KEEP})",
    )
    parser.epilog = (
        f"verify exit status: {reports.EXIT_RECONCILED} ok; "
        f"{reports.EXIT_NOT_RECONCILED} the backup is unreadable, restores wrong "
        f"or its books break; {reports.EXIT_INCOMPLETE} it restored but its books "
        "could not be reconciled (chain unreachable or not configured)"
    )


def argument_problem(args: argparse.Namespace) -> str | None:
    """Say what is wrong with parsed ``haven backup`` arguments, or None."""
    if args.backup_command == "backup" and args.file and args.action != "verify":
        return (
            f"FILE is taken by verify only; {args.action} works on --dir "
            f"(got {args.file})"
        )
    return None


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``haven restore FILE [--force]``."""
    parser.set_defaults(backup_command="restore")
    parser.add_argument("file", type=Path, help="the backup file to restore")
    parser.add_argument(
        "--force",
        action="store_true",
        help="drop and recreate a target database that already holds tables",
    )


def _add_directory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"directory holding the backups, created with its parents if "
        f"missing (default {DEFAULT_DIR})",
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``haven backup`` or ``haven restore``; return the exit code."""
    keys = key_ring(settings)
    dsn = settings.database_url.reveal()
    if args.backup_command == "restore":
        manifest = await restore(args.file, dsn, keys, force=args.force)
        _print_restored(args.file, dsn, manifest)
        return 0
    if args.action == "list":
        return _print_list(args.dir, keys)
    if args.action == "verify":
        path = args.file or _newest(args.dir, database_name(dsn))
        result = await verify(path, settings, keys)
        _print_verification(result)
        return result.exit_code
    path = await take(dsn, args.dir, keys, keep=args.keep)
    print(path)
    return 0


def _keep_count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of backups, 1 or more, got {text!r}"
        )
    return value


def _newest(directory: Path, database: str) -> Path:
    found = backups_in(directory, database)
    if not found:
        raise BackupError(f"no backups of {database!r} in {directory}")
    return found[-1]


def _print_restored(path: Path, dsn: str, manifest: Manifest) -> None:
    print(f"restored {path.name} into {mask_dsn(dsn)}")
    print(f"  taken at     {manifest.created_at}")
    print(f"  migrations   {manifest.migrations[-1] if manifest.migrations else '-'}")
    print(f"  tables       {len(manifest.row_counts)}, row counts match")
    print("next: `haven migrate`, then start `haven run` (it re-reads the chain")
    print("from the restored checkpoint), then `haven listen`; see docs/operations.md")


def _print_list(directory: Path, keys: MultiFernet) -> int:
    for path in backups_in(directory):
        try:
            with path.open("rb") as source:
                taken_at = (
                    archives.Opener(source, keys, path.name).manifest().created_at
                )
        except BackupError:
            taken_at = "unreadable with the configured keys"
        print(f"{path.name}  {path.stat().st_size:>12}  {taken_at}")
    return 0


def _print_verification(result: Verification) -> None:
    print(f"backup         {result.path.name}")
    if result.manifest is not None:
        print(f"taken at       {result.manifest.created_at}")
        print(f"tables         {len(result.manifest.row_counts)}")
        print(f"rows           {sum(result.manifest.row_counts.values())}")
    print(f"reconciliation {result.reconciliation}")
    for reason in result.reasons:
        print(f"reason         {reason}")
    for problem in result.problems:
        print(f"problem        {problem}")
    print(f"verdict        {_verdict_line(result)}")


def _verdict_line(result: Verification) -> str:
    if result.problems:
        return "FAILED"
    if not result.is_checked:
        return (
            "UNCHECKED: the backup restored and its row counts match, but the "
            "books could not be reconciled; fix the reasons above and verify again"
        )
    return "ok"
