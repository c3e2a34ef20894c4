"""Admin wallets: create, list, get, rotate, revoke and the custody audit trail."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from eth_account import Account
from operators.support import (
    ADMIN_KEY,
    SIGNER,
    WALLET,
    Service,
    environ,
    seed_signer,
)

from harness.anvil import DEV_KEYS
from haven import db, deploy, settings, token
from haven.chain import ChainClient
from haven.daemon import custody
from haven.listeners.auth import fingerprint
from haven.types import ChecksumAddress

WALLETS = "/api/v1/admin/wallets"
KEY_ID = fingerprint(hashlib.sha256(ADMIN_KEY.encode()).digest())


@dataclass
class Deployed:
    service: Service
    token_address: ChecksumAddress
    minter: ChecksumAddress
    chain: ChainClient

    async def is_minter(self, address: str) -> bool:
        data = token.has_role_data(token.MINTER_ROLE, ChecksumAddress(address))
        return token.decode_bool(await self.chain.eth_call(self.token_address, data))


@pytest.fixture
async def deployed(
    start_service, database_url, redis_prefix, anvil
) -> AsyncIterator[Deployed]:
    """HNV on anvil with one funded minter, and a listener that knows it."""
    overrides = {"HAVEN_RPC_URL": anvil.url, "HAVEN_DEPLOYER_KEY": DEV_KEYS[0]}
    loaded = settings.load(environ(database_url, redis_prefix) | overrides)
    done = await deploy.deploy(loaded, fund_wei=10**17)
    overrides["HAVEN_TOKEN_ADDRESS"] = done.token_address
    async with (
        start_service(**overrides) as service,
        ChainClient([anvil.url], chain_id=anvil.chain_id) as chain,
    ):
        yield Deployed(service, done.token_address, done.minters[0], chain)


async def test_signers_are_listed_with_status_counter_and_gas(deployed):
    reply = await deployed.service.client.get(WALLETS)

    assert reply.status == 200
    [wallet] = reply.body["wallets"]
    assert wallet["address"] == deployed.minter
    assert (wallet["status"], wallet["next_nonce"]) == ("active", 0)
    assert wallet["balance_wei"] == str(10**17)
    assert "key" not in str(wallet).replace("key:", "")


async def test_a_deployment_audits_the_funding_and_grant_of_its_minter(deployed):
    trail = await deployed.service.client.get(f"{WALLETS}/{deployed.minter}/audit")

    actions = [e["action"] for e in trail.body["entries"]]
    assert actions[:3] == ["grant", "fund", "create"]
    fund, grant = (
        next(e for e in trail.body["entries"] if e["action"] == action)
        for action in ("fund", "grant")
    )
    assert fund["detail"]["amount_wei"] == str(10**17)
    assert grant["detail"]["role"] == "MINTER_ROLE"


async def test_a_created_signer_is_audited_under_the_operators_key(deployed):
    created = await deployed.service.client.post(WALLETS)
    address = created.body["wallet"]["address"]
    trail = await deployed.service.client.get(f"{WALLETS}/{address}/audit")
    fetched = await deployed.service.client.get(f"{WALLETS}/{address}")

    assert created.status == 201
    assert created.body["wallet"]["status"] == "active"
    assert fetched.body == created.body
    assert [(e["action"], e["actor"]) for e in trail.body["entries"]] == [
        ("create", KEY_ID)
    ]


async def test_rotating_an_idle_signer_grants_the_successor_and_revokes_it(deployed):
    reply = await deployed.service.client.post(f"{WALLETS}/{deployed.minter}/rotate")

    assert reply.status == 200
    new, old = reply.body["wallet"], reply.body["retired"]
    assert (new["status"], old["status"]) == ("active", "revoked")
    assert old["address"] == deployed.minter
    assert await deployed.is_minter(new["address"]) is True
    assert await deployed.is_minter(deployed.minter) is False
    trail = await deployed.service.client.get(f"{WALLETS}/{deployed.minter}/audit")
    entries = [(e["action"], e["actor"]) for e in trail.body["entries"]]
    assert entries[:2] == [("revoke", KEY_ID), ("rotate", KEY_ID)]
    successor = await deployed.service.client.get(f"{WALLETS}/{new['address']}/audit")
    assert {e["actor"] for e in successor.body["entries"]} == {KEY_ID}


async def test_a_rotation_that_funds_its_successor_audits_the_funding(deployed):
    reply = await deployed.service.client.post(
        f"{WALLETS}/{deployed.minter}/rotate", json={"fund_wei": "5000000"}
    )
    new = reply.body["wallet"]["address"]
    trail = await deployed.service.client.get(f"{WALLETS}/{new}/audit")

    assert reply.status == 200
    assert reply.body["wallet"]["balance_wei"] == "5000000"
    [funded] = [e for e in trail.body["entries"] if e["action"] == "fund"]
    assert funded["actor"] == KEY_ID
    assert funded["detail"]["amount_wei"] == "5000000"
    receipt = await deployed.chain.get_receipt(funded["detail"]["tx_hash"])
    assert receipt is not None and receipt["to"].lower() == new.lower()


async def test_revoking_a_signer_withdraws_its_role_and_repeats_harmlessly(deployed):
    admin = ChecksumAddress(Account.from_key(DEV_KEYS[0]).address)
    first = await deployed.service.client.post(f"{WALLETS}/{deployed.minter}/revoke")
    trail = await deployed.service.client.get(f"{WALLETS}/{deployed.minter}/audit")
    sent = await deployed.chain.get_transaction_count(admin, "latest")
    again = await deployed.service.client.post(f"{WALLETS}/{deployed.minter}/revoke")

    assert first.status == 200
    assert first.body["wallet"]["status"] == "revoked"
    assert again.status == 200
    assert again.body == first.body
    assert await deployed.is_minter(deployed.minter) is False
    # The repeat sends nothing and audits nothing.
    assert await deployed.chain.get_transaction_count(admin, "latest") == sent
    repeated = await deployed.service.client.get(f"{WALLETS}/{deployed.minter}/audit")
    assert repeated.body == trail.body
    assert [(e["action"], e["actor"]) for e in trail.body["entries"]][:2] == [
        ("revoke", KEY_ID),
        ("drain", KEY_ID),
    ]


@pytest.mark.parametrize("fund_wei", [-1, 5, "-1", "1.5", "12a", "", "9" * 26])
async def test_a_rotation_with_a_bad_fund_wei_is_422_and_creates_nothing(
    deployed, fund_wei
):
    reply = await deployed.service.client.post(
        f"{WALLETS}/{deployed.minter}/rotate", json={"fund_wei": fund_wei}
    )
    listed = await deployed.service.client.get(WALLETS)

    assert (reply.status, reply.error_code) == (422, "invalid_request")
    [problem] = reply.body["error"]["fields"]
    assert problem["path"] == "fund_wei"
    assert problem["message"].startswith("expected a string of digits (wei)")
    assert [w["address"] for w in listed.body["wallets"]] == [deployed.minter]


async def test_an_unknown_wallet_is_404_and_a_malformed_address_422(deployed):
    unknown = await deployed.service.client.get(f"{WALLETS}/0x" + "12" * 20)
    malformed = await deployed.service.client.post(f"{WALLETS}/0x12/rotate")

    assert (unknown.status, unknown.error_code) == (404, "not_found")
    assert (malformed.status, malformed.error_code) == (422, "invalid_request")


async def test_a_signers_audit_trail_is_paged_newest_first(service):
    await seed_signer(service.pool)
    async with db.transaction(service.pool) as connection:
        for n in range(5):
            await custody.record(
                connection, SIGNER, "sign", actor="test", detail={"n": n}
            )
        # Another signer's rows never show in this trail.
        await custody.record(connection, WALLET, "sign", actor="test")

    seen, cursor = [], None
    while True:
        reply = await service.client.get(
            f"{WALLETS}/{SIGNER}/audit?limit=2"
            + (f"&cursor={cursor}" if cursor else "")
        )
        assert reply.status == 200
        seen.append([entry["detail"]["n"] for entry in reply.body["entries"]])
        cursor = reply.body["next_cursor"]
        if cursor is None:
            break

    assert seen == [[4, 3], [2, 1], [0]]
