"""The HNV contract's wire format: call data, event topics and log decoding.

Pure functions over bytes; no I/O. Decoded amounts are integers in base
units, addresses are checksummed, and every log is checked to come from the
expected contract before it is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak

from haven.types import ChecksumAddress, IntentId, Wei, checksum


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def _topic(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


MINTER_ROLE = keccak(text="MINTER_ROLE")
TRANSFER_TOPIC = _topic("Transfer(address,address,uint256)")
REWARD_MINTED_TOPIC = _topic("RewardMinted(bytes32,address,uint256,address)")

_MINT_REWARD = _selector("mintReward(address,uint256,bytes32)")
_GRANT_ROLE = _selector("grantRole(bytes32,address)")
_REVOKE_ROLE = _selector("revokeRole(bytes32,address)")
_HAS_ROLE = _selector("hasRole(bytes32,address)")
_TOTAL_SUPPLY = _selector("totalSupply()")
_BALANCE_OF = _selector("balanceOf(address)")
_IS_MINTED = _selector("isMinted(bytes32)")

# Custom errors of HNV and OpenZeppelin, by selector, for revert reasons.
ERRORS = {
    _selector("IntentAlreadyMinted(bytes32)"): "IntentAlreadyMinted",
    _selector("ZeroAmount()"): "ZeroAmount",
    _selector(
        "AccessControlUnauthorizedAccount(address,bytes32)"
    ): "AccessControlUnauthorizedAccount",
    _selector("ERC20InvalidReceiver(address)"): "ERC20InvalidReceiver",
}


def mint_reward_data(
    to: ChecksumAddress, amount_wei: Wei, intent_id: IntentId
) -> bytes:
    """Return the call data of ``mintReward(to, amount, intentId)``."""
    if amount_wei <= 0:
        raise ValueError(f"mint amount must be positive, got {amount_wei}")
    if len(intent_id) != 32:
        raise ValueError(f"intent id must be 32 bytes, got {len(intent_id)}")
    return _MINT_REWARD + encode(
        ["address", "uint256", "bytes32"], [to, amount_wei, intent_id]
    )


def grant_role_data(role: bytes, account: ChecksumAddress) -> bytes:
    return _GRANT_ROLE + encode(["bytes32", "address"], [role, account])


def revoke_role_data(role: bytes, account: ChecksumAddress) -> bytes:
    return _REVOKE_ROLE + encode(["bytes32", "address"], [role, account])


def has_role_data(role: bytes, account: ChecksumAddress) -> bytes:
    return _HAS_ROLE + encode(["bytes32", "address"], [role, account])


def total_supply_data() -> bytes:
    return _TOTAL_SUPPLY


def balance_of_data(account: ChecksumAddress) -> bytes:
    return _BALANCE_OF + encode(["address"], [account])


def is_minted_data(intent_id: IntentId) -> bytes:
    return _IS_MINTED + encode(["bytes32"], [intent_id])


def decode_uint(data: bytes) -> int:
    # A uint256 is the first 32-byte word, big-endian: read it directly on
    # the indexing path, and let the ABI decoder word the error of a short one.
    if len(data) >= 32:
        return int.from_bytes(data[:32], "big")
    (value,) = decode(["uint256"], data)
    return int(value)


def decode_bool(data: bytes) -> bool:
    (value,) = decode(["bool"], data)
    return bool(value)


def revert_reason(data: bytes | None) -> str:
    """Name the custom error or Error(string) in revert data, or say unknown."""
    if not data or len(data) < 4:
        return "reverted without data"
    name = ERRORS.get(data[:4])
    if name is not None:
        return name
    if data[:4] == _selector("Error(string)"):
        (message,) = decode(["string"], data[4:])
        return str(message)
    return f"unknown error 0x{data[:4].hex()}"


@dataclass(frozen=True)
class LogPosition:
    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes


@dataclass(frozen=True)
class Transfer:
    position: LogPosition
    from_address: ChecksumAddress
    to_address: ChecksumAddress
    amount_wei: Wei


@dataclass(frozen=True)
class RewardMinted:
    position: LogPosition
    intent_id: IntentId
    to_address: ChecksumAddress
    amount_wei: Wei
    minter: ChecksumAddress


def _position(log: dict[str, Any]) -> LogPosition:
    return LogPosition(
        block_number=int(log["blockNumber"], 16),
        block_hash=bytes.fromhex(log["blockHash"][2:]),
        log_index=int(log["logIndex"], 16),
        tx_hash=bytes.fromhex(log["transactionHash"][2:]),
    )


def _topic_address(topic: str) -> ChecksumAddress:
    return checksum("0x" + topic[-40:])


def decode_log(
    log: dict[str, Any], token: ChecksumAddress
) -> Transfer | RewardMinted | None:
    """Decode a Transfer or RewardMinted log of ``token``; None for any other log.

    Raises ValueError for a log of the right signature but the wrong shape
    (a lying node), never returns a half-decoded event.
    """
    if checksum(log["address"]) != token:
        raise ValueError(f"log from {log['address']}, expected {token}")
    topics = [t.lower() for t in log.get("topics", [])]
    if not topics:
        return None
    data = bytes.fromhex(log["data"][2:])
    if topics[0] == TRANSFER_TOPIC and len(topics) == 3:
        return Transfer(
            position=_position(log),
            from_address=_topic_address(topics[1]),
            to_address=_topic_address(topics[2]),
            amount_wei=Wei(decode_uint(data)),
        )
    if topics[0] == REWARD_MINTED_TOPIC and len(topics) == 4:
        return RewardMinted(
            position=_position(log),
            intent_id=IntentId(bytes.fromhex(topics[1][2:])),
            to_address=_topic_address(topics[2]),
            amount_wei=Wei(decode_uint(data)),
            minter=_topic_address(topics[3]),
        )
    if topics[0] in (TRANSFER_TOPIC, REWARD_MINTED_TOPIC):
        raise ValueError(f"malformed event log: {len(topics)} topics for {topics[0]}")
    return None
