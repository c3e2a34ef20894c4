"""The HNV token contract, deployed from its committed artifact to a real anvil.

Logs are decoded here by hand, topic by topic, rather than through web3's event
helpers: the listeners filter on these exact topics, so the layout is what the
tests must pin down. Custom errors are matched as raw revert data for the same
reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from eth_abi.abi import decode, encode
from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractCustomError
from web3.types import LogReceipt, TxReceipt

from harness.anvil import DEV_KEYS, AnvilNode
from haven import contracts

# Derived from the keys rather than read from DEV_ADDRESSES, whose entry 3 does
# not match its key (it even fails the EIP-55 checksum).
ADMIN, MINTER, HOLDER, OTHER = (Account.from_key(key).address for key in DEV_KEYS[:4])
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

MINTER_ROLE = keccak(text="MINTER_ROLE")
INTENT_ID = keccak(text="partner-a:event-1")
OTHER_INTENT_ID = keccak(text="partner-a:event-2")
REWARD_WEI = 25 * 10**18 + 1

TRANSFER = "Transfer(address,address,uint256)"
REWARD_MINTED = "RewardMinted(bytes32,address,uint256,address)"

Web3Client = AsyncWeb3[AsyncHTTPProvider]

RECEIPT_TIMEOUT_S = 10
# A revert is only mined when gas estimation is skipped, which a fixed limit does.
REVERTING_TX_GAS = 200_000


# -- helpers -----------------------------------------------------------------


def custom_error(
    signature: str, types: Sequence[str] = (), values: Sequence[Any] = ()
) -> str:
    """Return the revert data of a custom error: selector, then ABI-encoded args."""
    selector = keccak(text=signature)[:4]
    return "0x" + (selector + encode(list(types), list(values))).hex()


def topic_address(topic: bytes) -> str:
    """Return the checksummed address held in a 32-byte indexed topic."""
    (address,) = decode(["address"], topic)
    return to_checksum_address(address)


def logs_with_signature(receipt: TxReceipt, signature: str) -> list[LogReceipt]:
    """Return the receipt's logs whose first topic is the event's signature hash."""
    topic0 = keccak(text=signature)
    return [log for log in receipt["logs"] if log["topics"][0] == topic0]


def uint256_data(log: LogReceipt) -> int:
    """Return the single non-indexed uint256 carried in a log's data."""
    (value,) = decode(["uint256"], log["data"])
    return int(value)


async def send(w3: Web3Client, tx_hash: HexBytes) -> TxReceipt:
    """Wait until the transaction is mined and return its receipt.

    anvil mines asynchronously even in automine mode, so the receipt is polled
    for until it exists instead of read right after sending.
    """
    return await w3.eth.wait_for_transaction_receipt(
        tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.05
    )


async def revert_data(call: Any, sender: str) -> str:
    """Simulate a contract call that must revert and return its revert data."""
    with pytest.raises(ContractCustomError) as caught:
        await call.call({"from": sender})
    data = caught.value.data
    assert isinstance(data, str)
    return data


async def mint(
    hnv: AsyncContract, w3: Web3Client, to: str, amount_wei: int
) -> TxReceipt:
    """Mint `amount_wei` to `to` as MINTER for INTENT_ID; assert it succeeded."""
    call = hnv.functions.mintReward(to, amount_wei, INTENT_ID)
    receipt = await send(w3, await call.transact({"from": MINTER}))
    assert receipt["status"] == 1
    return receipt


# -- fixtures ----------------------------------------------------------------


@pytest.fixture
async def w3(anvil: AnvilNode) -> AsyncIterator[Web3Client]:
    """An async web3 client of the test's anvil, disconnected afterwards."""
    timeout = aiohttp.ClientTimeout(total=10)
    provider = AsyncHTTPProvider(anvil.url, request_kwargs={"timeout": timeout})
    client = AsyncWeb3(provider)
    yield client
    await provider.disconnect()


@pytest.fixture
async def hnv(w3: Web3Client) -> AsyncContract:
    """HNV deployed by ADMIN, with MINTER_ROLE granted to MINTER and nobody else."""
    factory = w3.eth.contract(abi=contracts.abi(), bytecode=contracts.bytecode())
    deploy_hash = await factory.constructor(ADMIN).transact({"from": ADMIN})
    receipt = await send(w3, deploy_hash)
    assert receipt["status"] == 1

    token = w3.eth.contract(address=receipt["contractAddress"], abi=contracts.abi())
    assert isinstance(token, AsyncContract)
    grant = token.functions.grantRole(MINTER_ROLE, MINTER)
    assert (await send(w3, await grant.transact({"from": ADMIN})))["status"] == 1
    return token


# -- tests -------------------------------------------------------------------


async def test_token_is_named_haven_with_symbol_hnv_and_18_decimals(
    hnv: AsyncContract,
) -> None:
    assert await hnv.functions.name().call() == "HAVEN"
    assert await hnv.functions.symbol().call() == "HNV"
    assert await hnv.functions.decimals().call() == 18
    assert await hnv.functions.totalSupply().call() == 0


async def test_deployment_makes_the_admin_role_admin_but_not_a_minter(
    hnv: AsyncContract,
) -> None:
    admin_role = await hnv.functions.DEFAULT_ADMIN_ROLE().call()

    assert await hnv.functions.MINTER_ROLE().call() == MINTER_ROLE
    assert await hnv.functions.hasRole(admin_role, ADMIN).call()
    assert not await hnv.functions.hasRole(MINTER_ROLE, ADMIN).call()


async def test_mint_reward_by_an_account_without_minter_role_reverts_unauthorized(
    hnv: AsyncContract,
) -> None:
    call = hnv.functions.mintReward(HOLDER, REWARD_WEI, INTENT_ID)

    for outsider in (ADMIN, OTHER):
        expected = custom_error(
            "AccessControlUnauthorizedAccount(address,bytes32)",
            ["address", "bytes32"],
            [outsider, MINTER_ROLE],
        )
        assert await revert_data(call, outsider) == expected


async def test_mint_reward_emits_transfer_from_zero_then_reward_minted(
    hnv: AsyncContract, w3: Web3Client
) -> None:
    receipt = await mint(hnv, w3, HOLDER, REWARD_WEI)

    assert [log["address"] for log in receipt["logs"]] == [hnv.address] * 2
    (transfer,) = logs_with_signature(receipt, TRANSFER)
    (rewarded,) = logs_with_signature(receipt, REWARD_MINTED)
    assert transfer["logIndex"] < rewarded["logIndex"]

    assert topic_address(transfer["topics"][1]) == ZERO_ADDRESS
    assert topic_address(transfer["topics"][2]) == HOLDER
    assert uint256_data(transfer) == REWARD_WEI

    assert bytes(rewarded["topics"][1]) == INTENT_ID
    assert topic_address(rewarded["topics"][2]) == HOLDER
    assert topic_address(rewarded["topics"][3]) == MINTER
    assert uint256_data(rewarded) == REWARD_WEI


async def test_mint_reward_credits_the_recipient_and_the_total_supply(
    hnv: AsyncContract, w3: Web3Client
) -> None:
    await mint(hnv, w3, HOLDER, REWARD_WEI)

    assert await hnv.functions.balanceOf(HOLDER).call() == REWARD_WEI
    assert await hnv.functions.totalSupply().call() == REWARD_WEI


async def test_second_mint_for_the_same_intent_reverts_and_mints_nothing(
    hnv: AsyncContract, w3: Web3Client
) -> None:
    await mint(hnv, w3, HOLDER, REWARD_WEI)
    # A different recipient and amount: the intent id alone must block it.
    retry = hnv.functions.mintReward(OTHER, 7, INTENT_ID)

    expected = custom_error("IntentAlreadyMinted(bytes32)", ["bytes32"], [INTENT_ID])
    assert await revert_data(retry, MINTER) == expected

    tx_hash = await retry.transact({"from": MINTER, "gas": REVERTING_TX_GAS})
    assert (await send(w3, tx_hash))["status"] == 0
    assert await hnv.functions.totalSupply().call() == REWARD_WEI
    assert await hnv.functions.balanceOf(OTHER).call() == 0


async def test_is_minted_is_true_only_for_intents_that_were_minted(
    hnv: AsyncContract, w3: Web3Client
) -> None:
    assert not await hnv.functions.isMinted(INTENT_ID).call()

    await mint(hnv, w3, HOLDER, REWARD_WEI)

    assert await hnv.functions.isMinted(INTENT_ID).call()
    assert not await hnv.functions.isMinted(OTHER_INTENT_ID).call()


async def test_mint_reward_of_zero_reverts_zero_amount(hnv: AsyncContract) -> None:
    call = hnv.functions.mintReward(HOLDER, 0, INTENT_ID)

    assert await revert_data(call, MINTER) == custom_error("ZeroAmount()")


async def test_mint_reward_to_the_zero_address_reverts_invalid_receiver(
    hnv: AsyncContract,
) -> None:
    call = hnv.functions.mintReward(ZERO_ADDRESS, REWARD_WEI, INTENT_ID)

    expected = custom_error(
        "ERC20InvalidReceiver(address)", ["address"], [ZERO_ADDRESS]
    )
    assert await revert_data(call, MINTER) == expected


async def test_burn_by_a_holder_emits_transfer_to_zero(
    hnv: AsyncContract, w3: Web3Client
) -> None:
    await mint(hnv, w3, HOLDER, REWARD_WEI)
    burned_wei = 10**18

    burn_hash = await hnv.functions.burn(burned_wei).transact({"from": HOLDER})
    receipt = await send(w3, burn_hash)

    assert receipt["status"] == 1
    (transfer,) = logs_with_signature(receipt, TRANSFER)
    assert topic_address(transfer["topics"][1]) == HOLDER
    assert topic_address(transfer["topics"][2]) == ZERO_ADDRESS
    assert uint256_data(transfer) == burned_wei
    assert await hnv.functions.totalSupply().call() == REWARD_WEI - burned_wei
