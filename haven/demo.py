"""``haven demo``: the whole flow on a local chain, from partner to report.

Starts a throwaway anvil node, a fresh database, the listener and the
daemon; posts a realistic batch of signed Aurora and Tribe webhooks through
a real HTTP client; waits until every reward is confirmed on chain; prints
the reconciliation report; stops what it started. Exits 0 only when the
verdict is ``reconciled``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from cryptography.fernet import Fernet
from eth_account import Account
from loguru import logger

from haven import db, deploy, migrations, settings
from haven.chain import ChainClient
from haven.reconciler import reports

ROOT = Path(__file__).resolve().parent.parent
ANVIL = ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
# anvil's first default account: funded on every fresh anvil chain.
ANVIL_DEPLOYER_KEY = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
)
CHAIN_ID = 31337
OUTSTANDING = ("held", "ready", "approval", "submitted", "mined")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bookings",
        type=int,
        default=40,
        help="Aurora bookings to simulate (default 40)",
    )
    parser.add_argument(
        "--members", type=int, default=15, help="Tribe members to simulate (default 15)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the event generator (default: random, printed)",
    )
    parser.add_argument(
        "--admin-dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL DSN allowed to create the demo database",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=180.0,
        help="how long to wait for every reward to confirm",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """Return a Standard Webhooks ``webhook-signature`` header value."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- the partners' events ---------------------------------------------------


def _wallet() -> str:
    return str(Account.create().address)


def aurora_events(rng: random.Random, bookings: int) -> Iterator[dict[str, Any]]:
    """Yield Aurora envelopes: bookings confirmed, completed or cancelled; reviews."""
    for index in range(bookings):
        booking_id = f"AUR-{100000 + index}"
        data = {
            "booking_id": booking_id,
            "guest_id": f"G-{rng.randint(1000, 9999)}",
            "wallet": _wallet(),
            "total_paid_cents": rng.randrange(8_000, 240_000, 5),
            "currency": "CAD",
            "nights": rng.choice([1, 1, 2, 3, 4, 7]),
            "property_id": rng.choice(["YUL-01", "YVR-02", "YYZ-03"]),
        }
        yield {"type": "booking.confirmed", "data": data}
        if rng.random() < 0.1:
            yield {
                "type": "booking.cancelled",
                "data": data | {"reason": "guest request"},
            }
            continue
        yield {"type": "booking.completed", "data": data}
        if rng.random() < 0.5:
            yield {
                "type": "review.submitted",
                "data": {
                    "booking_id": booking_id,
                    "guest_id": data["guest_id"],
                    "wallet": data["wallet"],
                    "rating": rng.randint(1, 5),
                    "comment": rng.choice(["Très bien — merci!", "Great stay", "Ok"]),
                },
            }


def tribe_events(rng: random.Random, members: int) -> Iterator[dict[str, Any]]:
    """Yield Tribe envelopes of every kind the community app sends."""
    people = [(f"M-{2000 + i}", _wallet()) for i in range(members)]
    kinds = ["meetup", "workshop", "summit", "retreat"]
    for index, (member_id, wallet) in enumerate(people):
        base = {"member_id": member_id, "wallet": wallet}
        yield {
            "type": "event.attended",
            "data": base
            | {
                "event_id": f"EVT-{rng.randint(1, 20)}",
                "event_type": rng.choice(kinds),
            },
        }
        if index % 2 == 0:
            yield {
                "type": "contribution.recorded",
                "data": base | {"contribution_id": f"C-{index}"},
            }
        if index % 3 == 0:
            yield {
                "type": "coaching.completed",
                "data": base | {"session_id": f"S-{index}"},
            }
        if index % 4 == 0:
            yield {
                "type": "referral.completed",
                "data": base
                | {
                    "referral_id": f"R-{index}",
                    "referred_member_id": f"M-{9000 + index}",
                },
            }
        if index % 5 == 0:
            yield {
                "type": "staking.changed",
                "data": base
                | {
                    "stake_id": f"ST-{index}",
                    "action": "stake",
                    "amount_wei": str(rng.randint(1, 500) * 10**18),
                },
            }


# --- the processes it runs --------------------------------------------------


@contextmanager
def _anvil(block_time_s: int) -> Iterator[str]:
    if not ANVIL.exists():
        raise SystemExit(f"anvil is not installed at {ANVIL}: run `make setup`")
    cache = tempfile.mkdtemp(prefix="haven-demo-anvil-")
    port = _free_port()
    process = subprocess.Popen(
        [
            str(ANVIL),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(CHAIN_ID),
            "--block-time",
            str(block_time_s),
            "--cache-path",
            cache,
            "--silent",
        ],
        env=dict(os.environ, HOME=cache),
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process, "anvil")
        shutil.rmtree(cache, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes], name: str, grace_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("process ignored SIGTERM, killing it", process=name)
        process.kill()
        process.wait()


@contextmanager
def _service(command: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-m", "haven.cli", command], env=env)
    try:
        yield process
    finally:
        _stop(process, command)


async def _wait_http(
    url: str, timeout_s: float, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(
                    f"demo: {process.args[-1]} exited with {process.returncode}"
                )
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)):
                    return
            except (aiohttp.ClientError, TimeoutError):
                # Nothing to subscribe to before the port opens.
                await asyncio.sleep(0.2)
    raise SystemExit(f"demo: {url} did not answer within {timeout_s} s")


@asynccontextmanager
async def _database(admin_dsn: str) -> AsyncIterator[str]:
    name = "haven_demo"
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()
    base, _, _ = admin_dsn.rpartition("/")
    yield f"{base}/{name}"


# --- the flow ---------------------------------------------------------------


async def _post_all(
    listen_url: str, env: dict[str, str], batches: dict[str, list[dict[str, Any]]]
) -> dict[int, int]:
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        for partner, events in batches.items():
            secret = env[f"HAVEN_WEBHOOK_SECRETS_{partner.upper()}"].split(",")[0]
            for event in events:
                event = {
                    "type": event["type"],
                    "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "data": event["data"],
                }
                body = orjson.dumps(event)
                delivery_id = f"msg_{uuid.uuid4().hex}"
                stamp = int(time.time())
                headers = {
                    "content-type": "application/json",
                    "webhook-id": delivery_id,
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": sign(secret, delivery_id, stamp, body),
                }
                async with session.post(
                    f"{listen_url}/webhooks/{partner}", data=body, headers=headers
                ) as response:
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status != 202:
                        detail = await response.text()
                        raise SystemExit(
                            f"demo: {partner} {event['type']} answered "
                            f"{response.status}: {detail}"
                        )
    return statuses


async def _wait_settled(dsn: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    connection = await asyncpg.connect(dsn)
    try:
        while True:
            open_count = await connection.fetchval(
                "SELECT count(*) FROM intents WHERE status = ANY($1::text[])",
                list(OUTSTANDING),
            )
            if open_count == 0:
                return
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"demo: {open_count} intents still outstanding after {timeout_s} s"
                )
            # The daemon writes from another process; there is nothing to await on.
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


async def _report(loaded: settings.Settings) -> reports.Report:
    pool = await db.create_pool(loaded.database_url.reveal(), max_size=2)
    try:
        async with ChainClient(loaded.rpc_url, chain_id=loaded.chain_id) as chain:
            return await reports.build(pool, chain, loaded)
    finally:
        await pool.close()


def _environment(dsn: str, rpc_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")}
    env.update(
        {
            "HAVEN_DATABASE_URL": dsn,
            "HAVEN_REDIS_URL": redis_url,
            "HAVEN_REDIS_PREFIX": f"haven-demo-{uuid.uuid4().hex[:8]}",
            "HAVEN_RPC_URL": rpc_url,
            "HAVEN_CHAIN_ID": str(CHAIN_ID),
            "HAVEN_CONFIRMATIONS": "3",
            "HAVEN_POLL_INTERVAL_MS": "250",
            "HAVEN_MAX_IN_FLIGHT": "32",
            "HAVEN_WEBHOOK_SECRETS_AURORA": _whsec(),
            "HAVEN_WEBHOOK_SECRETS_TRIBE": _whsec(),
            "HAVEN_MASTER_KEY": Fernet.generate_key().decode(),
            "HAVEN_ADMIN_API_KEYS": secrets.token_urlsafe(32),
            "HAVEN_DEPLOYER_KEY": ANVIL_DEPLOYER_KEY,
            "HAVEN_LISTEN_PORT": str(_free_port()),
            "HAVEN_DAEMON_PORT": str(_free_port()),
        }
    )
    return env


async def main(args: argparse.Namespace) -> int:
    """Run the demo; return 0 only when the final verdict is ``reconciled``."""
    seed = (
        args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    )
    rng = random.Random(seed)
    print(f"demo: seed {seed}")
    batches = {
        "aurora": list(aurora_events(rng, args.bookings)),
        "tribe": list(tribe_events(rng, args.members)),
    }

    async with _database(args.admin_dsn) as dsn:
        with _anvil(block_time_s=1) as rpc_url:
            env = _environment(dsn, rpc_url, args.redis_url)
            loaded = settings.load(env)
            await migrations.apply(dsn)
            result = await deploy.deploy(loaded, fund_wei=100 * 10**18)
            env["HAVEN_TOKEN_ADDRESS"] = result.token_address
            env["HAVEN_START_BLOCK"] = str(result.deploy_block)
            print(
                f"demo: HNV deployed at {result.token_address} "
                f"(block {result.deploy_block}), minter {', '.join(result.minters)}"
            )

            listen_url = f"http://127.0.0.1:{env['HAVEN_LISTEN_PORT']}"
            with _service("listen", env) as listener, _service("run", env):
                await _wait_http(f"{listen_url}/healthz", 30, listener)
                total = sum(len(events) for events in batches.values())
                print(f"demo: posting {total} signed webhooks")
                await _post_all(listen_url, env, batches)
                await _wait_settled(dsn, args.timeout_s)

            report = await _report(settings.load(env))
            print(reports.render(report, "table"))
    verdict = report.verdict
    print(f"demo: verdict {verdict}")
    return 0 if verdict == "reconciled" else 1
