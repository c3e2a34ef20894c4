"""The ``haven wallet`` commands: create, import, list, rotate, revoke, rekey.

Rotation never stops minting and never strands a transaction: the new signer
is created, funded (optional) and granted MINTER_ROLE first; then the old
one turns ``draining`` — the submitter gives it no new intents but keeps
re-sending and re-pricing its in-flight nonces — and only once the chain
shows all of them mined is its role revoked and its status ``revoked``. If
the wait times out, ``haven wallet revoke ADDRESS`` finishes the job later.

Role changes are signed with ``HAVEN_DEPLOYER_KEY`` (the token's admin).
Keys are read from standard input, never from the command line, and never
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Awaitable, Callable

from haven import db, deploy, migrations
from haven.chain import ChainClient
from haven.daemon import custody, nonces, signers
from haven.errors import ConfigError, CustodyError, RpcUnavailableError
from haven.settings import Settings
from haven.types import ChecksumAddress, Wei, checksum

DRAIN_WAIT_S = 600.0
# The longest --wait-s: a day; a drain that takes longer is repeated later.
MAX_WAIT_S = 86_400.0
EXIT_OK = 0
EXIT_FAILED = 1

Handler = Callable[[Settings, db.Pool, argparse.Namespace], Awaitable[int]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the wallet sub-commands to ``parser`` (the ``haven wallet`` parser)."""
    actions = parser.add_subparsers(
        dest="wallet_command", required=True, metavar="ACTION"
    )
    actions.add_parser("create", help="generate a signer key and store it encrypted")
    actions.add_parser(
        "import", help="store an existing key read from standard input, encrypted"
    )
    actions.add_parser("list", help="list signers with their status and next nonce")
    rotate = actions.add_parser(
        "rotate",
        help="replace a signer: new key, minter role, drain the old one, revoke it",
    )
    rotate.add_argument(
        "--from",
        dest="old",
        type=_address,
        metavar="ADDRESS",
        help="signer to retire (default: the only active one)",
    )
    rotate.add_argument(
        "--fund-wei",
        type=_wei,
        default=0,
        help="ETH (in wei) sent from the deployer key to the new signer for gas",
    )
    _add_wait(rotate)
    revoke = actions.add_parser(
        "revoke", help="drain a signer, withdraw its minter role and retire it"
    )
    revoke.add_argument("address", type=_address, help="the signer to retire")
    _add_wait(revoke)
    actions.add_parser(
        "rekey", help="re-encrypt every key under the first HAVEN_MASTER_KEY"
    )


def _address(text: str) -> ChecksumAddress:
    """An argparse type: an address in any letter case, checksummed."""
    try:
        return checksum(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _wei(text: str) -> int:
    """An argparse type: a non-negative whole number of wei."""
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a non-negative whole number of wei, got {text!r}"
        )
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WAIT_S:
        raise argparse.ArgumentTypeError(
            f"expected seconds from 0 to {MAX_WAIT_S:.0f}, got {text!r}"
        )
    return value


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait-s",
        type=_seconds,
        default=DRAIN_WAIT_S,
        help="how long to wait for in-flight transactions to be mined",
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    """Run one ``haven wallet`` action; return the exit code."""
    handler = _HANDLERS[args.wallet_command]
    pool = await db.create_pool(settings.database_url.reveal(), max_size=2)
    try:
        await migrations.ensure_current(pool)
        return await handler(settings, pool, args)
    finally:
        await pool.close()


async def _create(settings: Settings, pool: db.Pool, args: argparse.Namespace) -> int:
    address = await custody.create_signer(pool, settings, actor=custody.default_actor())
    print(address)
    return EXIT_OK


async def _import(settings: Settings, pool: db.Pool, args: argparse.Namespace) -> int:
    key = sys.stdin.readline()
    address = await custody.import_signer(
        pool, settings, key, actor=custody.default_actor()
    )
    print(address)
    try:
        async with _chain(settings) as chain:
            skipped = await adopt_chain_nonce(pool, chain, address)
    except RpcUnavailableError:
        print(
            "# chain unreachable: the daemon skips this key's used nonces on start "
            "(with a nonce_used_outside alert)",
            file=sys.stderr,
        )
        return EXIT_OK
    if skipped:
        print(f"# next nonce set to {skipped.stop} from the chain", file=sys.stderr)
    return EXIT_OK


async def adopt_chain_nonce(
    pool: db.Pool, chain: ChainClient, address: ChecksumAddress
) -> range:
    """Start an imported key's counter at its mined nonce; return the nonces skipped."""
    latest = await chain.get_transaction_count(address, "latest")
    async with db.transaction(pool) as conn:
        skipped = await nonces.skip_used(conn, address, latest)
        if skipped:
            await custody.record(
                conn,
                address,
                custody.IMPORT,
                actor=custody.default_actor(),
                detail={"next_nonce_from_chain": latest},
            )
    return skipped


async def _list(settings: Settings, pool: db.Pool, args: argparse.Namespace) -> int:
    async with db.translate_errors(), pool.acquire() as conn:
        rows = await signers.listing(conn)
    for row in rows:
        created = row.created_at.isoformat(timespec="seconds")
        print(f"{row.address}  {row.status:<8}  nonce {row.next_nonce:<6}  {created}")
    return EXIT_OK


async def _rotate(settings: Settings, pool: db.Pool, args: argparse.Namespace) -> int:
    retiring = await _retiring(pool, args.old)
    async with _chain(settings) as chain:
        new = await rotate(settings, pool, chain, old=retiring, fund_wei=args.fund_wei)
        print(new)
        return await _retire_or_explain(settings, pool, chain, retiring, args.wait_s)


async def _revoke(settings: Settings, pool: db.Pool, args: argparse.Namespace) -> int:
    async with _chain(settings) as chain:
        return await _retire_or_explain(
            settings, pool, chain, args.address, args.wait_s
        )


async def _retire_or_explain(
    settings: Settings, pool: db.Pool, chain: ChainClient, address: str, wait_s: float
) -> int:
    if not await retire(settings, pool, chain, address, wait_s=wait_s):
        print(
            f"haven: {address} still has transactions in flight after "
            f"{wait_s:.0f} s; it stays draining — run "
            f"`haven wallet revoke {address}` later",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"# revoked {address}", file=sys.stderr)
    return EXIT_OK


async def _rekey(settings: Settings, pool: db.Pool, args: argparse.Namespace) -> int:
    count = await custody.rekey(pool, settings, actor=custody.default_actor())
    print(f"re-encrypted {count} signer key(s) under the first master key")
    return EXIT_OK


_HANDLERS: dict[str, Handler] = {
    "create": _create,
    "import": _import,
    "list": _list,
    "rotate": _rotate,
    "revoke": _revoke,
    "rekey": _rekey,
}


async def rotate(
    settings: Settings,
    pool: db.Pool,
    chain: ChainClient,
    *,
    old: str | None = None,
    fund_wei: int = 0,
    actor: str | None = None,
) -> ChecksumAddress:
    """Create a successor of ``old``, fund it, make it a minter, drain ``old``.

    Returns the new address; ``old`` is left draining (see :func:`retire`).
    Raises CustodyError when ``old`` is not one active signer. ``actor``
    names who asked in the custody audit (the local user by default).
    """
    if fund_wei < 0:
        raise ValueError(f"fund_wei must not be negative, got {fund_wei}")
    retiring = await _retiring(pool, old)
    # Checked before anything is created: without it nothing can be granted.
    admin_key = _admin_key(settings)
    actor = actor or custody.default_actor()
    new = await custody.create_signer(pool, settings, actor=actor)
    # A running daemon gives it no work before the grant below (the submitter
    # asks the token), and the grant comes after the funding.
    try:
        if fund_wei > 0:
            await deploy.fund(pool, chain, admin_key, new, Wei(fund_wei), actor=actor)
        await _set_role(settings, pool, chain, new, grant=True, actor=actor)
    except Exception as exc:
        await _abandon(pool, new, actor, exc)
        raise
    async with db.transaction(pool) as conn:
        await signers.set_status(conn, retiring, signers.DRAINING)
        await custody.record(
            conn, retiring, custody.ROTATE, actor=actor, detail={"successor": new}
        )
    return new


async def _abandon(pool: db.Pool, address: str, actor: str, cause: Exception) -> None:
    """Take a successor that never became a minter out of service."""
    async with db.transaction(pool) as conn:
        used = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tx_attempts WHERE signer = $1)", address
        )
        # One that signed meanwhile drains first; the rest is retired at once.
        status = signers.DRAINING if used else signers.REVOKED
        await signers.set_status(conn, address, status)
        await custody.record(
            conn,
            address,
            custody.DRAIN if used else custody.REVOKE,
            actor=actor,
            detail={"reason": f"rotation failed: {type(cause).__name__}"},
        )


async def _retiring(pool: db.Pool, old: str | None) -> ChecksumAddress:
    async with db.translate_errors(), pool.acquire() as conn:
        active = await signers.listing(conn, [signers.ACTIVE])
    chosen = [row.address for row in active if old is None or row.address == old]
    if old is not None and not chosen:
        async with db.translate_errors(), pool.acquire() as conn:
            known = await signers.get(conn, old)
        if known is None:
            raise CustodyError(f"no signer {old} in custody")
        raise CustodyError(
            f"signer {old} is {known.status}; only an active one rotates"
        )
    if len(chosen) != 1:
        raise CustodyError(
            f"cannot tell which signer to rotate: {len(chosen)} active signers; "
            "name one with --from"
        )
    return chosen[0]


async def retire(
    settings: Settings,
    pool: db.Pool,
    chain: ChainClient,
    address: str,
    *,
    wait_s: float = DRAIN_WAIT_S,
    actor: str | None = None,
) -> bool:
    """Drain ``address``, withdraw its minter role and mark it revoked.

    Returns False (signer left draining) when its in-flight transactions
    are not all mined within ``wait_s``. Safe to re-run: a signer already
    revoked is left as it is, and True returned. ``actor`` names who asked
    in the custody audit (the local user by default).
    """
    actor = actor or custody.default_actor()
    async with db.transaction(pool) as conn:
        row = await signers.get(conn, address, for_update=True)
        if row is None:
            raise CustodyError(f"no signer {address} in custody")
        if row.status == signers.REVOKED:
            return True
        # Checked before anything changes: without it the role stays granted
        # and the signer would be left draining for nothing.
        _admin_key(settings)
        if row.status == signers.ACTIVE:
            await signers.set_status(conn, row.address, signers.DRAINING)
            await custody.record(conn, row.address, custody.DRAIN, actor=actor)
    if not await _drained(settings, pool, chain, row.address, wait_s):
        return False
    await _set_role(settings, pool, chain, row.address, grant=False, actor=actor)
    async with db.transaction(pool) as conn:
        await signers.set_status(conn, row.address, signers.REVOKED)
    return True


async def _drained(
    settings: Settings, pool: db.Pool, chain: ChainClient, address: str, wait_s: float
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        latest = await chain.get_transaction_count(address, "latest")
        pending = await chain.get_transaction_count(address, "pending")
        async with db.translate_errors(), pool.acquire() as conn:
            row = await signers.get(conn, address)
        assert row is not None
        if latest >= row.next_nonce and pending == latest:
            return True
        if loop.time() >= deadline:
            return False
        # Mined nonces have no push notification over HTTP JSON-RPC.
        await asyncio.sleep(settings.poll_interval_ms / 1000)


async def _set_role(
    settings: Settings,
    pool: db.Pool,
    chain: ChainClient,
    address: str,
    *,
    grant: bool,
    actor: str,
) -> None:
    await deploy.set_minter(
        pool,
        chain,
        _admin_key(settings),
        settings.require_token(),
        ChecksumAddress(address),
        grant=grant,
        actor=actor,
    )


def _admin_key(settings: Settings) -> str:
    if settings.deployer_key is None:
        raise ConfigError(
            [
                "HAVEN_DEPLOYER_KEY: not set; expected the token admin's key, "
                "which grants and revokes the minter role"
            ]
        )
    return settings.deployer_key.reveal()


def _chain(settings: Settings) -> ChainClient:
    return ChainClient(settings.rpc_url, chain_id=settings.chain_id)
