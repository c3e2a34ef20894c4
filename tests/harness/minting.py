"""A minting rig for the submitter's tests: HNV deployed, a funded minter, intents.

:func:`rig` deploys HNV on a test anvil, stores a signer in custody (under a
fresh master key), funds it, grants it MINTER_ROLE, and hands back a
:class:`Rig` that makes ready intents, runs Submitters in-process or as
subprocesses, and reads the outcome from the chain and the database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.fernet import Fernet
from eth_account import Account

from harness import chainsetup
from harness.anvil import DEV_KEYS, AnvilNode
from haven import db, intents, settings
from haven.chain import ChainClient
from haven.daemon import alerts_outbox, attempts, custody
from haven.daemon.submitter import Submitter, SubmitterOptions
from haven.settings import Settings
from haven.types import ONE_HNV, ChecksumAddress, IntentId, Wei, checksum

T = TypeVar("T")
RUNNER = Path(__file__).resolve().parent / "submitter_runner.py"
AURORA_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TRIBE_SECRET = "whsec_dGhpcyBpcyBhIHRyaWJlIHNlY3JldCE="
GUEST = checksum(Account.from_key(DEV_KEYS[1]).address)
SIGNER_FUNDS_WEI = 100 * 10**18


def daemon_env(
    database_url: str,
    *,
    master_key: str,
    rpc_url: str = "http://127.0.0.1:8545",
    chain_id: int = 31337,
    **overrides: Any,
) -> dict[str, str]:
    """A complete HAVEN_* environment; ``overrides`` are keyed like settings."""
    values = {
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_RPC_URL": rpc_url,
        "HAVEN_CHAIN_ID": str(chain_id),
        "HAVEN_POLL_INTERVAL_MS": "20",
        "HAVEN_CONFIRMATIONS": "1",
        "HAVEN_WEBHOOK_SECRETS_AURORA": AURORA_SECRET,
        "HAVEN_WEBHOOK_SECRETS_TRIBE": TRIBE_SECRET,
        "HAVEN_MASTER_KEY": master_key,
        "HAVEN_ADMIN_API_KEYS": "rig-admin-key-0123456789abcdef",
        "HAVEN_DEPLOYER_KEY": chainsetup.ADMIN_KEY,
        "HAVEN_DAEMON_PORT": "0",
    }
    values.update({f"HAVEN_{k.upper()}": str(v) for k, v in overrides.items()})
    return values


def settings_for(database_url: str, *, master_key: str, **overrides: Any) -> Settings:
    """Settings of a daemon on ``database_url`` (no chain needed to load them)."""
    return settings.load(daemon_env(database_url, master_key=master_key, **overrides))


async def wait_for(
    condition: Callable[[], Awaitable[T]], *, timeout_s: float = 60.0, what: str
) -> T:
    """Return the first truthy value of ``condition``; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        # Chain and database have no push we could wait on here.
        await asyncio.sleep(0.02)


@dataclass
class Rig:
    node: AnvilNode
    database_url: str
    pool: db.Pool
    token: ChecksumAddress
    deploy_block: int
    master_key: str
    signer: ChecksumAddress | None = None
    _clients: list[ChainClient] = field(default_factory=list)
    _serial: int = 0

    # --- configuration ------------------------------------------------------

    def env(self, *, rpc_url: str | None = None, **overrides: str) -> dict[str, str]:
        """The HAVEN_* environment of a daemon on this rig."""
        values: dict[str, Any] = {
            "master_key": self.master_key,
            "rpc_url": rpc_url or self.node.url,
            "chain_id": self.node.chain_id,
            "token_address": self.token,
            "start_block": self.deploy_block,
        }
        return daemon_env(self.database_url, **(values | overrides))

    def settings(self, *, rpc_url: str | None = None, **overrides: str) -> Settings:
        return settings.load(self.env(rpc_url=rpc_url, **overrides))

    def chain(self, url: str | None = None) -> ChainClient:
        """A chain client closed when the rig is torn down."""
        client = ChainClient([url or self.node.url], chain_id=self.node.chain_id)
        self._clients.append(client)
        return client

    # --- the minter ---------------------------------------------------------

    async def add_signer(
        self, *, funds_wei: int = SIGNER_FUNDS_WEI, minter: bool = True
    ) -> ChecksumAddress:
        """Create a custody signer, fund it and (optionally) make it a minter."""
        address = await custody.create_signer(self.pool, self.settings())
        if funds_wei:
            await chainsetup.fund(self.node, address, funds_wei)
        if minter:
            await chainsetup.grant_minter(self.node, self.token, address)
        self.signer = self.signer or address
        return address

    def submitter(
        self,
        *,
        rpc_url: str | None = None,
        options: SubmitterOptions | None = None,
        pool: db.Pool | None = None,
        **overrides: str,
    ) -> Submitter:
        """An in-process Submitter on this rig (breaker probing every 0.2 s)."""
        loaded = self.settings(rpc_url=rpc_url, **overrides)
        return Submitter(
            loaded,
            pool or self.pool,
            self.chain(rpc_url),
            options=options or SubmitterOptions(breaker_reset_s=0.2),
            crash_at="",
        )

    async def local_signer(self, address: str | None = None) -> custody.Signer:
        """The signer's key, decrypted — to play someone using it outside haven."""
        return await custody.load_signer(
            self.pool, self.settings(), address or self.signer or ""
        )

    @asynccontextmanager
    async def running(self, submitter: Submitter) -> AsyncIterator[asyncio.Task[None]]:
        """Run ``submitter`` as a task; stop it on exit and re-raise its failure."""
        stopping = asyncio.Event()
        task = asyncio.create_task(submitter.run(stopping), name="submitter")
        try:
            yield task
        finally:
            stopping.set()
            await asyncio.wait_for(asyncio.shield(task), 30)

    # --- intents --------------------------------------------------------------

    async def add_intents(
        self,
        count: int,
        *,
        amount_wei: int = ONE_HNV,
        partner: str = "aurora",
        wallet: ChecksumAddress = GUEST,
    ) -> list[IntentId]:
        """Create ``count`` ready intents with distinct business keys."""
        created = []
        async with db.transaction(self.pool) as conn:
            for _ in range(count):
                self._serial += 1
                intent, _ = await intents.create(
                    conn,
                    partner=partner,
                    kind="booking",
                    source_key=f"RIG-{self._serial:06d}",
                    wallet=wallet,
                    amount_wei=Wei(amount_wei),
                    rule_version="rig-1",
                    status=intents.READY,
                )
                created.append(intent.id)
        return created

    # --- outcome ----------------------------------------------------------------

    async def mint_counts(self) -> Counter[bytes]:
        return await chainsetup.mint_counts(self.node, self.token, self.deploy_block)

    async def all_minted(self, ids: list[IntentId]) -> bool:
        counts = await self.mint_counts()
        return all(counts[i] >= 1 for i in ids)

    async def wait_minted(self, ids: list[IntentId], *, timeout_s: float = 60) -> None:
        await wait_for(
            lambda: self.all_minted(ids),
            timeout_s=timeout_s,
            what=f"{len(ids)} intents minted",
        )

    async def assert_paid_once(self, ids: Sequence[IntentId]) -> None:
        """Each intent minted exactly once, by one of its attempts; no nonce left.

        The tailer does not run in these tests, so intents stay ``submitted``.
        """
        signer = self.signer or ""
        mints = await chainsetup.mints(self.node, self.token, self.deploy_block)
        by_intent = {m.intent_id: m for m in mints}
        assert sorted(m.intent_id for m in mints) == sorted(ids)
        for intent_id in ids:
            tried = {a.tx_hash for a in await self.attempts_of(intent_id)}
            assert by_intent[intent_id].tx_hash in tried
            assert (await self.intent(intent_id)).status == intents.SUBMITTED
        latest = await chainsetup.nonce_of(self.node, signer)
        assert latest == await self.next_nonce() == len(mints)
        assert await chainsetup.nonce_of(self.node, signer, "pending") == latest

    async def intent(self, intent_id: bytes) -> intents.Intent:
        async with self.pool.acquire() as conn:
            found = await intents.get(conn, intent_id)
        assert found is not None
        return found

    async def attempts_of(self, intent_id: bytes) -> list[attempts.Attempt]:
        async with self.pool.acquire() as conn:
            return await attempts.for_intent(conn, intent_id)

    async def alerts(self, rule: str | None = None) -> list[alerts_outbox.Alert]:
        async with self.pool.acquire() as conn:
            return await alerts_outbox.find(conn, rule=rule)

    async def next_nonce(self, address: str | None = None) -> int:
        async with self.pool.acquire() as conn:
            found: int = await conn.fetchval(
                "SELECT next_nonce FROM signers WHERE address = $1",
                address or self.signer,
            )
        return found

    # --- subprocesses -------------------------------------------------------

    def spawn(
        self, log_path: Path, *, rpc_url: str | None = None, **extra_env: str
    ) -> subprocess.Popen[bytes]:
        """Start the submitter-only daemon as a subprocess logging to ``log_path``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HAVEN")}
        env.update(self.env(rpc_url=rpc_url))
        env.update(extra_env)
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, str(RUNNER)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        await self.pool.close()


@asynccontextmanager
async def rig(
    database_url: str, node: AnvilNode, *, with_signer: bool = True
) -> AsyncIterator[Rig]:
    """Deploy HNV on ``node`` and yield a Rig over ``database_url``."""
    token_address, deploy_block = await chainsetup.deploy_hnv(node)
    pool = await db.create_pool(database_url, max_size=8)
    built = Rig(
        node=node,
        database_url=database_url,
        pool=pool,
        token=token_address,
        deploy_block=deploy_block,
        master_key=Fernet.generate_key().decode(),
    )
    try:
        if with_signer:
            await built.add_signer()
        yield built
    finally:
        await built.close()
