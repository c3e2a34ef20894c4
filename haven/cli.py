"""The ``haven`` command line: one entry point for every process and tool.

Settings are loaded once here and passed down. Errors a person can fix
(settings, an unreachable database, an outdated schema) end the command with
a one-line message and a distinct exit code, not a traceback.

The two long-running processes, ``listen`` and ``run``, use uvloop's event
loop: most of their time goes to sockets (partners, PostgreSQL, Redis, the
node), where it costs less than the standard loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Collection
from typing import Any

import uvloop

from haven import logs, settings
from haven.errors import (
    ChainError,
    ChainMismatchError,
    ConfigError,
    DatabaseUnavailableError,
    HavenError,
    MigrationError,
)

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_FAILED = 1
# Hot wallets one deployment authorises at most: each is a key to guard.
MAX_SIGNERS = 32


def _load(require: Collection[str] | None = None) -> settings.Settings:
    return settings.load(os.environ, require=require)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from haven.listeners import rules

    loaded = _load()
    # The listener and the daemon refuse to start on a bad rules file, so a
    # check that passes must have read it too.
    book = rules.load(loaded.reward_rules)
    width = max(len(name) for name, _ in loaded.describe())
    print(f"# effective settings (from {loaded.source})")
    for name, shown in loaded.describe():
        print(f"{name.ljust(width)}  {shown}")
    where = loaded.reward_rules or rules.DEFAULT_PATH
    print(f"# reward rules: {where} (version {book.version})")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from haven import migrations

    loaded = _load(require=("database_url",))
    logs.configure(loaded, process="migrate")
    applied = asyncio.run(migrations.apply(loaded.database_url.reveal()))
    print(
        f"applied {len(applied)} migration(s)"
        + (": " + ", ".join(applied) if applied else "")
    )
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from haven import deploy

    loaded = _load()
    logs.configure(loaded, process="deploy")
    result = asyncio.run(
        deploy.deploy(loaded, fund_wei=args.fund_wei, signers=args.signers)
    )
    print(f"HAVEN_TOKEN_ADDRESS={result.token_address}")
    print(f"HAVEN_START_BLOCK={result.deploy_block}")
    print(f"# minters: {', '.join(result.minters)}", file=sys.stderr)
    return 0


def _cmd_listen(args: argparse.Namespace) -> int:
    from haven.listeners import app

    loaded = _load()
    logs.configure(loaded, process="listener")
    uvloop.run(app.serve(loaded))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from haven.daemon import service

    loaded = _load()
    loaded.require_token()
    logs.configure(loaded, process="daemon")
    uvloop.run(service.run(loaded, grace_s=loaded.shutdown_grace_s))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from haven.reconciler import reports

    loaded = _load()
    loaded.require_token()
    logs.configure(loaded, process="report")
    return asyncio.run(reports.command(loaded, args))


def _cmd_wallet(args: argparse.Namespace) -> int:
    from haven.daemon import wallets

    loaded = _load()
    logs.configure(loaded, process="wallet")
    return asyncio.run(wallets.command(loaded, args))


def _cmd_backup(args: argparse.Namespace) -> int:
    from haven import backups

    loaded = _load(require=("database_url", "master_key"))
    logs.configure(loaded, process="backup")
    return asyncio.run(backups.command(loaded, args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from haven import demo

    logs.configure(None, process="demo")
    return asyncio.run(demo.main(args))


def _signer_count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SIGNERS:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {MAX_SIGNERS}, got {text!r}"
        )
    return value


def _wei(text: str) -> int:
    value = int(text, 10)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer of wei, got {text}"
        )
    return value


def _parse(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    """Parse ``argv``; a mistake in a command's arguments is told with that
    command's usage, not the top-level one (exit 2)."""
    from haven import backups

    args, extra = parser.parse_known_args(argv)
    command: argparse.ArgumentParser = args.parser
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "backup" and (problem := backups.argument_problem(args)):
        command.error(problem)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haven",
        description=(
            "Partner events in, HNV reward mints out, and proof that the books balance."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    add(
        "check-config",
        _cmd_check_config,
        "print the effective settings, secrets masked",
    )
    add("migrate", _cmd_migrate, "apply pending SQL migrations from sql/")
    deploy = add(
        "deploy", _cmd_deploy, "deploy HNV and grant the minter role to the hot wallet"
    )
    deploy.add_argument(
        "--fund-wei",
        type=_wei,
        default=0,
        help="send this much ETH (in wei) to each hot wallet for gas",
    )
    deploy.add_argument(
        "--signers",
        type=_signer_count,
        default=1,
        help=f"number of hot wallets to authorise, 1 to {MAX_SIGNERS} (default 1)",
    )
    add("listen", _cmd_listen, "run the partner webhook listener and admin API")
    add("run", _cmd_run, "run the minting and chain-tailing daemon")
    report = add("report", _cmd_report, "print a reconciliation report")
    wallet = add("wallet", _cmd_wallet, "manage custodial signer keys")
    backup = add("backup", _cmd_backup, "take, list or verify encrypted backups")
    restore = add("restore", _cmd_backup, "restore a backup into an empty database")
    demo = add(
        "demo", _cmd_demo, "run the whole flow on a local chain and print the report"
    )
    _add_late_arguments(report, wallet, backup, restore, demo)
    return parser


def _add_late_arguments(
    report: Any, wallet: Any, backup: Any, restore: Any, demo: Any
) -> None:
    # These modules own their flags; importing them here keeps one source
    # of truth for each command's arguments.
    from haven import backups
    from haven import demo as demo_module
    from haven.daemon import wallets
    from haven.reconciler import reports

    reports.add_arguments(report)
    wallets.add_arguments(wallet)
    backups.add_arguments(backup)
    backups.add_restore_arguments(restore)
    demo_module.add_arguments(demo)


def main(argv: list[str] | None = None) -> int:
    """Run the ``haven`` command; return its exit code."""
    args = _parse(build_parser(), argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print("haven: invalid settings:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except (MigrationError, ChainMismatchError) as exc:
        # Neither goes away by itself: a restart would meet it again.
        print(f"haven: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (DatabaseUnavailableError, ChainError) as exc:
        print(f"haven: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except HavenError as exc:
        print(f"haven: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        # A path given on the command line that cannot be used as asked.
        if exc.filename is None:
            raise
        print(f"haven: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
