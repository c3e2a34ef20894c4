"""Custody on real PostgreSQL: keys encrypted at rest, master-key rotation, audit."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from cryptography.fernet import Fernet
from eth_account import Account

from harness.minting import settings_for
from haven import db, intents, token
from haven.daemon import custody, policy, signers
from haven.errors import CustodyError, PolicyViolationError
from haven.settings import Settings
from haven.types import ONE_HNV, ChecksumAddress, Wei, checksum

KNOWN_KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KNOWN_ADDRESS = checksum(Account.from_key(KNOWN_KEY).address)
TOKEN = checksum("0x5FbDB2315678afecb367f032d93F642f64180aa3")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    created = await db.create_pool(database_url, max_size=4)
    yield created
    await created.close()


def settings_with(database_url: str, *keys: bytes) -> Settings:
    master = ",".join(key.decode() for key in keys)
    return settings_for(database_url, master_key=master, token_address=TOKEN)


async def stored_token(pool: db.Pool, address: str) -> bytes:
    async with pool.acquire() as conn:
        row = await signers.get(conn, address)
    assert row is not None
    return row.encrypted_key


async def all_rows_text(pool: db.Pool) -> str:
    async with pool.acquire() as conn:
        audit = await conn.fetch("SELECT * FROM custody_audit")
        keys = await conn.fetch("SELECT address, status, next_nonce FROM signers")
    return repr([dict(r) for r in audit]) + repr([dict(r) for r in keys])


async def test_a_created_key_is_stored_encrypted_and_decrypts_to_its_address(
    pool: db.Pool, database_url: str
):
    master = Fernet.generate_key()
    loaded = settings_with(database_url, master)

    address = await custody.create_signer(pool, loaded)
    token = await stored_token(pool, address)
    signer = await custody.load_signer(pool, loaded, address)
    plaintext = Fernet(master).decrypt(token)

    assert signer.address == address
    assert checksum(Account.from_key(plaintext).address) == address
    assert plaintext not in token
    assert plaintext.hex().encode() not in token
    assert await custody.active_signers(pool) == [address]


async def test_an_imported_key_keeps_its_address_and_a_second_import_is_refused(
    pool: db.Pool, database_url: str
):
    loaded = settings_with(database_url, Fernet.generate_key())

    address = await custody.import_signer(pool, loaded, KNOWN_KEY)

    assert address == KNOWN_ADDRESS
    with pytest.raises(CustodyError, match="already exists"):
        await custody.import_signer(pool, loaded, KNOWN_KEY)


async def test_a_malformed_key_is_refused_without_echoing_it(
    pool: db.Pool, database_url: str
):
    loaded = settings_with(database_url, Fernet.generate_key())
    bad = KNOWN_KEY[:-2]

    with pytest.raises(CustodyError) as caught:
        await custody.import_signer(pool, loaded, bad)

    assert bad[2:20] not in str(caught.value)


async def test_master_key_rotation_re_encrypts_every_key_under_the_new_key(
    pool: db.Pool, database_url: str
):
    old_key, new_key = Fernet.generate_key(), Fernet.generate_key()
    before = settings_with(database_url, old_key)
    first = await custody.create_signer(pool, before)
    second = await custody.import_signer(pool, before, KNOWN_KEY)
    old_token = await stored_token(pool, first)

    during = settings_with(database_url, new_key, old_key)
    assert (await custody.load_signer(pool, during, first)).address == first
    rotated = await custody.rekey(pool, during)
    after = settings_with(database_url, new_key)

    assert rotated == 2
    assert await stored_token(pool, first) != old_token
    for address in (first, second):
        assert (await custody.load_signer(pool, after, address)).address == address
        with pytest.raises(CustodyError, match="no configured master key"):
            await custody.load_signer(pool, before, address)


async def test_rekey_without_the_old_key_fails_and_changes_nothing(
    pool: db.Pool, database_url: str
):
    old_key = Fernet.generate_key()
    address = await custody.create_signer(pool, settings_with(database_url, old_key))
    token = await stored_token(pool, address)

    with pytest.raises(CustodyError, match="keep the old key"):
        await custody.rekey(pool, settings_with(database_url, Fernet.generate_key()))

    assert await stored_token(pool, address) == token


async def test_every_custody_action_is_audited_without_key_material(
    pool: db.Pool, database_url: str
):
    keys = (Fernet.generate_key(), Fernet.generate_key())
    loaded = settings_with(database_url, *keys)
    address = await custody.import_signer(pool, loaded, KNOWN_KEY)
    signer = await custody.load_signer(pool, loaded, address)
    intent = await ready_intent(pool)
    tx = mint_tx(intent)
    rules = policy.Policy(token_address=TOKEN, chain_id=31337, max_fee_wei=10**12)
    async with db.transaction(pool) as conn:
        signed = await custody.sign(conn, signer, tx, policy=rules, intent=intent)
    await custody.rekey(pool, loaded)

    async with pool.acquire() as conn:
        trail = await custody.audit_trail(conn, address)
    text = await all_rows_text(pool)

    assert [entry.action for entry in trail] == ["import", "decrypt", "sign", "rekey"]
    assert trail[2].detail["tx_hash"] == signed.tx_hash
    assert KNOWN_KEY[2:] not in text.lower()
    assert (await stored_token(pool, address)).decode() not in text
    assert all(key.decode() not in text for key in keys)
    assert "0x" + signed.raw_tx.hex() not in text


async def test_creating_a_signer_writes_one_create_audit_row_without_its_key(
    pool: db.Pool, database_url: str
):
    master = Fernet.generate_key()
    loaded = settings_with(database_url, master)

    address = await custody.create_signer(pool, loaded, actor="cli:ops")

    async with pool.acquire() as conn:
        trail = await custody.audit_trail(conn, address)
    plaintext = Fernet(master).decrypt(await stored_token(pool, address))
    text = await all_rows_text(pool)
    assert [(e.signer, e.action, e.actor) for e in trail] == [
        (address, "create", "cli:ops")
    ]
    assert plaintext.hex() not in text.lower()
    assert (await stored_token(pool, address)).decode() not in text
    assert master.decode() not in text


async def test_a_local_signer_never_shows_its_key():
    signer = custody.LocalSigner(bytes.fromhex(KNOWN_KEY[2:]))

    shown = f"{signer!r} {signer!s} {signer.address}"

    assert KNOWN_KEY[2:] not in shown.lower()
    assert isinstance(signer, custody.Signer)
    with pytest.raises(TypeError):
        pickle.dumps(signer)


async def test_the_policy_is_checked_before_anything_is_signed(
    pool: db.Pool, database_url: str
):
    loaded = settings_with(database_url, Fernet.generate_key())
    address = await custody.import_signer(pool, loaded, KNOWN_KEY)
    signer = await custody.load_signer(pool, loaded, address)
    intent = await ready_intent(pool)
    rules = policy.Policy(token_address=TOKEN, chain_id=31337, max_fee_wei=10**12)
    tx = mint_tx(intent) | {"to": KNOWN_ADDRESS}

    async with db.transaction(pool) as conn:
        with pytest.raises(PolicyViolationError, match="recipient"):
            await custody.sign(conn, signer, tx, policy=rules, intent=intent)
        trail = await custody.audit_trail(conn, address)

    assert "sign" not in [entry.action for entry in trail]


class CountingSigner:
    """A local signer that counts its signatures."""

    def __init__(self, inner: custody.Signer) -> None:
        self.inner = inner
        self.signed = 0

    @property
    def address(self) -> ChecksumAddress:
        return self.inner.address

    async def sign_transaction(self, tx: Mapping[str, Any]) -> custody.SignedTx:
        self.signed += 1
        return await self.inner.sign_transaction(tx)


async def test_a_run_is_signed_and_audited_in_order_or_not_at_all(
    pool: db.Pool, database_url: str
):
    loaded = settings_with(database_url, Fernet.generate_key())
    address = await custody.import_signer(pool, loaded, KNOWN_KEY)
    signer = CountingSigner(await custody.load_signer(pool, loaded, address))
    intent = await ready_intent(pool)
    rules = policy.Policy(token_address=TOKEN, chain_id=31337, max_fee_wei=10**12)
    run = [(mint_tx(intent) | {"nonce": nonce}, intent) for nonce in (7, 8, 9)]
    refused = [*run[:2], (run[2][0] | {"to": KNOWN_ADDRESS}, intent)]

    async with db.transaction(pool) as conn:
        with pytest.raises(PolicyViolationError, match="recipient"):
            await custody.sign_all(conn, signer, refused, policy=rules)
    assert signer.signed == 0
    async with db.transaction(pool) as conn:
        signed = await custody.sign_all(conn, signer, run, policy=rules)
        trail = await custody.audit_trail(conn, address)

    sign_rows = [entry.detail for entry in trail if entry.action == "sign"]
    assert [row["nonce"] for row in sign_rows] == [7, 8, 9]
    assert [row["tx_hash"] for row in sign_rows] == [one.tx_hash for one in signed]
    assert len({one.tx_hash for one in signed}) == 3


async def ready_intent(pool: db.Pool) -> intents.Intent:
    async with db.transaction(pool) as conn:
        intent, _ = await intents.create(
            conn,
            partner="aurora",
            kind="booking",
            source_key="CUSTODY-1",
            wallet=ChecksumAddress(KNOWN_ADDRESS),
            amount_wei=Wei(5 * ONE_HNV),
            rule_version="test",
            status=intents.READY,
        )
    return intent


def mint_tx(intent: intents.Intent) -> dict[str, object]:
    return {
        "type": 2,
        "chainId": 31337,
        "nonce": 0,
        "to": TOKEN,
        "value": 0,
        "gas": 200_000,
        "maxFeePerGas": 3 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "data": token.mint_reward_data(intent.wallet, intent.amount_wei, intent.id),
    }
