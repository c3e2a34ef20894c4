"""Fixtures of the reconciler tests: a real PostgreSQL book and a real HNV on anvil.

Chain facts are made for real: HNV is deployed from its committed artifact
and every mint is a signed ``mintReward`` transaction. The tailer is not
under test here, so :meth:`Book.index` stands in for it: it reads the
token's logs from anvil and rewrites ``reward_mints`` and
``token_transfers`` from them, then moves the tail checkpoint to the head.
Tests that are about reconciliation logic also write rows directly.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from cryptography.fernet import Fernet
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak
from standardwebhooks.webhooks import Webhook

from harness.anvil import DEV_KEYS, AnvilNode, free_port
from haven import contracts, db, intents, settings, token
from haven.chain import ChainClient
from haven.daemon import checkpoints, transfers
from haven.intents import Intent
from haven.reconciler.config import ReconcilerConfig, SmtpConfig, WebhookConfig
from haven.settings import Secret, Settings
from haven.types import ONE_HNV, ChecksumAddress, IntentId, Wei, checksum

OURS_KEY = DEV_KEYS[0]
FOREIGN_KEY = DEV_KEYS[1]
HOLDER_KEY = DEV_KEYS[2]
OURS = checksum(Account.from_key(OURS_KEY).address)
FOREIGN = checksum(Account.from_key(FOREIGN_KEY).address)
HOLDER = checksum(Account.from_key(HOLDER_KEY).address)
GUEST = checksum(Account.from_key(DEV_KEYS[3]).address)
STRANGER = checksum(Account.create().address)
RECEIPT_TIMEOUT_S = 10.0
TEN_HNV = Wei(10 * ONE_HNV)
GRACE_S = 3600


@dataclass
class Token:
    """HNV deployed on the test's anvil, with mint and burn helpers."""

    node: AnvilNode
    chain: ChainClient
    address: ChecksumAddress
    deploy_block: int

    async def send(self, key: str, data: bytes, to: str | None) -> dict[str, Any]:
        """Sign and send a transaction from ``key``; wait for and return its receipt."""
        sender = Account.from_key(key)
        nonce = await self.chain.get_transaction_count(sender.address, "pending")
        tx = {
            "type": 2,
            "chainId": self.node.chain_id,
            "nonce": nonce,
            "gas": 3_000_000,
            "maxFeePerGas": 10 * 10**9,
            "maxPriorityFeePerGas": 10**9,
            "value": 0,
            "data": data,
        }
        if to is not None:
            tx["to"] = to
        signed = sender.sign_transaction(tx)
        tx_hash = await self.chain.send_raw_transaction(signed.raw_transaction)
        receipt = await wait_receipt(self.chain, tx_hash)
        assert receipt["status"] == "0x1", f"transaction reverted: {receipt}"
        return receipt

    async def mint(
        self,
        intent_id: bytes,
        amount_wei: int,
        to: ChecksumAddress,
        *,
        key: str = OURS_KEY,
    ) -> dict[str, Any]:
        data = token.mint_reward_data(to, Wei(amount_wei), IntentId(intent_id))
        return await self.send(key, data, self.address)

    async def burn(self, amount_wei: int, *, key: str) -> dict[str, Any]:
        data = keccak(text="burn(uint256)")[:4] + encode(["uint256"], [amount_wei])
        return await self.send(key, data, self.address)

    async def total_supply(self) -> int:
        raw = await self.chain.eth_call(self.address, token.total_supply_data())
        return token.decode_uint(raw)


async def wait_receipt(chain: ChainClient, tx_hash: str) -> dict[str, Any]:
    """Wait for the receipt: anvil mines asynchronously even in automine mode."""
    async with asyncio.timeout(RECEIPT_TIMEOUT_S):
        while True:
            receipt = await chain.get_receipt(tx_hash)
            if receipt is not None:
                return receipt
            await asyncio.sleep(0.02)


class Book:
    """The database side of a test: intents, signers, and the indexed chain."""

    def __init__(self, pool: db.Pool, hnv: Token) -> None:
        self.pool = pool
        self.hnv = hnv
        self._keys = 0

    async def add_signer(self, address: str, status: str = "active") -> None:
        async with self.pool.acquire() as connection:
            await connection.execute(
                "INSERT INTO signers (address, encrypted_key, status) "
                "VALUES ($1, $2, $3)",
                address,
                os.urandom(32),
                status,
            )

    async def intent(
        self,
        amount_wei: int = TEN_HNV,
        *,
        wallet: ChecksumAddress = GUEST,
        status: str = intents.READY,
        partner: str = "aurora",
    ) -> Intent:
        """Create an intent and walk it to ``status`` through the real transitions."""
        self._keys += 1
        async with db.transaction(self.pool) as connection:
            created, _ = await intents.create(
                connection,
                partner=partner,
                kind="booking",
                source_key=f"B-{self._keys}-{os.urandom(4).hex()}",
                wallet=wallet,
                amount_wei=Wei(amount_wei),
                rule_version="test",
                status=intents.HELD if status == intents.VOIDED else intents.READY,
            )
        return await self.move(created, status)

    async def move(self, intent: Intent, status: str) -> Intent:
        path = {
            intents.READY: [],
            intents.VOIDED: [intents.VOIDED],
            intents.SUBMITTED: [intents.SUBMITTED],
            intents.MINED: [intents.SUBMITTED, intents.MINED],
            intents.CONFIRMED: [intents.SUBMITTED, intents.MINED, intents.CONFIRMED],
            intents.FAILED: [intents.SUBMITTED, intents.FAILED],
        }[status]
        current = intent
        for step in path:
            async with db.transaction(self.pool) as connection:
                moved = await intents.transition(
                    connection,
                    current.id,
                    from_statuses=intents.STATUSES,
                    to_status=step,
                )
            assert moved is not None
            current = moved
        return current

    async def settle(
        self,
        amount_wei: int = TEN_HNV,
        *,
        wallet: ChecksumAddress = GUEST,
        minted_wei: int | None = None,
        minted_to: ChecksumAddress | None = None,
        key: str = OURS_KEY,
        partner: str = "aurora",
    ) -> Intent:
        """Create an intent, mint it on chain and mark it confirmed."""
        intent = await self.intent(
            amount_wei, wallet=wallet, status=intents.READY, partner=partner
        )
        await self.hnv.mint(
            intent.id,
            minted_wei if minted_wei is not None else amount_wei,
            minted_to or intent.wallet,
            key=key,
        )
        return await self.move(intent, intents.CONFIRMED)

    async def index(self) -> int:
        """Rewrite the indexed chain from the node's logs; return the head indexed."""
        head = await self.hnv.chain.block_number()
        logs = await self.hnv.chain.get_logs(
            address=self.hnv.address, from_block=0, to_block=head
        )
        events = [token.decode_log(log, self.hnv.address) for log in logs]
        block = await self.hnv.chain.get_block(head)
        assert block is not None
        async with db.transaction(self.pool) as connection:
            await connection.execute("DELETE FROM reward_mints")
            await connection.execute("DELETE FROM token_transfers")
            await transfers.insert(connection, [e for e in events if e is not None])
            await checkpoints.save(
                connection,
                checkpoints.Checkpoint(
                    name="hnv",
                    block_number=head,
                    block_hash=bytes.fromhex(block["hash"][2:]),
                    confirmed_through=head,
                ),
            )
        return head

    async def backdate(self, intent: Intent, seconds: int) -> None:
        """Pretend the intent's history happened ``seconds`` earlier."""
        async with self.pool.acquire() as connection:
            await connection.execute(
                "UPDATE intent_events SET at = at - $2::interval WHERE intent_id = $1",
                intent.id,
                timedelta(seconds=seconds),
            )
            await connection.execute(
                "UPDATE intents SET created_at = created_at - $2::interval "
                "WHERE id = $1",
                intent.id,
                timedelta(seconds=seconds),
            )

    async def execute(self, sql: str, *args: Any) -> None:
        async with self.pool.acquire() as connection:
            await connection.execute(sql, *args)


class Mailbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 OK"

    @property
    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


@dataclass
class Receiver:
    """An operator's webhook endpoint; answers the queued statuses, then 200."""

    url: str
    secret: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    always: int = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else self.always
        return web.Response(status=status)

    def verified(self) -> list[dict[str, Any]]:
        """Return every request body, each checked against its signature."""
        hook = Webhook(self.secret)
        return [hook.verify(body, headers) for headers, body in self.requests]


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, SmtpConfig]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    config = SmtpConfig(
        host="127.0.0.1",
        port=controller.port,
        sender="haven@example.test",
        recipients=("ops@example.test",),
        tls="none",
        timeout_s=5,
    )
    try:
        yield box, config
    finally:
        controller.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, WebhookConfig]]:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    app = web.Application()
    server = TestServer(app, host="127.0.0.1", port=free_port())
    endpoint = Receiver(url="", secret=secret)
    app.router.add_post("/alerts", endpoint.handle)
    await server.start_server()
    endpoint.url = str(server.make_url("/alerts"))
    try:
        yield endpoint, WebhookConfig(url=endpoint.url, secret=Secret(secret))
    finally:
        await server.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    created = await db.create_pool(database_url, max_size=6)
    yield created
    await created.close()


@pytest.fixture
async def chain(anvil: AnvilNode) -> AsyncIterator[ChainClient]:
    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as client:
        yield client


@pytest.fixture
async def hnv(anvil: AnvilNode, chain: ChainClient) -> Token:
    """HNV deployed by our signer, with the minter role for us and a stranger."""
    admin = Account.from_key(OURS_KEY).address
    code = bytes.fromhex(contracts.bytecode()[2:]) + encode(["address"], [admin])
    deployer = Token(anvil, chain, checksum(admin), 0)
    receipt = await deployer.send(OURS_KEY, code, None)
    deployed = Token(
        anvil,
        chain,
        checksum(receipt["contractAddress"]),
        int(receipt["blockNumber"], 16),
    )
    for minter in (OURS, FOREIGN):
        await deployed.send(
            OURS_KEY, token.grant_role_data(token.MINTER_ROLE, minter), deployed.address
        )
    return deployed


@pytest.fixture
async def book(pool: db.Pool, hnv: Token) -> Book:
    """The test's book, with our signer registered."""
    created = Book(pool, hnv)
    await created.add_signer(OURS)
    return created


@pytest.fixture
def config(hnv: Token) -> ReconcilerConfig:
    return ReconcilerConfig(
        token_address=hnv.address,
        start_block=hnv.deploy_block,
        confirmations=1,
        stale_intent_grace_s=GRACE_S,
        missing_on_chain_grace_s=GRACE_S,
        low_balance_threshold_wei=Wei(10**18),
        stuck_after_blocks=3,
        delivery_attempts=3,
        delivery_backoff_s=0.0,
    )


@pytest.fixture
def haven_settings(database_url: str, anvil: AnvilNode, hnv: Token) -> Settings:
    return settings.load(
        {
            "HAVEN_DATABASE_URL": database_url,
            "HAVEN_RPC_URL": anvil.url,
            "HAVEN_CHAIN_ID": str(anvil.chain_id),
            "HAVEN_TOKEN_ADDRESS": hnv.address,
            "HAVEN_START_BLOCK": str(hnv.deploy_block),
            "HAVEN_CONFIRMATIONS": "1",
            "HAVEN_WEBHOOK_SECRETS_AURORA": "whsec_" + "QUJDREVGR0hJSktMTU5PUA==",
            "HAVEN_WEBHOOK_SECRETS_TRIBE": "whsec_" + "QUJDREVGR0hJSktMTU5PUA==",
            "HAVEN_MASTER_KEY": Fernet.generate_key().decode(),
            "HAVEN_ADMIN_API_KEYS": "reconciler-test-key-0123456789",
        }
    )
