from __future__ import annotations

import pytest

from haven import token
from haven.types import (
    ONE_HNV,
    IntentId,
    Wei,
    checksum,
    format_hnv,
    parse_intent_id,
)

TOKEN = checksum("0x5fbdb2315678afecb367f032d93f642f64180aa3")
GUEST = checksum("0x70997970c51812dc3a010c7d01b50e0d17dc79c8")
MINTER = checksum("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc")
INTENT = IntentId(bytes(range(32)))


def topic_of(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


def log(topics: list[str], data: int, address: str = TOKEN) -> dict[str, object]:
    return {
        "address": address.lower(),
        "topics": topics,
        "data": "0x" + data.to_bytes(32, "big").hex(),
        "blockNumber": "0x10",
        "blockHash": "0x" + "ab" * 32,
        "logIndex": "0x2",
        "transactionHash": "0x" + "cd" * 32,
    }


def test_mint_reward_call_data_encodes_recipient_amount_and_intent():
    data = token.mint_reward_data(GUEST, Wei(1080 * ONE_HNV), INTENT)

    assert data[:4].hex() == "87f01976"
    assert data[4 + 12 : 4 + 32].hex() == GUEST[2:].lower()
    assert int.from_bytes(data[36:68], "big") == 1080 * ONE_HNV
    assert data[68:100] == INTENT


def test_mint_reward_refuses_non_positive_amounts():
    with pytest.raises(ValueError, match="positive"):
        token.mint_reward_data(GUEST, Wei(0), INTENT)


def test_reward_minted_log_decodes_to_exact_integers_and_checksummed_addresses():
    entry = log(
        [
            token.REWARD_MINTED_TOPIC,
            "0x" + INTENT.hex(),
            topic_of(GUEST),
            topic_of(MINTER),
        ],
        2**255 + 7,
    )

    event = token.decode_log(entry, TOKEN)

    assert isinstance(event, token.RewardMinted)
    assert event.intent_id == INTENT
    assert event.to_address == GUEST
    assert event.minter == MINTER
    assert event.amount_wei == 2**255 + 7
    assert event.position.block_number == 16 and event.position.log_index == 2


def test_transfer_log_decodes_burns_to_the_zero_address():
    entry = log([token.TRANSFER_TOPIC, topic_of(GUEST), "0x" + "00" * 32], 5)

    event = token.decode_log(entry, TOKEN)

    assert isinstance(event, token.Transfer)
    assert event.from_address == GUEST
    assert event.to_address == "0x0000000000000000000000000000000000000000"


def test_a_log_from_another_contract_is_refused():
    entry = log(
        [token.TRANSFER_TOPIC, topic_of(GUEST), topic_of(MINTER)], 5, address=MINTER
    )

    with pytest.raises(ValueError, match="expected"):
        token.decode_log(entry, TOKEN)


def test_a_log_with_the_right_signature_but_wrong_shape_is_refused():
    entry = log([token.REWARD_MINTED_TOPIC, "0x" + INTENT.hex()], 5)

    with pytest.raises(ValueError, match="malformed"):
        token.decode_log(entry, TOKEN)


def test_revert_reasons_name_the_contracts_custom_errors():
    already = bytes.fromhex("7d73a5ad") + INTENT

    assert token.revert_reason(already) == "IntentAlreadyMinted"
    assert token.revert_reason(bytes.fromhex("1f2a2005")) == "ZeroAmount"
    assert token.revert_reason(b"") == "reverted without data"


def test_hnv_amounts_format_exactly_without_floats():
    assert format_hnv(1080 * ONE_HNV) == "1080"
    assert format_hnv(ONE_HNV // 3) == "0.333333333333333333"
    assert format_hnv(-(10**18 + 1)) == "-1.000000000000000001"


def test_intent_ids_parse_only_as_32_byte_hex():
    assert parse_intent_id("0x" + INTENT.hex()) == INTENT
    for bad in ("0x1234", INTENT.hex(), "0x" + "zz" * 32):
        with pytest.raises(ValueError, match="intent id"):
            parse_intent_id(bad)


def test_addresses_are_checksummed_and_bad_ones_refused():
    assert checksum(GUEST.lower()) == GUEST
    with pytest.raises(ValueError):
        checksum("0x70997970C51812dc3A010C7d01b50e0d17dc79c8")
    with pytest.raises(ValueError):
        checksum("0x1234")
