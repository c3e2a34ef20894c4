"""``haven wallet``: create, import, list, rotate (without stopping minting), revoke."""

from __future__ import annotations

import argparse
import io

import pytest
from cryptography.fernet import Fernet
from eth_account import Account

from harness import chainsetup
from harness.anvil import DEV_KEYS
from harness.minting import Rig, wait_for
from haven import settings
from haven.daemon import custody, signers, wallets
from haven.errors import ChainError, ConfigError, CustodyError
from haven.types import checksum

pytestmark = pytest.mark.timeout(120)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="haven wallet")
    wallets.add_arguments(parser)
    return parser.parse_args(list(argv))


async def statuses(rig: Rig) -> dict[str, str]:
    async with rig.pool.acquire() as conn:
        rows = await signers.listing(conn)
    return {row.address: row.status for row in rows}


async def test_create_and_list_show_a_new_active_signer(
    rig: Rig, capsys: pytest.CaptureFixture[str]
):
    assert await wallets.command(rig.settings(), parse("create")) == 0
    created = checksum(capsys.readouterr().out.strip())

    assert await wallets.command(rig.settings(), parse("list")) == 0
    listed = capsys.readouterr().out

    assert (await statuses(rig))[created] == signers.ACTIVE
    assert created in listed and "active" in listed


async def test_import_reads_the_key_from_stdin_and_adopts_the_chain_nonce(
    rig: Rig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    key = DEV_KEYS[3]
    address = checksum(Account.from_key(key).address)
    for _ in range(2):
        await chainsetup.transact(rig.node, key, to=address, gas=21_000)
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))

    assert await wallets.command(rig.settings(), parse("import")) == 0

    out = capsys.readouterr()
    assert out.out.strip() == address
    assert key[2:] not in out.out + out.err
    assert await rig.next_nonce(address) == 2


async def test_rotation_keeps_minting_and_retires_the_old_signer_for_good(rig: Rig):
    old = rig.signer
    assert old is not None
    first = await rig.add_intents(6)
    async with rig.running(rig.submitter()):
        await wait_for(lambda: rig.all_minted(first[:2]), what="minting under way")
        args = parse("rotate", "--fund-wei", str(10**18), "--wait-s", "60")
        assert await wallets.command(rig.settings(), args) == 0
        later = await rig.add_intents(4)
        await rig.wait_minted(first + later)

    now = await statuses(rig)
    (new,) = [address for address in now if address != old]
    assert now == {old: signers.REVOKED, new: signers.ACTIVE}
    assert not await chainsetup.has_minter_role(rig.node, rig.token, old)
    assert await chainsetup.has_minter_role(rig.node, rig.token, new)
    mints = await chainsetup.mints(rig.node, rig.token, rig.deploy_block)
    assert sorted(m.intent_id for m in mints) == sorted(first + later)
    assert {m.minter for m in mints if m.intent_id in later} == {new}
    async with rig.pool.acquire() as conn:
        actions = [(e.signer, e.action) for e in await custody.audit_trail(conn)]
    assert (old, custody.ROTATE) in actions
    assert (new, custody.GRANT) in actions
    assert (old, custody.REVOKE) in actions


async def test_a_rotation_that_cannot_fund_its_successor_leaves_it_out_of_service(
    rig: Rig,
):
    old = rig.signer
    deployer_balance = int(
        await rig.node.rpc("eth_getBalance", [chainsetup.ADMIN, "latest"]), 16
    )
    too_much = str(deployer_balance * 2)

    with pytest.raises(ChainError):
        await wallets.command(rig.settings(), parse("rotate", "--fund-wei", too_much))

    now = await statuses(rig)
    (new,) = [address for address in now if address != old]
    assert now == {old: signers.ACTIVE, new: signers.REVOKED}
    assert not await chainsetup.has_minter_role(rig.node, rig.token, new)


async def test_a_rotation_without_the_deployer_key_creates_nothing(rig: Rig):
    environ = {k: v for k, v in rig.env().items() if k != "HAVEN_DEPLOYER_KEY"}
    before = await statuses(rig)

    with pytest.raises(ConfigError, match="HAVEN_DEPLOYER_KEY"):
        await wallets.command(settings.load(environ), parse("rotate"))

    assert await statuses(rig) == before


async def test_a_revoke_without_the_deployer_key_changes_nothing(rig: Rig):
    environ = {k: v for k, v in rig.env().items() if k != "HAVEN_DEPLOYER_KEY"}
    before = await statuses(rig)
    (signer,) = before

    with pytest.raises(ConfigError, match="HAVEN_DEPLOYER_KEY"):
        await wallets.command(settings.load(environ), parse("revoke", signer))

    assert await statuses(rig) == before
    async with rig.pool.acquire() as connection:
        trail = await custody.audit_trail(connection, signer)
    assert "drain" not in [entry.action for entry in trail]


@pytest.mark.parametrize("wait", ["-5", "nan", "1e400", "inf", "86401", "soon"])
def test_revoke_refuses_a_wait_that_is_not_a_sane_number_of_seconds(wait: str):
    with pytest.raises(SystemExit):
        parse("revoke", "0x5fbdb2315678afecb367f032d93f642f64180aa3", "--wait-s", wait)


async def test_rotating_a_signer_not_in_custody_says_so(rig: Rig):
    stranger = checksum(Account.create().address)

    with pytest.raises(CustodyError, match=f"no signer {stranger} in custody"):
        await wallets.command(rig.settings(), parse("rotate", "--from", stranger))


@pytest.mark.parametrize("amount", ["-5", "1e18", "\u0663"])
def test_rotate_refuses_a_fund_that_is_not_a_whole_number_of_wei(amount: str):
    with pytest.raises(SystemExit):
        parse("rotate", "--fund-wei", amount)


def test_signer_addresses_are_taken_in_any_case_and_checksummed():
    lower = "0x5fbdb2315678afecb367f032d93f642f64180aa3"

    assert parse("revoke", lower).address == checksum(lower)
    assert parse("rotate", "--from", lower.upper().replace("0X", "0x")).old == (
        checksum(lower)
    )
    with pytest.raises(SystemExit):
        parse("revoke", "0x5FBDB2315678afecb367f032d93F642f64180aa3")


async def test_revoking_an_unknown_signer_is_refused(rig: Rig):
    stranger = checksum(Account.create().address)

    with pytest.raises(CustodyError, match="no signer"):
        await wallets.command(rig.settings(), parse("revoke", stranger))


async def test_rekey_re_encrypts_under_the_first_master_key(
    rig: Rig, capsys: pytest.CaptureFixture[str]
):
    fresh = Fernet.generate_key().decode()
    both = rig.settings(master_key=f"{fresh},{rig.master_key}")

    assert await wallets.command(both, parse("rekey")) == 0

    only_new = rig.settings(master_key=fresh)
    signer = await custody.load_signer(rig.pool, only_new, rig.signer or "")
    assert signer.address == rig.signer
    assert "re-encrypted 1" in capsys.readouterr().out
