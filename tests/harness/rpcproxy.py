"""A fault-injecting JSON-RPC proxy with a transaction pool's manners, for tests.

anvil is too forgiving to test a transaction manager against: it accepts a
replacement that raises the fee cap by one wei and ignores the tip, it never
loses a transaction, and it never goes down. This proxy sits in front of it
and adds, at run time:

* rules per method (:class:`Rule`): answer with an error object, drop the
  request (HTTP 502, never forwarded), forward and then drop the answer
  (the node acted, the caller never heard), or delay — for ``times`` calls
  or until removed;
* ``down``: every request fails at the transport level (HTTP 503, not JSON);
* geth's replacement rule (``replacement_rule=True``): a second transaction
  at the same sender and nonce must raise both the tip and the fee cap
  strictly and by at least 10%, or it is refused with geth's
  ``replacement transaction underpriced``;
* ``hold_sends``: accept raw transactions and answer their hash, but keep
  them here instead of forwarding — a node that never propagates them.
  :meth:`RpcProxy.release_held` forwards the best of each nonce later;
* ``mine_each_send``: mine a block (``evm_mine``) after forwarding each
  accepted transaction and before answering, so its sender learns of the
  send only once it is mined — automine without its race;
* ``track_head``: record, for every forwarded send, the head read from
  the node after forwarding it and before answering;
* ``track_in_flight``: record, for every send, how many of the sender's
  nonces up to this one are not yet mined (``nonce - latest + 1``, with
  ``latest`` read from the node at that instant).

Every raw transaction seen is kept in :attr:`RpcProxy.sends`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import rlp
from aiohttp import web
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from harness.anvil import free_port

ERROR = "error"
DROP = "drop"
DROP_RESPONSE = "drop_response"
DELAY = "delay"
ACTIONS = (ERROR, DROP, DROP_RESPONSE, DELAY)

FORWARDED = "forwarded"
HELD = "held"
REFUSED = "refused"

UNDERPRICED_MESSAGE = "replacement transaction underpriced"
PRICE_BUMP_PERCENT = 10


@dataclass
class Rule:
    """One fault: what to do to calls of ``method`` (every method when None)."""

    action: str
    method: str | None = None
    code: int = -32000
    message: str = "injected failure"
    delay_s: float = 0.0
    times: int | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"rule action must be one of {ACTIONS}, got {self.action}")

    def matches(self, method: str) -> bool:
        exhausted = self.times is not None and self.hits >= self.times
        return not exhausted and self.method in (None, method)


@dataclass(frozen=True)
class RawTx:
    """The parts of a signed transaction the pool rules need."""

    sender: str
    nonce: int
    tip_wei: int
    fee_cap_wei: int
    tx_hash: str
    raw: str

    @classmethod
    def decode(cls, raw_hex: str) -> RawTx:
        raw = bytes.fromhex(raw_hex.removeprefix("0x"))
        sender = to_checksum_address(Account.recover_transaction(raw))
        tx_hash = "0x" + keccak(raw).hex()
        if raw[0] >= 0xC0:  # legacy: [nonce, gasPrice, ...]
            fields = rlp.decode(raw)
            price = _int(fields[1])
            return cls(sender, _int(fields[0]), price, price, tx_hash, raw_hex)
        fields = rlp.decode(raw[1:])
        if raw[0] == 1:  # EIP-2930: [chainId, nonce, gasPrice, ...]
            price = _int(fields[2])
            return cls(sender, _int(fields[1]), price, price, tx_hash, raw_hex)
        # EIP-1559 and later: [chainId, nonce, tip, feeCap, ...]
        return cls(
            sender, _int(fields[1]), _int(fields[2]), _int(fields[3]), tx_hash, raw_hex
        )


@dataclass(frozen=True)
class Sent:
    """One ``eth_sendRawTransaction`` as the proxy saw it."""

    tx: RawTx
    outcome: str  # FORWARDED, HELD or REFUSED (by the proxy itself)
    in_flight: int | None = None
    # With track_head: the head read after forwarding it, before answering —
    # at least the block the node took it at.
    head: int | None = None


def replaces(new: RawTx, old: RawTx) -> bool:
    """Tell whether geth would let ``new`` replace ``old`` (same sender and nonce)."""
    if new.tip_wei <= old.tip_wei or new.fee_cap_wei <= old.fee_cap_wei:
        return False
    bump = 100 + PRICE_BUMP_PERCENT
    return (
        new.tip_wei * 100 >= old.tip_wei * bump
        and new.fee_cap_wei * 100 >= old.fee_cap_wei * bump
    )


@dataclass
class _Pool:
    """What the proxy believes the node holds: the accepted tx per sender and nonce."""

    accepted: dict[tuple[str, int], RawTx] = field(default_factory=dict)
    held: dict[tuple[str, int], RawTx] = field(default_factory=dict)


class RpcProxy:
    """An aiohttp JSON-RPC server forwarding to ``upstream``, with faults."""

    def __init__(
        self,
        upstream: str,
        *,
        replacement_rule: bool = False,
        track_in_flight: bool = False,
        track_head: bool = False,
        mine_each_send: bool = False,
    ) -> None:
        self.upstream = upstream
        self.replacement_rule = replacement_rule
        self.track_in_flight = track_in_flight
        self.track_head = track_head
        self.mine_each_send = mine_each_send
        self.down = False
        self.hold_sends = False
        self.rules: list[Rule] = []
        self.sends: list[Sent] = []
        self.calls: Counter[str] = Counter()
        self.url = ""
        self._pool = _Pool()
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # --- control ------------------------------------------------------------

    def add_rule(self, action: str, method: str | None = None, **fields: Any) -> Rule:
        """Add a fault and return it (remove it with :meth:`remove_rule`)."""
        rule = Rule(action, method, **fields)
        self.rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        self.rules.remove(rule)

    def clear_rules(self) -> None:
        self.rules.clear()

    def refused(self) -> list[Sent]:
        """Return the sends the proxy refused under the replacement rule."""
        return [s for s in self.sends if s.outcome == REFUSED]

    async def release_held(self) -> list[str]:
        """Forward the best held transaction of each sender and nonce; stop holding.

        Returns the hashes forwarded, in nonce order.
        """
        self.hold_sends = False
        async with self._lock:
            held = sorted(self._pool.held.values(), key=lambda t: (t.sender, t.nonce))
            self._pool.held.clear()
        released = []
        for tx in held:
            await self._forward("eth_sendRawTransaction", [tx.raw])
            released.append(tx.tx_hash)
        return released

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- serving ------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return web.Response(status=503, text="proxy is down")
        body = await request.json()
        method = str(body.get("method", ""))
        params = list(body.get("params", []))
        self.calls[method] += 1
        rule = next((r for r in self.rules if r.matches(method)), None)
        if rule is not None:
            rule.hits += 1
            early = await self._apply(rule, body.get("id"))
            if early is not None:
                return early
        answer = await self._answer(method, params)
        if rule is not None and rule.action == DROP_RESPONSE:
            return web.Response(status=502, text="bad gateway")
        answer["id"] = body.get("id")
        return web.json_response(answer)

    async def _apply(self, rule: Rule, request_id: Any) -> web.StreamResponse | None:
        if rule.action == ERROR:
            return web.json_response(
                _error(rule.code, rule.message) | {"id": request_id}
            )
        if rule.action == DROP:
            return web.Response(status=502, text="bad gateway")
        if rule.action == DELAY:
            await asyncio.sleep(rule.delay_s)
        return None

    async def _answer(self, method: str, params: list[Any]) -> dict[str, Any]:
        if method == "eth_sendRawTransaction":
            return await self._send(RawTx.decode(params[0]))
        if method == "eth_getTransactionCount" and self._pool.held:
            return await self._count_with_held(params)
        return await self._forward(method, params)

    async def _send(self, tx: RawTx) -> dict[str, Any]:
        async with self._lock:
            key = (tx.sender, tx.nonce)
            old = self._pool.held.get(key) or self._pool.accepted.get(key)
            if await self._underpriced(tx, old):
                self.sends.append(Sent(tx, REFUSED))
                return _error(-32000, UNDERPRICED_MESSAGE)
            in_flight = await self._in_flight(tx)
            if self.hold_sends:
                if old is not None and old.tx_hash == tx.tx_hash:
                    return _error(-32000, "already known")
                self._pool.held[key] = tx
                self.sends.append(Sent(tx, HELD, in_flight))
                return _ok(tx.tx_hash)
            answer = await self._forward("eth_sendRawTransaction", [tx.raw])
            head = None
            if "error" not in answer:
                self._pool.accepted[key] = tx
                if self.mine_each_send:
                    await self._result("evm_mine", [])
                if self.track_head:
                    head = int(await self._result("eth_blockNumber", []), 16)
            self.sends.append(Sent(tx, FORWARDED, in_flight, head))
            return answer

    async def _underpriced(self, tx: RawTx, old: RawTx | None) -> bool:
        if not self.replacement_rule or old is None or old.tx_hash == tx.tx_hash:
            return False
        return not replaces(tx, old) and await self._still_pending(old)

    async def _still_pending(self, old: RawTx) -> bool:
        if (old.sender, old.nonce) in self._pool.held:
            return True
        found = await self._result("eth_getTransactionByHash", [old.tx_hash])
        # Mined: let the node answer "nonce too low". Gone from its pool: the
        # nonce is free for any price, as in geth.
        return found is not None and found.get("blockNumber") is None

    async def _in_flight(self, tx: RawTx) -> int | None:
        if not self.track_in_flight:
            return None
        latest = int(
            await self._result("eth_getTransactionCount", [tx.sender, "latest"]), 16
        )
        return tx.nonce - latest + 1

    async def _count_with_held(self, params: list[Any]) -> dict[str, Any]:
        answer = await self._forward("eth_getTransactionCount", params)
        if params[1] != "pending" or "result" not in answer:
            return answer
        sender = to_checksum_address(params[0])
        count = int(answer["result"], 16)
        while (sender, count) in self._pool.held:
            count += 1
        return _ok(hex(count))

    # --- upstream -----------------------------------------------------------

    async def _forward(self, method: str, params: list[Any]) -> dict[str, Any]:
        assert self._session is not None
        payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self._session.post(self.upstream, json=payload) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
        return answer

    async def _result(self, method: str, params: list[Any]) -> Any:
        answer = await self._forward(method, params)
        if "error" in answer:
            raise RuntimeError(f"upstream {method} failed: {answer['error']}")
        return answer["result"]


def _int(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _ok(result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": result}


def _error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}}


@asynccontextmanager
async def running_proxy(upstream: str, **options: Any) -> AsyncIterator[RpcProxy]:
    """Run one proxy in front of ``upstream`` for the duration of the block."""
    proxy = RpcProxy(upstream, **options)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
