from __future__ import annotations

import pytest

from harness.anvil import AnvilNode, free_port
from haven import chain, metrics
from haven.chain import ChainClient
from haven.errors import ChainMismatchError, RpcResponseError, RpcUnavailableError


async def test_a_dead_endpoint_fails_over_to_the_next(anvil: AnvilNode):
    dead = f"http://127.0.0.1:{free_port()}"

    async with ChainClient([dead, anvil.url], chain_id=anvil.chain_id) as client:
        number = await client.block_number()
        again = await client.block_number()

    assert number == again == await anvil.block_number()
    assert client.urls[0] == anvil.url


async def test_no_endpoint_answering_is_unavailable_not_an_answer():
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]

    async with ChainClient(urls, chain_id=1, timeout_s=2) as client:
        with pytest.raises(RpcUnavailableError, match="no endpoint answered"):
            await client.block_number()


async def test_the_wrong_chain_is_a_configuration_error_naming_both_ids(
    anvil: AnvilNode,
):
    async with ChainClient([anvil.url], chain_id=1) as client:
        with pytest.raises(ChainMismatchError, match=r"31337.*HAVEN_CHAIN_ID=1"):
            await client.verify_chain_id()


async def test_node_errors_carry_code_message_and_kind(anvil: AnvilNode):
    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as client:
        with pytest.raises(RpcResponseError) as caught:
            await client.send_raw_transaction(b"\x02\xf8garbage")

    assert caught.value.method == "eth_sendRawTransaction"
    assert caught.value.message
    assert (
        caught.value.kind in {chain.UNKNOWN, chain.INTRINSIC_GAS} or caught.value.kind
    )


def rpc_errors(kind: str) -> float:
    """Read haven_rpc_errors_total{kind} from the process's registry."""
    found = metrics.EVENTS.get_sample_value("haven_rpc_errors_total", {"kind": kind})
    return found or 0.0


async def test_an_endpoint_that_does_not_answer_counts_an_unavailable_rpc_error():
    dead = f"http://127.0.0.1:{free_port()}"
    before = rpc_errors(chain.UNAVAILABLE)

    async with ChainClient([dead], chain_id=1, timeout_s=2) as client:
        with pytest.raises(RpcUnavailableError):
            await client.block_number()

    assert rpc_errors(chain.UNAVAILABLE) == before + 1


async def test_a_node_error_counts_an_rpc_error_of_its_kind(anvil: AnvilNode):
    before = rpc_errors(chain.UNKNOWN)

    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as client:
        with pytest.raises(RpcResponseError) as caught:
            await client.call("eth_noSuchMethod")

    assert caught.value.kind == chain.UNKNOWN
    assert rpc_errors(chain.UNKNOWN) == before + 1


async def test_a_missing_receipt_is_none_not_an_error(anvil: AnvilNode):
    async with ChainClient([anvil.url], chain_id=anvil.chain_id) as client:
        receipt = await client.get_receipt("0x" + "11" * 32)

    assert receipt is None


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (-32000, "nonce too low", chain.NONCE_TOO_LOW),
        (-32003, "Nonce too high", chain.NONCE_TOO_HIGH),
        (-32000, "already known", chain.ALREADY_KNOWN),
        (-32003, "transaction already imported", chain.ALREADY_KNOWN),
        (-32000, "replacement transaction underpriced", chain.REPLACEMENT_UNDERPRICED),
        (
            -32000,
            "max fee per gas less than block base fee: "
            "address 0x1, maxFeePerGas: 1, baseFee: 7",
            chain.FEE_CAP_BELOW_BASE_FEE,
        ),
        (
            -32000,
            "insufficient funds for gas * price + value",
            chain.INSUFFICIENT_FUNDS,
        ),
        (-32000, "intrinsic gas too low", chain.INTRINSIC_GAS),
        (-32000, "invalid chain id for signer", chain.CHAIN_ID_MISMATCH),
        (-32602, "query returned more than 10000 results", chain.RANGE_TOO_LARGE),
        (
            -32005,
            "daily request count exceeded, request rate limited",
            chain.RATE_LIMITED,
        ),
        (3, "execution reverted", chain.EXECUTION_REVERTED),
        (-32601, "the method eth_foo does not exist/is not available", chain.UNKNOWN),
    ],
)
def test_node_error_wordings_are_classified(code: int, message: str, kind: str):
    assert chain.classify(code, message) == kind
