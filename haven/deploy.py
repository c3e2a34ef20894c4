"""Deploy HNV and authorise the hot wallet to mint.

``haven deploy`` signs with ``HAVEN_DEPLOYER_KEY`` (the token's admin), waits
for each transaction's receipt, records the deployment and prints the two
settings the services need (``HAVEN_TOKEN_ADDRESS`` and
``HAVEN_START_BLOCK``) in environment-file form.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from eth_abi import encode
from eth_account import Account
from loguru import logger

from haven import contracts, db, migrations, token
from haven.chain import ChainClient, from_hex
from haven.daemon import custody
from haven.errors import ChainError, ConfigError
from haven.settings import Settings
from haven.types import ChecksumAddress, Wei, checksum

NO_WEI = Wei(0)


@dataclass(frozen=True)
class Deployment:
    token_address: ChecksumAddress
    deploy_block: int
    tx_hash: str
    minters: tuple[ChecksumAddress, ...]


async def wait_for_receipt(
    chain: ChainClient,
    tx_hash: str,
    *,
    timeout_s: float = 60.0,
    interval_s: float = 0.2,
) -> dict[str, Any]:
    """Return the receipt of ``tx_hash`` once mined; raise ChainError on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        receipt = await chain.get_receipt(tx_hash)
        if receipt is not None:
            return receipt
        if asyncio.get_running_loop().time() > deadline:
            raise ChainError(f"transaction {tx_hash} not mined within {timeout_s} s")
        # Receipts have no push notification over plain HTTP JSON-RPC.
        await asyncio.sleep(interval_s)


async def send_as(
    chain: ChainClient,
    private_key: str,
    *,
    to: str | None,
    data: bytes,
    value: Wei = NO_WEI,
) -> dict[str, Any]:
    """Sign and send one EIP-1559 transaction from ``private_key``; return its receipt.

    Raises ChainError when the transaction reverts.
    """
    account = Account.from_key(private_key)
    nonce = await chain.get_transaction_count(account.address, "pending")
    head = await chain.get_block("latest")
    assert head is not None
    base_fee = from_hex(head.get("baseFeePerGas", "0x0"))
    tip = await chain.max_priority_fee()
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": chain.chain_id,
        "nonce": nonce,
        "maxPriorityFeePerGas": tip,
        "maxFeePerGas": 2 * base_fee + tip,
        "value": value,
        "data": data,
    }
    if to is not None:
        tx["to"] = checksum(to)
    estimate = {
        k: (hex(v) if isinstance(v, int) else v)
        for k, v in tx.items()
        if k in ("to", "value")
    }
    estimate["from"] = account.address
    estimate["data"] = "0x" + data.hex()
    tx["gas"] = await chain.estimate_gas(estimate) * 12 // 10
    signed = account.sign_transaction(tx)
    tx_hash = await chain.send_raw_transaction(bytes(signed.raw_transaction))
    receipt = await wait_for_receipt(chain, tx_hash)
    if from_hex(receipt["status"]) != 1:
        raise ChainError(f"transaction {tx_hash} reverted")
    return receipt


async def deploy(
    settings: Settings, *, fund_wei: Wei = NO_WEI, signers: int = 1
) -> Deployment:
    """Deploy HNV, ensure ``signers`` hot wallets exist, fund and authorise them.

    Not idempotent for the contract (each call deploys a new one); the
    signer part reuses active signers already in the database.
    """
    if settings.deployer_key is None:
        raise ConfigError(
            [
                "HAVEN_DEPLOYER_KEY: not set; expected the admin key "
                "that deploys HNV and grants roles"
            ]
        )
    key = settings.deployer_key.reveal()
    admin = checksum(Account.from_key(key).address)
    pool = await db.create_pool(settings.database_url.reveal(), max_size=2)
    try:
        await migrations.ensure_current(pool)
        async with ChainClient(settings.rpc_url, chain_id=settings.chain_id) as chain:
            await chain.verify_chain_id()
            created = await _create_contract(chain, key, admin)
            token_address = checksum(created["contractAddress"])
            block = from_hex(created["blockNumber"])
            logger.info("token deployed", token=token_address, block_number=block)
            minters = await _authorise_signers(
                settings, pool, chain, key, token_address, fund_wei, signers
            )
        await _record(
            pool, settings.chain_id, token_address, block, created["transactionHash"]
        )
    finally:
        await pool.close()
    return Deployment(token_address, block, created["transactionHash"], tuple(minters))


async def _create_contract(chain: ChainClient, key: str, admin: str) -> dict[str, Any]:
    bytecode = bytes.fromhex(contracts.bytecode().removeprefix("0x"))
    data = bytecode + encode(["address"], [admin])
    return await send_as(chain, key, to=None, data=data)


async def _authorise_signers(
    settings: Settings,
    pool: db.Pool,
    chain: ChainClient,
    key: str,
    token_address: ChecksumAddress,
    fund_wei: Wei,
    wanted: int,
) -> list[ChecksumAddress]:
    minters = list(await custody.active_signers(pool))
    while len(minters) < wanted:
        minters.append(await custody.create_signer(pool, settings))
    actor = custody.default_actor()
    for address in minters:
        if fund_wei > 0:
            await fund(pool, chain, key, address, fund_wei, actor=actor)
        await set_minter(
            pool, chain, key, token_address, address, grant=True, actor=actor
        )
        logger.info("minter role granted", signer=address, token=token_address)
    return minters


async def fund(
    pool: db.Pool,
    chain: ChainClient,
    key: str,
    signer: ChecksumAddress,
    amount_wei: Wei,
    *,
    actor: str,
) -> None:
    """Send ``amount_wei`` of gas money from ``key`` to ``signer``; audit it."""
    await _send_audited(
        pool,
        chain,
        key,
        signer,
        custody.FUND,
        actor=actor,
        to=signer,
        data=b"",
        value=amount_wei,
        detail={"amount_wei": str(amount_wei)},
    )


async def set_minter(
    pool: db.Pool,
    chain: ChainClient,
    key: str,
    token_address: str,
    signer: ChecksumAddress,
    *,
    grant: bool,
    actor: str,
) -> None:
    """Grant ``signer`` the minter role, or revoke it, with the admin ``key``."""
    data = (
        token.grant_role_data(token.MINTER_ROLE, signer)
        if grant
        else token.revoke_role_data(token.MINTER_ROLE, signer)
    )
    await _send_audited(
        pool,
        chain,
        key,
        signer,
        custody.GRANT if grant else custody.REVOKE,
        actor=actor,
        to=token_address,
        data=data,
        detail={"role": "MINTER_ROLE"},
    )


async def _send_audited(
    pool: db.Pool,
    chain: ChainClient,
    key: str,
    signer: ChecksumAddress,
    action: str,
    *,
    actor: str,
    to: str,
    data: bytes,
    value: Wei = NO_WEI,
    detail: dict[str, Any],
) -> None:
    """Send one transaction from ``key`` that acts on ``signer``, then write
    its custody row with the transaction's hash."""
    receipt = await send_as(chain, key, to=to, data=data, value=value)
    async with db.transaction(pool) as connection:
        await custody.record(
            connection,
            signer,
            action,
            actor=actor,
            detail=detail | {"tx_hash": receipt["transactionHash"]},
        )


async def _record(
    pool: db.Pool, chain_id: int, token_address: str, block: int, tx_hash: str
) -> None:
    async with db.transaction(pool) as connection:
        await connection.execute(
            "INSERT INTO deployments (chain_id, token_address, deploy_block, tx_hash) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            chain_id,
            token_address,
            block,
            bytes.fromhex(tx_hash[2:]),
        )
