"""A golden table of real node error strings and the kind each must get.

Each wording is what a client puts in the JSON-RPC error object for
``eth_sendRawTransaction`` (details such as addresses and amounts included,
since providers pass them through). The anvil rows were captured from the
anvil this project pins; the others come from each client's source.
"""

from __future__ import annotations

import pytest

from haven import chain

ADDR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

GOLDEN: list[tuple[str, int, str, str]] = [
    # geth (core/error.go, core/txpool/errors.go, internal/ethapi)
    (
        "geth",
        -32000,
        f"nonce too low: address {ADDR}, tx: 3 state: 5",
        chain.NONCE_TOO_LOW,
    ),
    (
        "geth",
        -32000,
        f"nonce too high: address {ADDR}, tx: 9 state: 5",
        chain.NONCE_TOO_HIGH,
    ),
    ("geth", -32000, "already known", chain.ALREADY_KNOWN),
    (
        "geth",
        -32000,
        "replacement transaction underpriced",
        chain.REPLACEMENT_UNDERPRICED,
    ),
    (
        "geth",
        -32000,
        f"insufficient funds for gas * price + value: address {ADDR} "
        "have 0 want 4000000000000000",
        chain.INSUFFICIENT_FUNDS,
    ),
    (
        "geth",
        -32000,
        f"max fee per gas less than block base fee: address {ADDR}, "
        "maxFeePerGas: 1000000000, baseFee: 2000000000",
        chain.FEE_CAP_BELOW_BASE_FEE,
    ),
    (
        "geth",
        -32000,
        f"max priority fee per gas higher than max fee per gas: address {ADDR}, "
        "maxPriorityFeePerGas: 2, maxFeePerGas: 1",
        chain.TIP_ABOVE_FEE_CAP,
    ),
    (
        "geth",
        -32000,
        "intrinsic gas too low: gas 20000, minimum needed 21000",
        chain.INTRINSIC_GAS,
    ),
    ("geth", -32000, "exceeds block gas limit", chain.GAS_LIMIT),
    (
        "geth",
        -32000,
        "invalid sender: invalid chain id for signer: have 1 want 31337",
        chain.CHAIN_ID_MISMATCH,
    ),
    (
        "geth",
        -32000,
        "only replay-protected (EIP-155) transactions allowed over RPC",
        chain.CHAIN_ID_MISMATCH,
    ),
    (
        "geth",
        -32000,
        "transaction underpriced: gas tip cap 1, minimum needed 1000000",
        chain.UNDERPRICED,
    ),
    (
        "geth",
        -32000,
        "transaction gas price below minimum: gas tip cap 0, minimum needed 1000000",
        chain.UNDERPRICED,
    ),
    ("geth", -32000, "txpool is full", chain.POOL_FULL),
    ("geth", -32000, "account limit exceeded", chain.POOL_FULL),
    (
        "geth",
        -32000,
        "tx fee (1.10 ether) exceeds the configured cap (1.00 ether)",
        chain.TX_FEE_TOO_HIGH,
    ),
    # anvil 1.7.1 (captured)
    ("anvil", -32003, "transaction already imported", chain.ALREADY_KNOWN),
    ("anvil", -32003, "nonce too low", chain.NONCE_TOO_LOW),
    ("anvil", -32003, "Nonce too high", chain.NONCE_TOO_HIGH),
    (
        "anvil",
        -32003,
        "replacement transaction underpriced",
        chain.REPLACEMENT_UNDERPRICED,
    ),
    (
        "anvil",
        -32003,
        "max fee per gas less than block base fee",
        chain.FEE_CAP_BELOW_BASE_FEE,
    ),
    (
        "anvil",
        -32003,
        "Insufficient funds for gas * price + value",
        chain.INSUFFICIENT_FUNDS,
    ),
    ("anvil", -32000, "intrinsic gas too low", chain.INTRINSIC_GAS),
    (
        "anvil",
        -32000,
        "intrinsic gas too high -- tx.gas_limit > env.block.gas_limit",
        chain.GAS_LIMIT,
    ),
    ("anvil", -32003, "invalid chain id for signer", chain.CHAIN_ID_MISMATCH),
    # reth (rpc-eth-types RpcInvalidTransactionError, transaction-pool PoolError)
    ("reth", -32003, "nonce too low: next nonce 5, tx nonce 3", chain.NONCE_TOO_LOW),
    ("reth", -32003, "nonce too high", chain.NONCE_TOO_HIGH),
    ("reth", -32000, "transaction already imported", chain.ALREADY_KNOWN),
    (
        "reth",
        -32003,
        "insufficient funds for gas * price + value: have 0 want 100",
        chain.INSUFFICIENT_FUNDS,
    ),
    ("reth", -32003, "transaction underpriced", chain.UNDERPRICED),
    ("reth", -32000, "txpool is full", chain.POOL_FULL),
    # erigon (txpool DiscardReason, prefixed by the RPC daemon's import result)
    ("erigon", -32000, "ALREADY_EXISTS: already known", chain.ALREADY_KNOWN),
    (
        "erigon",
        -32000,
        "INTERNAL_ERROR: existing tx with same hash",
        chain.ALREADY_KNOWN,
    ),
    ("erigon", -32000, "INVALID: nonce too low", chain.NONCE_TOO_LOW),
    (
        "erigon",
        -32000,
        "FEE_TOO_LOW: replacement transaction underpriced",
        chain.REPLACEMENT_UNDERPRICED,
    ),
    (
        "erigon",
        -32000,
        "FEE_TOO_LOW: could not replace existing tx",
        chain.REPLACEMENT_UNDERPRICED,
    ),
    ("erigon", -32000, "FEE_TOO_LOW: fee too low", chain.UNDERPRICED),
    ("erigon", -32000, "INVALID: insufficient funds", chain.INSUFFICIENT_FUNDS),
    ("erigon", -32000, "INVALID: IntrinsicGas", chain.INTRINSIC_GAS),
    ("erigon", -32000, "INVALID: invalid sender", chain.CHAIN_ID_MISMATCH),
    ("erigon", -32000, "INTERNAL_ERROR: pending sub-pool is full", chain.POOL_FULL),
    # nethermind (AcceptTxResult with its message)
    ("nethermind", -32010, "AlreadyKnown", chain.ALREADY_KNOWN),
    (
        "nethermind",
        -32010,
        "OldNonce, Current nonce: 5, nonce of rejected tx: 3",
        chain.NONCE_TOO_LOW,
    ),
    (
        "nethermind",
        -32010,
        "NonceGap, Future nonce. Expected nonce: 5",
        chain.NONCE_TOO_HIGH,
    ),
    (
        "nethermind",
        -32010,
        "InsufficientFunds, Account balance: 0, cumulative cost: 4000000000000000",
        chain.INSUFFICIENT_FUNDS,
    ),
    (
        "nethermind",
        -32010,
        "FeeTooLow, MaxFeePerGas too low. MaxFeePerGas: 1, BaseFee: 7, "
        "MaxPriorityFeePerGas:1, Block number: 5",
        chain.FEE_CAP_BELOW_BASE_FEE,
    ),
    ("nethermind", -32010, "FeeTooLowToCompete", chain.UNDERPRICED),
    (
        "nethermind",
        -32010,
        "GasLimitExceeded, Gas limit: 30000000, gas limit of rejected tx: 40000000",
        chain.GAS_LIMIT,
    ),
    ("nethermind", -32010, "ReplacementNotAllowed", chain.REPLACEMENT_UNDERPRICED),
    # besu (RpcErrorType)
    ("besu", -32001, "Nonce too low", chain.NONCE_TOO_LOW),
    ("besu", -32006, "Nonce too high", chain.NONCE_TOO_HIGH),
    ("besu", -32000, "Known transaction", chain.ALREADY_KNOWN),
    (
        "besu",
        -32000,
        "Replacement transaction underpriced",
        chain.REPLACEMENT_UNDERPRICED,
    ),
    ("besu", -32004, "Upfront cost exceeds account balance", chain.INSUFFICIENT_FUNDS),
    ("besu", -32009, "Gas price below current base fee", chain.FEE_CAP_BELOW_BASE_FEE),
    ("besu", -32009, "Gas price below configured minimum gas price", chain.UNDERPRICED),
    ("besu", -32003, "Intrinsic gas exceeds gas limit", chain.INTRINSIC_GAS),
    ("besu", -32005, "Transaction gas limit exceeds block gas limit", chain.GAS_LIMIT),
    ("besu", -32000, "Wrong chainId", chain.CHAIN_ID_MISMATCH),
    (
        "besu",
        -32000,
        "Max priority fee per gas exceeds max fee per gas",
        chain.TIP_ABOVE_FEE_CAP,
    ),
    (
        "besu",
        -32000,
        "Transaction nonce is too distant from current sender nonce",
        chain.NONCE_TOO_HIGH,
    ),
    ("besu", -32000, "Transaction fee cap exceeded", chain.TX_FEE_TOO_HIGH),
]


@pytest.mark.parametrize(
    ("client", "code", "message", "kind"),
    GOLDEN,
    ids=[f"{row[0]}:{row[2][:40]}" for row in GOLDEN],
)
def test_each_real_wording_gets_the_kind_its_handling_needs(
    client: str, code: int, message: str, kind: str
):
    assert chain.classify(code, message) == kind


def test_the_table_covers_every_kind_the_submitter_decides_on():
    covered = {row[3] for row in GOLDEN}
    decided = {
        chain.NONCE_TOO_LOW,
        chain.NONCE_TOO_HIGH,
        chain.ALREADY_KNOWN,
        chain.REPLACEMENT_UNDERPRICED,
        chain.INSUFFICIENT_FUNDS,
        chain.FEE_CAP_BELOW_BASE_FEE,
        chain.TIP_ABOVE_FEE_CAP,
        chain.UNDERPRICED,
        chain.INTRINSIC_GAS,
        chain.GAS_LIMIT,
        chain.TX_FEE_TOO_HIGH,
        chain.CHAIN_ID_MISMATCH,
        chain.POOL_FULL,
    }
    assert decided <= covered
    for client in ("geth", "anvil", "erigon", "nethermind", "besu"):
        assert any(row[0] == client for row in GOLDEN)
