"""The chain client: JSON-RPC over HTTP to one or more nodes, with failover.

This is the only module that speaks JSON-RPC. It knows nothing of intents or
tables; it translates transport failures into RpcUnavailableError and node
error objects into RpcResponseError with a ``kind`` from :func:`classify`, so
callers decide by kind, never by matching wordings themselves.

Endpoints are tried in order; one that fails at the transport level is put
at the back and the call moves on to the next. A call is retried across
endpoints only when it is safe: every method here is idempotent on the node
(a re-sent raw transaction answers "already known", which callers treat as
success).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from loguru import logger

from haven import metrics
from haven.errors import ChainMismatchError, RpcResponseError, RpcUnavailableError
from haven.settings import mask_endpoint
from haven.types import Nonce, TxHash, Wei

# Kinds of node errors. Each maps to one handling decision of the callers.
NONCE_TOO_LOW = "nonce_too_low"
NONCE_TOO_HIGH = "nonce_too_high"
ALREADY_KNOWN = "already_known"
REPLACEMENT_UNDERPRICED = "replacement_underpriced"
INSUFFICIENT_FUNDS = "insufficient_funds"
FEE_CAP_BELOW_BASE_FEE = "fee_cap_below_base_fee"
TIP_ABOVE_FEE_CAP = "tip_above_fee_cap"
INTRINSIC_GAS = "intrinsic_gas"
GAS_LIMIT = "gas_limit"
CHAIN_ID_MISMATCH = "chain_id_mismatch"
EXECUTION_REVERTED = "execution_reverted"
POOL_FULL = "pool_full"
RANGE_TOO_LARGE = "range_too_large"
RATE_LIMITED = "rate_limited"
UNKNOWN = "unknown"
# The offer is below the node's minimum tip (not a replacement question).
UNDERPRICED = "underpriced"
# The node's own cap on fee x gas (geth --rpc.txfeecap) refuses the offer.
TX_FEE_TOO_HIGH = "tx_fee_too_high"
# Not a node error: no answer at all (counted in haven_rpc_errors only).
UNAVAILABLE = "unavailable"

# Wordings seen from geth, anvil/reth, erigon, nethermind, besu and common
# providers (Alchemy, Infura, QuickNode, Ankr). Order matters: the first
# match wins, so more specific phrases come first.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        (
            ALREADY_KNOWN,
            r"already known|already imported|known transaction|"
            r"already in (the )?(tx)?pool|AlreadyKnown|"
            r"transaction with (the )?same hash|existing txn? with same hash",
        ),
        (
            REPLACEMENT_UNDERPRICED,
            r"replacement transaction underpriced|"
            r"replacement fee too low|ReplacementNotAllowed|"
            r"could not replace existing tx",
        ),
        (
            NONCE_TOO_LOW,
            r"nonce too low|nonce is too low|OldNonce|"
            r"nonce has already been used|invalid nonce.*lower",
        ),
        (
            NONCE_TOO_HIGH,
            r"nonce too high|nonce is too high|nonce gap|"
            r"NonceGap|exceeds the maximum nonce|NonceTooFarInFuture|"
            r"too distant from current sender nonce",
        ),
        (
            INSUFFICIENT_FUNDS,
            r"insufficient funds|InsufficientFunds|"
            r"insufficient balance|sender doesn't have enough funds|"
            r"upfront cost exceeds account balance",
        ),
        (
            FEE_CAP_BELOW_BASE_FEE,
            r"max fee per gas less than block base fee|"
            r"fee cap less than block base fee|"
            r"FeeCapTooLow|feecap too low|"
            r"maxFeePerGas.*below.*base ?fee|MaxFeePerGas too low|"
            r"gas price below (the )?(current|block) base fee",
        ),
        (
            TIP_ABOVE_FEE_CAP,
            r"max priority fee per gas higher than max fee per gas|"
            r"tip higher than fee cap|TipAboveFeeCap|"
            r"max priority fee per gas exceeds max fee per gas",
        ),
        (
            UNDERPRICED,
            r"transaction underpriced|\bunderpriced\b|fee too low|"
            r"FeeTooLow|gas price below (configured )?minimum|gas price too low",
        ),
        (
            INTRINSIC_GAS,
            r"intrinsic gas too low|IntrinsicGasTooLow|\bIntrinsicGas\b|"
            r"intrinsic gas exceeds gas limit|gas too low|out of gas",
        ),
        (
            GAS_LIMIT,
            r"exceeds block gas limit|gas limit reached|GasLimitExceeded|"
            r"intrinsic gas too high",
        ),
        (
            TX_FEE_TOO_HIGH,
            r"exceeds the configured cap|transaction fee cap exceeded",
        ),
        (
            CHAIN_ID_MISMATCH,
            r"invalid chain ?id|chain ?id mismatch|"
            r"incorrect chain ?id|invalid sender|wrong chain ?id|"
            r"only replay-protected|chain ?id (not supported|is required)",
        ),
        (
            POOL_FULL,
            r"txpool is full|transaction pool is full|pool limit|"
            r"sub-pool is full|account limit exceeded",
        ),
        (EXECUTION_REVERTED, r"execution reverted|revert"),
        (
            RANGE_TOO_LARGE,
            r"block range|range (is )?too (large|wide)|"
            r"query returned more than|response size|"
            r"too many (results|logs)|limit exceeded|"
            r"exceed(s|ed)? (max|maximum) (results|block)|"
            r"log response size exceeded|query timeout|"
            r"limited to an? [\d,]+k? (blocks? )?range|ranges? over \d+ blocks|"
            r"too many blocks",
        ),
        (
            RATE_LIMITED,
            r"rate limit|too many requests|capacity exceeded|"
            r"request limit|429",
        ),
    )
)


def classify(code: int, message: str) -> str:
    """Return the kind of a node error from its code and message."""
    for kind, pattern in _PATTERNS:
        if pattern.search(message):
            return kind
    if code == -32005:
        return RATE_LIMITED
    return UNKNOWN


def to_hex(value: int) -> str:
    return hex(value)


def from_hex(value: str | None) -> int:
    if value is None:
        raise ValueError("expected a hex quantity, got null")
    return int(value, 16)


class ChainClient:
    """An async JSON-RPC client over one or more HTTP endpoints.

    Use as an async context manager, or call :meth:`close`. Every call has a
    timeout; a call that no endpoint answers raises RpcUnavailableError.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        chain_id: int,
        timeout_s: float = 10.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one RPC URL is required")
        self.urls = list(urls)
        self.chain_id = chain_id
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> ChainClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def url(self) -> str:
        """The endpoint tried first."""
        return self.urls[0]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, json_serialize=lambda v: orjson.dumps(v).decode()
            )
        return self._session

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Call ``method`` and return its result, failing over between endpoints.

        Raises RpcResponseError when a node answers with an error object (no
        failover: the node understood the request) and RpcUnavailableError
        when no endpoint answers.
        """
        failures = []
        last: RpcUnavailableError | None = None
        for _ in range(len(self.urls)):
            url = self.urls[0]
            try:
                return await self._post(url, method, params)
            except RpcUnavailableError as exc:
                failures.append(f"{mask_endpoint(url)}: {exc}")
                last = exc
                if len(self.urls) > 1:
                    self.urls.append(self.urls.pop(0))
                    logger.warning(
                        "rpc endpoint failed, trying the next", method=method
                    )
        # Chained to the last failure, so callers can tell a timeout apart.
        raise RpcUnavailableError(
            f"{method}: no endpoint answered ({'; '.join(failures)})"
        ) from last

    async def _post(self, url: str, method: str, params: Sequence[Any]) -> Any:
        payload = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": method,
            "params": list(params),
        }
        try:
            async with self._client().post(url, json=payload) as response:
                text = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            metrics.RPC_ERRORS.labels(UNAVAILABLE).inc()
            raise RpcUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            if status == 429:
                metrics.RPC_ERRORS.labels(RATE_LIMITED).inc()
                raise RpcResponseError(
                    method, 429, f"HTTP 429: {text[:200]!r}", RATE_LIMITED
                )
            metrics.RPC_ERRORS.labels(UNAVAILABLE).inc()
            raise RpcUnavailableError(
                f"HTTP {status}, not a JSON-RPC answer: {text[:200]!r}"
            )
        error = body.get("error")
        if error is not None:
            code = int(error.get("code", 0)) if isinstance(error, dict) else 0
            message = (
                str(error.get("message", error))
                if isinstance(error, dict)
                else str(error)
            )
            data = error.get("data") if isinstance(error, dict) else None
            kind = classify(code, message)
            refused = RpcResponseError(method, code, message, kind)
            refused.data = data  # type: ignore[attr-defined]
            metrics.RPC_ERRORS.labels(kind).inc()
            raise refused
        if "result" not in body:
            metrics.RPC_ERRORS.labels(UNAVAILABLE).inc()
            raise RpcUnavailableError(f"answer without result or error: {text[:200]!r}")
        return body["result"]

    # --- typed helpers ---------------------------------------------------

    async def verify_chain_id(self) -> None:
        """Raise ChainMismatchError unless the node serves the configured chain."""
        served = from_hex(await self.call("eth_chainId"))
        if served != self.chain_id:
            raise ChainMismatchError(
                f"node at {mask_endpoint(self.url)} serves chain id {served}, "
                f"expected HAVEN_CHAIN_ID={self.chain_id}"
            )

    async def block_number(self) -> int:
        return from_hex(await self.call("eth_blockNumber"))

    async def get_block(
        self, block: int | str, *, full: bool = False
    ) -> dict[str, Any] | None:
        """Return a block by number or tag (``latest``, ``finalized``), or None."""
        tag = to_hex(block) if isinstance(block, int) else block
        result: dict[str, Any] | None = await self.call(
            "eth_getBlockByNumber", [tag, full]
        )
        return result

    async def get_block_by_hash(self, block_hash: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.call(
            "eth_getBlockByHash", [block_hash, False]
        )
        return result

    async def get_logs(
        self,
        *,
        address: str,
        from_block: int,
        to_block: int,
        topics: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        flt: dict[str, Any] = {
            "address": address,
            "fromBlock": to_hex(from_block),
            "toBlock": to_hex(to_block),
        }
        if topics is not None:
            flt["topics"] = list(topics)
        result: list[dict[str, Any]] = await self.call("eth_getLogs", [flt])
        return result

    async def get_logs_by_block_hash(
        self, *, address: str, block_hash: str, topics: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        flt: dict[str, Any] = {"address": address, "blockHash": block_hash}
        if topics is not None:
            flt["topics"] = list(topics)
        result: list[dict[str, Any]] = await self.call("eth_getLogs", [flt])
        return result

    async def send_raw_transaction(self, raw_tx: bytes) -> TxHash:
        """Broadcast signed bytes; return the node's transaction hash."""
        return TxHash(await self.call("eth_sendRawTransaction", ["0x" + raw_tx.hex()]))

    async def get_receipt(self, tx_hash: str) -> dict[str, Any] | None:
        """Return the receipt, or None while the transaction is not mined.

        ``None`` is not a failure: the transaction may be pending, dropped or
        reorged out; only the caller's bookkeeping can tell which.
        """
        result: dict[str, Any] | None = await self.call(
            "eth_getTransactionReceipt", [tx_hash]
        )
        return result

    async def get_transaction(self, tx_hash: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.call(
            "eth_getTransactionByHash", [tx_hash]
        )
        return result

    async def get_transaction_count(self, address: str, block: str = "latest") -> Nonce:
        return Nonce(
            from_hex(await self.call("eth_getTransactionCount", [address, block]))
        )

    async def get_balance(self, address: str, block: str = "latest") -> Wei:
        return Wei(from_hex(await self.call("eth_getBalance", [address, block])))

    async def eth_call(
        self,
        to: str,
        data: bytes,
        block: str | int = "latest",
        *,
        sender: str | None = None,
    ) -> bytes:
        """Run a call without a transaction; ``sender`` replays one as its signer."""
        tag = to_hex(block) if isinstance(block, int) else block
        call: dict[str, Any] = {"to": to, "data": "0x" + data.hex()}
        if sender is not None:
            call["from"] = sender
        result = await self.call("eth_call", [call, tag])
        return bytes.fromhex(result[2:])

    async def estimate_gas(self, tx: dict[str, Any]) -> int:
        return from_hex(await self.call("eth_estimateGas", [tx]))

    async def fee_history(
        self,
        block_count: int,
        newest: str = "latest",
        percentiles: Sequence[float] = (),
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "eth_feeHistory", [to_hex(block_count), newest, list(percentiles)]
        )
        return result

    async def max_priority_fee(self) -> Wei:
        return Wei(from_hex(await self.call("eth_maxPriorityFeePerGas")))
