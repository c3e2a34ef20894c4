"""The submitter: ready intents in, signed and persisted mints out, each paid once.

Every cycle, for each signer that is active or draining and whose lease this
daemon holds (one daemon per signer, see :class:`Submitter`), in this order:

1. observe  — the chain head, the signer's ``latest`` and ``pending`` nonces
   and our counter (``signers.next_nonce``);
2. skip     — nonces mined outside the daemon beyond our counter are skipped,
   with an alert;
3. settle   — for nonces the chain shows used where we have not seen which
   transaction used them, look up the receipts of every attempt at the
   nonce. None of ours, and the intent not minted: the nonce went to a
   transaction from outside the daemon — alert, and the intent gets a fresh
   nonce rather than jamming the signer;
4. tend     — every nonce in ``[latest, next_nonce)``, in nonce order: send
   again the stored bytes a node lacks (a dropped transaction's nonce is
   refilled, never left as a gap) and re-price stuck ones (see stuck.py);
5. allocate — only after 1–4 went through, so a restarted daemon reconciles
   each signer with the chain before any new work; only for active signers;
   up to ``max_in_flight`` unmined nonces, looking again at how many the
   node has mined whenever that room runs out, up to ``cycle_budget``
   nonces a cycle. Intents are signed in runs of a few: a run's attempts,
   nonces and statuses are committed in one transaction *before* any of
   its sends, and the next run is signed while this one is broadcast, runs
   one after the other in nonce order. An intent the contract already
   counts as minted (a restored database) is never signed again: its mint
   is adopted, or held with an alert.

What keeps money safe: a nonce is only taken in the transaction that stores
the signed bytes using it; nothing is sent that is not committed; every
attempt ever signed stays watched, whichever is mined wins; the contract
refuses a second mint of an intent id; and no RPC outage or refusal ever
marks anything failed — only the tailer does, from a reverted receipt.

Crash points (test hooks, free when unset): with ``HAVENTEST_CRASH_AT`` set
to ``<point>`` or ``<point>:<n>``, the process SIGKILLs itself on the n-th
time it reaches the point:

* ``after_allocate`` — nonce taken, attempt recorded, not yet committed;
* ``after_commit``   — a run of signed attempts committed, none yet sent;
* ``after_send``     — a node accepted the bytes, not yet recorded;
* ``after_receipt``  — receipts of ours seen, not yet recorded;
* ``after_bump``     — a replacement committed, not yet sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Generic, ParamSpec, TypeVar

import asyncpg
from loguru import logger

from haven import chain, db, intents, logs, metrics, token
from haven.chain import ChainClient, from_hex
from haven.daemon import (
    alerts_outbox,
    attempts,
    breaker,
    custody,
    fees,
    nonces,
    policy,
    signers,
    stuck,
    transfers,
)
from haven.daemon.alerts_outbox import CRITICAL, WARNING
from haven.daemon.attempts import Attempt
from haven.daemon.fees import Fees, Market
from haven.daemon.leases import LeaseLostError, Leases
from haven.daemon.nonces import ChainView
from haven.errors import (
    ChainMismatchError,
    CustodyError,
    PolicyViolationError,
    RpcResponseError,
    RpcUnavailableError,
)
from haven.intents import Intent
from haven.settings import Settings
from haven.types import ChecksumAddress, IntentId, Nonce, intent_id_hex

P = ParamSpec("P")
T = TypeVar("T")

CRASH_ENV = "HAVENTEST_CRASH_AT"
CRASH_POINTS = (
    "after_allocate",
    "after_commit",
    "after_send",
    "after_receipt",
    "after_bump",
)

# Alert rules raised here; subjects are a signer address or "address:nonce".
NONCE_USED_OUTSIDE = "nonce_used_outside"
NONCE_GAP = "nonce_gap"
SIGNER_OUT_OF_FUNDS = "signer_out_of_funds"
TX_MISCONFIGURED = "tx_misconfigured"
TX_PROPAGATION = "tx_propagation"
FEE_CAP_REACHED = "fee_cap_reached"
TX_HASH_MISMATCH = "tx_hash_mismatch"
RPC_UNEXPECTED = "rpc_unexpected_error"
FOREIGN_MINT = "mint_by_foreign_minter"

# Outcomes of one send.
ACCEPTED = "accepted"  # a node has the bytes
REFUSED = "refused"  # refused for its price: re-price
CONSUMED = "consumed"  # the nonce is used on chain: settled or re-assigned
BLOCKED = "blocked"  # nothing to do for this signer until the next cycle

# Refusals no price fixes: the transaction's own settings are wrong.
_CONFIGURATION_REFUSALS = frozenset(
    {
        chain.INTRINSIC_GAS,
        chain.GAS_LIMIT,
        chain.TX_FEE_TOO_HIGH,
        chain.TIP_ABOVE_FEE_CAP,
    }
)
_BUSY_REFUSALS = frozenset({chain.POOL_FULL, chain.RATE_LIMITED})

SignerLoader = Callable[[str], Awaitable[custody.Signer]]

# Reads asked of the node at once (receipts, minted flags): enough to hide
# its latency, few enough for a rate-limited provider.
READS_AT_ONCE = 8


class CrashPoints:
    """SIGKILL this process at a named step of the send path (test hook)."""

    __slots__ = ("_point", "_remaining")

    def __init__(self, spec: str | None) -> None:
        self._point: str | None = None
        self._remaining = 0
        if not spec:
            return
        point, _, count = spec.partition(":")
        if point not in CRASH_POINTS:
            raise ValueError(
                f"{CRASH_ENV}: got {point!r}; expected one of {', '.join(CRASH_POINTS)}"
            )
        self._point = point
        self._remaining = int(count) if count else 1
        if self._remaining < 1:
            raise ValueError(f"{CRASH_ENV}: the hit count must be 1 or more")

    def hit(self, point: str) -> None:
        """Die here if this is the armed point's n-th hit."""
        if point != self._point:
            return
        self._remaining -= 1
        if self._remaining == 0:
            logger.warning("crash point reached, killing the process", point=point)
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class SubmitterOptions:
    """The submitter's tunables; every default is production-sane."""

    caps: policy.Caps = field(default_factory=policy.Caps)
    stuck_after_blocks: int = 3
    propagation_factor: int = 2
    min_tip_wei: int = 10**8
    fee_history_blocks: int = fees.HISTORY_BLOCKS
    tip_percentile: int = fees.TIP_PERCENTILE
    breaker_failures: int = 3
    breaker_reset_s: float = 5.0
    rpc_attempts: int = 3
    # Intents signed per transaction; the next run is signed while this one
    # is broadcast.
    run_size: int = 8
    settle_batch: int = 64
    # Nonces one cycle takes at most for a signer before settling and
    # tending again; within it, the room max_in_flight leaves is looked up
    # again as the node mines, so a burst is not cut into cycles of that size.
    cycle_budget: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> SubmitterOptions:
        """Return the options ``settings`` declares; the others keep their defaults."""
        caps = policy.Caps(
            per_intent_wei=settings.cap_per_intent_wei,
            partner_daily_wei=settings.cap_partner_daily_wei,
            global_daily_wei=settings.cap_global_daily_wei,
        )
        return cls(
            caps=caps,
            stuck_after_blocks=settings.stuck_after_blocks,
            min_tip_wei=settings.min_tip_wei,
            breaker_failures=settings.rpc_breaker_failures,
            breaker_reset_s=float(settings.rpc_breaker_reset_s),
        )


def lease_of(address: str) -> str:
    """Return the lease that makes one daemon the only one working ``address``."""
    return f"signer:{address}"


class Submitter:
    """Sign, persist and broadcast mints; keep every signer's nonces gap-free.

    With ``leases``, it works only the signers whose ``signer:<address>``
    lease this daemon holds (see :func:`lease_of`), each signer's work as one
    lease step, and every transaction that takes a nonce or records an
    attempt is fenced on the lease after the signer row is locked. Without
    ``leases`` it works every signer: for a daemon that runs alone.
    """

    name = "submitter"

    def __init__(
        self,
        settings: Settings,
        pool: db.Pool,
        chain: ChainClient,
        *,
        options: SubmitterOptions | None = None,
        crash_at: str | None = None,
        load_signer: SignerLoader | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.chain = chain
        self.options = options or SubmitterOptions.from_settings(settings)
        self.token_address = settings.require_token()
        self.policy = policy.Policy.from_settings(settings, caps=self.options.caps)
        self.rules = stuck.Rules(
            stuck_after_blocks=self.options.stuck_after_blocks,
            max_fee_wei=settings.max_fee_wei,
            propagation_factor=self.options.propagation_factor,
        )
        self.breaker = breaker.CircuitBreaker(
            "rpc",
            failure_threshold=self.options.breaker_failures,
            reset_timeout_s=self.options.breaker_reset_s,
            attempts=self.options.rpc_attempts,
        )
        spec = crash_at if crash_at is not None else os.environ.get(CRASH_ENV)
        self.crash = CrashPoints(spec)
        self._load_signer = load_signer or self._load_local_signer
        self.leases = leases
        self._signers: dict[str, custody.Signer] = {}
        self._reconciled: set[str] = set()
        self._fault: str | None = None
        self._idle_warned = False
        self._minters: set[str] = set()
        self._not_minter: dict[str, int] = {}
        self._cycles = 0

    @property
    def completed_cycles(self) -> int:
        """How many cycles ran to their end, well or not (for health checks)."""
        return self._cycles

    # --- the loop ---------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until ``stopping`` is set. A passing fault is logged, never raised.

        Raises only for what no retry can fix, all configuration errors: a
        node on another chain (ChainMismatchError), a transaction the policy
        refuses (PolicyViolationError), a key no master key decrypts
        (CustodyError).
        """
        poll_s = self.settings.poll_interval_ms / 1000
        logger.info("submitter started", token=self.token_address)
        while not stopping.is_set():
            held = self._held()
            if await self._cycle_safely():
                continue
            # A signer lease won meanwhile is worked at once, not a poll later.
            waits: list[Awaitable[object]] = [stopping.wait()]
            if self.leases is not None:
                waits.append(self.leases.wait_changed(held))
            await _first(poll_s, *waits)
        logger.info("submitter stopped")

    def _held(self) -> frozenset[str]:
        return self.leases.held() if self.leases is not None else frozenset()

    async def _cycle_safely(self) -> bool:
        try:
            busy = await self.step()
        except (ChainMismatchError, PolicyViolationError, CustodyError):
            raise
        except Exception as exc:
            self._note_fault(exc)
            return False
        finally:
            self._cycles += 1
        if self._fault is not None:
            logger.info("submitter resumed", after=self._fault)
            self._fault = None
        return busy

    def _note_fault(self, exc: Exception) -> None:
        if not (db.is_unavailable(exc) or isinstance(exc, RpcUnavailableError)):
            logger.opt(exception=exc).error(
                "submitter cycle failed; check the traceback, retrying next poll"
            )
            return
        fault = type(exc).__name__
        if fault != self._fault:
            logger.warning(
                "submitter paused: a dependency is unavailable; retrying every poll",
                error=str(exc),
            )
        self._fault = fault

    async def step(self) -> bool:
        """Run one cycle over every signer; return True when there was work.

        Raises what the cycle met; :meth:`run` logs passing faults instead.
        """
        rows = await self._working_signers()
        if not rows:
            return False
        head = await self._rpc(self.chain.block_number)
        busy = False
        for row in rows:
            busy = await self._work_leased(row, head) or busy
        return busy

    async def _working_signers(self) -> list[signers.SignerRow]:
        """Return the working signers this daemon may act for, keys loaded."""
        async with self._conn() as conn:
            rows = await signers.listing(conn, signers.WORKING)
        if not rows and not self._idle_warned:
            logger.warning("no active signer; create one with `haven wallet create`")
        self._idle_warned = not rows

        mine = [row for row in rows if self._may_act_for(row.address)]
        kept = {row.address for row in mine}
        for address in list(self._signers):
            if address not in kept:
                # Another daemon may work it meanwhile: reconcile it again
                # with the chain if it comes back here.
                del self._signers[address]
                self._reconciled.discard(address)
        for row in mine:
            if row.address not in self._signers:
                self._signers[row.address] = await self._load_signer(row.address)
        return mine

    def _may_act_for(self, address: str) -> bool:
        return self.leases is None or self.leases.is_held(lease_of(address))

    async def _work_leased(self, row: signers.SignerRow, head: int) -> bool:
        """Work one signer as one step of its lease; stop if the lease goes."""
        if self.leases is None:
            return await self._work_signer(row, head)
        try:
            async with self.leases.step(lease_of(row.address)):
                return await self._work_signer(row, head)
        except LeaseLostError as exc:
            # Whatever was fenced out rolled back; sends already made are
            # committed bytes, which the new holder tends as its own.
            self._reconciled.discard(row.address)
            if self.leases.is_handing_over(lease_of(row.address)):
                logger.info("signer handed to a peer daemon", signer=row.address)
                return False
            logger.warning(
                "signer lease lost; leaving the signer to the daemon holding it",
                signer=row.address,
                error=str(exc),
            )
            return False

    async def _fence(self, conn: asyncpg.Connection, address: str) -> None:
        """Raise LeaseLostError unless this daemon still holds ``address``'s lease.

        Call it right after locking the signer row in a transaction that
        takes a nonce or records an attempt: a daemon that takes the lease
        over later waits on that row lock, then sees what was committed.
        """
        if self.leases is not None:
            await self.leases.fence(conn, lease_of(address))

    async def _load_local_signer(self, address: str) -> custody.Signer:
        return await custody.load_signer(self.pool, self.settings, address)

    async def _work_signer(self, row: signers.SignerRow, head: int) -> bool:
        signer = self._signers[row.address]
        view = await self._observe(row.address, head)
        if view.latest > view.next_nonce:
            view = await self._skip_used(view, row.address)
        await self._settle(signer, view)
        next_nonce = await self._tend(signer, view)
        if next_nonce is None:
            return False
        if row.address not in self._reconciled:
            self._reconciled.add(row.address)
            logger.info(
                "signer reconciled with the chain",
                signer=row.address,
                latest_nonce=view.latest,
                next_nonce=next_nonce,
            )
        if row.status != signers.ACTIVE:
            return False
        if not await self._is_minter(row.address, head):
            return False
        return await self._allocate(signer, view, next_nonce) > 0

    async def _is_minter(self, address: str, head: int) -> bool:
        """Whether ``address`` holds MINTER_ROLE; new work waits until it does.

        A signer created, or rotated in, before its role is granted would
        only sign mints that revert. A yes is remembered; a no is asked
        again each new block.
        """
        if address in self._minters:
            return True
        if self._not_minter.get(address) == head:
            return False
        data = token.has_role_data(token.MINTER_ROLE, ChecksumAddress(address))
        raw = await self._rpc(self.chain.eth_call, self.token_address, data)
        if token.decode_bool(raw):
            self._minters.add(address)
            self._not_minter.pop(address, None)
            return True
        if address not in self._not_minter:
            logger.warning(
                "signer is not a minter yet; it takes no new intents until "
                "granted MINTER_ROLE",
                signer=address,
            )
        self._not_minter[address] = head
        return False

    async def _observe(self, address: str, head: int) -> ChainView:
        latest = await self._rpc(self.chain.get_transaction_count, address, "latest")
        pending = await self._rpc(self.chain.get_transaction_count, address, "pending")
        async with self._conn() as conn:
            row = await signers.get(conn, address)
        assert row is not None
        return ChainView(head, latest, pending, row.next_nonce)

    # --- 2. nonces used outside the daemon -------------------------------

    async def _skip_used(self, view: ChainView, address: str) -> ChainView:
        async with db.transaction(self.pool) as conn:
            await signers.get(conn, address, for_update=True)
            await self._fence(conn, address)
            skipped = await nonces.skip_used(conn, address, view.latest)
            if skipped:
                await alerts_outbox.raise_alert(
                    conn,
                    NONCE_USED_OUTSIDE,
                    f"{address}:{skipped.start}",
                    CRITICAL,
                    {
                        "first_nonce": skipped.start,
                        "last_nonce": skipped.stop - 1,
                        "chain_latest_nonce": view.latest,
                        "what": "mined transactions from this key that the daemon "
                        "never signed; their nonces are skipped",
                    },
                )
        if skipped:
            logger.warning(
                "nonces used outside the daemon; skipping past them",
                signer=address,
                first_nonce=skipped.start,
                last_nonce=skipped.stop - 1,
            )
        return replace(view, next_nonce=Nonce(max(view.next_nonce, view.latest)))

    # --- 3. used nonces: ours, or someone else's --------------------------

    async def _settle(self, signer: custody.Signer, view: ChainView) -> None:
        async with self._conn() as conn:
            used = await attempts.unresolved_below(
                conn, signer.address, view.latest, limit=self.options.settle_batch
            )
        await self._resolve(signer, used)

    async def _resolve(self, signer: custody.Signer, used: list[Nonce]) -> None:
        """Find which of our attempts used each of ``used``; re-assign if none did."""
        if not used:
            return
        async with self._conn() as conn:
            found = await attempts.at_nonces(conn, signer.address, used)
            request_ids = await intents.request_ids(
                conn, _distinct(a.intent_id for a in found)
            )
        groups: dict[int, list[Attempt]] = {nonce: [] for nonce in used}
        for attempt in found:
            groups[attempt.nonce].append(attempt)
        # Most used nonces hold one attempt, mined: their receipts are asked
        # for together rather than one round trip after another.
        receipts = await self._receipts(
            [a.tx_hash for group in groups.values() for a in group]
        )
        seen: list[tuple[Attempt, dict[str, Any]]] = []
        unused: list[tuple[Nonce, list[Attempt]]] = []
        for nonce in used:
            group = groups[nonce]
            mined = next((a for a in reversed(group) if receipts[a.tx_hash]), None)
            if mined is not None:
                receipt = receipts[mined.tx_hash]
                assert receipt is not None
                seen.append((mined, receipt))
            else:
                unused.append((nonce, group))
        await self._saw_receipts(seen, request_ids)
        for nonce, group in unused:
            for intent_id in _distinct(a.intent_id for a in group if a.is_live):
                if await self._is_minted(intent_id):
                    # Minted, yet none of our receipts found: a node whose
                    # receipt index lags. Look again next cycle; never move
                    # a paid intent.
                    continue
                await self._reassign(signer, intent_id, nonce)

    async def _receipts(self, tx_hashes: list[str]) -> dict[str, dict[str, Any] | None]:
        """Ask the node for the receipts of ``tx_hashes``, a few at a time."""
        limit = asyncio.Semaphore(READS_AT_ONCE)

        async def one(tx_hash: str) -> dict[str, Any] | None:
            async with limit:
                receipt: dict[str, Any] | None = await self._rpc(
                    self.chain.get_receipt, tx_hash
                )
                return receipt

        async with asyncio.TaskGroup() as group:
            tasks = {h: group.create_task(one(h)) for h in dict.fromkeys(tx_hashes)}
        return {tx_hash: task.result() for tx_hash, task in tasks.items()}

    async def _saw_receipts(
        self,
        seen: list[tuple[Attempt, dict[str, Any]]],
        request_ids: dict[bytes, str],
    ) -> None:
        """Record the receipts found for used nonces, in one statement."""
        if not seen:
            return
        noted = [
            (
                attempt,
                from_hex(receipt["blockNumber"]),
                from_hex(receipt.get("status", "0x1")),
            )
            for attempt, receipt in seen
        ]
        self.crash.hit("after_receipt")
        await asyncio.shield(
            self._write(
                attempts.note_receipts,
                [(attempt.tx_hash, block, status) for attempt, block, status in noted],
            )
        )
        for attempt, block, status in noted:
            with logs.correlated(request_ids.get(attempt.intent_id)):
                log = _log(attempt).bind(block_number=block)
                if status == 1:
                    log.info("tx mined")
                else:
                    log.warning("tx reverted; the tailer fails the intent at depth")

    async def _reassign(
        self, signer: custody.Signer, intent_id: bytes, old: Nonce
    ) -> None:
        offer = fees.initial(await self._market(), max_fee_wei=self.rules.max_fee_wei)
        address = signer.address
        async with db.transaction(self.pool) as conn:
            await signers.get(conn, address, for_update=True)
            await self._fence(conn, address)
            intent = await intents.get(conn, intent_id, for_update=True)
            if not _is_in_flight_at(intent, address, old):
                return
            assert intent is not None
            nonce = await nonces.allocate(conn, address, statuses=signers.WORKING)
            if nonce is None:
                return
            with logs.correlated(intent.request_id):
                attempt = await self._sign(conn, signer, intent, nonce, offer)
            reason = f"nonce {old} used by a transaction outside the daemon"
            await attempts.drop_live(conn, intent_id, address, old, reason=reason)
            await intents.transition(
                conn,
                intent_id,
                from_statuses=(intents.SUBMITTED,),
                to_status=intents.SUBMITTED,
                reason=f"{reason}; moved to nonce {nonce}",
                nonce=nonce,
                tx_hash=_hash_bytes(attempt.tx_hash),
            )
            await alerts_outbox.raise_alert(
                conn,
                NONCE_USED_OUTSIDE,
                f"{address}:{old}",
                CRITICAL,
                {
                    "nonce": old,
                    "intent_id": intent_id_hex(intent_id),
                    "new_nonce": nonce,
                    "what": "no attempt of ours was mined at the nonce and the "
                    "intent is not minted: another transaction used it",
                },
            )
        with logs.correlated(intent.request_id):
            _log(attempt).warning(
                "nonce used outside the daemon; intent moved to a fresh nonce",
                old_nonce=old,
            )

    # --- 4. in-flight nonces: re-send, refill, re-price ------------------

    async def _tend(self, signer: custody.Signer, view: ChainView) -> Nonce | None:
        """Look after every in-flight nonce; return our counter, or None to stop."""
        async with self._conn() as conn:
            row = await signers.get(conn, signer.address)
            assert row is not None
            found = await attempts.in_nonce_range(
                conn, signer.address, view.latest, row.next_nonce
            )
            request_ids = await intents.request_ids(
                conn, _distinct(a.intent_id for a in found)
            )
        by_nonce: dict[int, list[Attempt]] = {}
        for attempt in found:
            by_nonce.setdefault(attempt.nonce, []).append(attempt)
        market = _Lazy(self._market)
        for nonce in range(view.latest, row.next_nonce):
            group = by_nonce.get(nonce)
            if group is None:
                if not await self._gap(signer, Nonce(nonce), view):
                    return None
                continue
            with logs.correlated(request_ids.get(group[-1].intent_id)):
                tended = await self._tend_nonce(signer, group, view, market)
            if not tended:
                return None
        return row.next_nonce

    async def _gap(self, signer: custody.Signer, nonce: Nonce, view: ChainView) -> bool:
        """Fill a nonce no attempt of ours ever used; False if it stays a gap.

        Such a nonce was skipped for an outside transaction that a reorg then
        took away. The oldest ready intent is minted at it, so the signer's
        later transactions can be mined; with nothing ready, it waits and
        operators are told.
        """
        address = signer.address
        offer = fees.initial(await self._market(), max_fee_wei=self.rules.max_fee_wei)
        filled = await self._fill(signer, nonce, offer)
        if filled is not None:
            intent, attempt = filled
            with logs.correlated(intent.request_id):
                _log(attempt).warning("nonce gap filled with a ready intent's mint")
                return await self._send(signer, attempt, view.head_block) == ACCEPTED
        await self._alert(
            NONCE_GAP,
            f"{address}:{nonce}",
            CRITICAL,
            {"nonce": nonce, "chain_latest_nonce": view.latest},
        )
        logger.error(
            "nonce gap with no stored transaction and no ready intent to fill it; "
            "the signer's later transactions wait for the next ready intent",
            signer=address,
            nonce=nonce,
        )
        return False

    async def _fill(
        self, signer: custody.Signer, nonce: Nonce, offer: Fees
    ) -> tuple[Intent, Attempt] | None:
        """Sign the oldest signable ready intent at ``nonce``, a gap; None if none."""
        address = signer.address
        async with db.transaction(self.pool) as conn:
            row = await signers.get(conn, address, for_update=True)
            await self._fence(conn, address)
            if row is None or row.status not in signers.WORKING:
                return None
            if await attempts.at_nonce(conn, address, nonce):
                return None  # filled meanwhile
            while (intent := await intents.claim_ready(conn)) is not None:
                with logs.correlated(intent.request_id):
                    attempt = await self._sign_or_set_aside(
                        conn, signer, intent, offer, nonce=nonce
                    )
                if attempt is not None:
                    return intent, attempt
        return None

    async def _tend_nonce(
        self,
        signer: custody.Signer,
        group: list[Attempt],
        view: ChainView,
        market: _Lazy[Market],
    ) -> bool:
        newest = group[-1]
        if not any(a.is_live for a in group):
            # Free on chain, yet nothing of ours live there: settled before a
            # reorg the tailer has not seen, or the nonce of a moved intent.
            _log(newest).warning("nonce free again on chain; re-sending stored bytes")
            return await self._send(signer, newest, view.head_block) == ACCEPTED
        verdict = stuck.assess(
            group,
            head_block=view.head_block,
            node_has_nonce=newest.nonce < view.pending,
            rules=self.rules,
        )
        if verdict.action == stuck.WAIT:
            return True
        if verdict.action == stuck.RESEND:
            outcome = await self._send(signer, newest, view.head_block)
            if outcome != REFUSED:
                return outcome == ACCEPTED
            group = await self._attempts_at(signer.address, newest.nonce)
            verdict = stuck.Verdict(stuck.REPRICE)
        return await self._reprice(signer, group, verdict, view, market)

    async def _reprice(
        self,
        signer: custody.Signer,
        group: list[Attempt],
        verdict: stuck.Verdict,
        view: ChainView,
        market: _Lazy[Market],
    ) -> bool:
        current = await market.get()
        plan = stuck.reprice(group, current, stuck=verdict.stuck, rules=self.rules)
        newest = group[-1]
        if plan.action != stuck.BUMP:
            await self._hold_price(signer.address, group, plan, current)
            return await self._send(signer, newest, view.head_block) == ACCEPTED
        assert plan.fees is not None
        base = [a for a in group if a.is_live][-1]
        bumped = await self._bump(signer, base, plan.fees)
        if bumped is None:
            return False
        return await self._send(signer, bumped, view.head_block) == ACCEPTED

    async def _hold_price(
        self, address: str, group: list[Attempt], plan: stuck.Plan, market: Market
    ) -> None:
        top = fees.highest(stuck.offers(group))
        newest = group[-1]
        evidence = {
            "nonce": newest.nonce,
            "intent_id": intent_id_hex(newest.intent_id),
            "attempts": len(group),
            "highest_max_fee_wei": str(top.max_fee_wei),
            "highest_tip_wei": str(top.max_priority_fee_wei),
            "market_next_base_fee_wei": str(market.next_base_fee_wei),
            "market_tip_wei": str(market.tip_wei),
            "max_fee_wei": str(self.rules.max_fee_wei),
        }
        subject = f"{address}:{newest.nonce}"
        if plan.action == stuck.PROPAGATION:
            await self._alert(TX_PROPAGATION, subject, WARNING, evidence)
            _log(newest).warning(
                "tx stuck although it pays well above the market; "
                "re-sending it instead of bumping"
            )
        else:
            await self._alert(FEE_CAP_REACHED, subject, WARNING, evidence)
            _log(newest).warning(
                "tx stuck at HAVEN_MAX_FEE_WEI; re-sending it until fees fall"
            )

    async def _bump(
        self, signer: custody.Signer, base: Attempt, offer: Fees
    ) -> Attempt | None:
        async with db.transaction(self.pool) as conn:
            await signers.get(conn, signer.address, for_update=True)
            await self._fence(conn, signer.address)
            intent = await intents.get(conn, base.intent_id, for_update=True)
            if not _is_in_flight_at(intent, signer.address, base.nonce):
                return None
            assert intent is not None
            attempt = await self._sign(conn, signer, intent, base.nonce, offer)
            await intents.transition(
                conn,
                intent.id,
                from_statuses=(intents.SUBMITTED,),
                to_status=intents.SUBMITTED,
                reason=f"re-priced at nonce {base.nonce}",
                tx_hash=_hash_bytes(attempt.tx_hash),
            )
        _log(attempt).info(
            "tx bumped",
            replaces=base.tx_hash,
            max_fee_wei=offer.max_fee_wei,
            max_priority_fee_wei=offer.max_priority_fee_wei,
        )
        metrics.GAS_BUMPS.labels(signer.address).inc()
        self.crash.hit("after_bump")
        return attempt

    # --- 5. new work ------------------------------------------------------

    async def _allocate(
        self, signer: custody.Signer, view: ChainView, next_nonce: int
    ) -> int:
        latest, head = view.latest, view.head_block
        room = self._room(next_nonce, latest)
        if room <= 0:
            return 0
        async with self._conn() as conn:
            if not await intents.has_ready(conn):
                return 0
        offer = fees.initial(await self._market(), max_fee_wei=self.rules.max_fee_wei)
        sent = 0
        # Each run is signed while the run before it is broadcast: signing a
        # run costs about what its sends wait for. Broadcasts stay in nonce
        # order, one run after the other.
        sending: asyncio.Task[bool] | None = None
        try:
            while True:
                if room <= 0:
                    if sent >= self.options.cycle_budget:
                        break
                    # The node mines while we send: see how many of ours it
                    # has mined before leaving the rest to the next cycle.
                    latest, head = await self._progress(signer.address)
                    room = self._room(next_nonce + sent, latest)
                    if room <= 0 and sending is not None:
                        # The run still being sent may be all that holds
                        # the room: let it finish, then look once more.
                        broadcast, sending = sending, None
                        if not await broadcast:
                            break
                        latest, head = await self._progress(signer.address)
                        room = self._room(next_nonce + sent, latest)
                    if room <= 0:
                        break
                run = await self._allocate_run(
                    signer, offer, min(self.options.run_size, room)
                )
                if sending is not None:
                    broadcast, sending = sending, None
                    if not await broadcast:
                        # This run stays signed and unsent; tending sends it
                        # in nonce order once the refusal is sorted out.
                        break
                if run is None:
                    break
                sent += len(run)
                room -= len(run)
                sending = asyncio.create_task(self._broadcast(signer, run, head))
            if sending is not None:
                broadcast, sending = sending, None
                await broadcast
        finally:
            if sending is not None:
                # A run failed to sign: the sends already under way finish.
                await asyncio.gather(sending, return_exceptions=True)
        return sent

    def _room(self, next_nonce: int, latest: int) -> int:
        """Nonces that may still be taken before ``max_in_flight`` are unmined."""
        return int(self.settings.max_in_flight) - nonces.in_flight(next_nonce, latest)

    async def _progress(self, address: str) -> tuple[Nonce, int]:
        """Return the signer's ``latest`` nonce and the head, asked together."""
        latest, head = await asyncio.gather(
            self._rpc(self.chain.get_transaction_count, address, "latest"),
            self._rpc(self.chain.block_number),
        )
        return Nonce(latest), head

    async def _broadcast(
        self, signer: custody.Signer, run: list[tuple[Intent, Attempt]], head: int
    ) -> bool:
        """Send a signed run in nonce order; False once a send is not accepted.

        What follows a refused send stays signed and unsent, for tending to
        send in nonce order once the refusal is sorted out. The sends the
        node accepted are recorded together, in one statement, whatever
        stopped the run, and dated by the head read after them (``head``,
        read before, if the node does not answer): never older than the
        block the node took them at, so none looks stuck before its time.
        """
        accepted: list[tuple[Intent, Attempt]] = []
        try:
            for intent, attempt in run:
                with logs.correlated(intent.request_id):
                    outcome = await self._push(signer, attempt)
                if outcome != ACCEPTED:
                    return False
                accepted.append((intent, attempt))
            return True
        finally:
            if accepted:
                head = await self._head_after(head)
                await self._record_sent([attempt for _, attempt in accepted], head)
            for intent, attempt in accepted:
                with logs.correlated(intent.request_id):
                    _log_sent(attempt, head)

    async def _head_after(self, before: int) -> int:
        try:
            head: int = await self._rpc(self.chain.block_number)
        except RpcUnavailableError:
            return before
        return max(head, before)

    async def _allocate_run(
        self, signer: custody.Signer, offer: Fees, limit: int
    ) -> list[tuple[Intent, Attempt]] | None:
        """Claim up to ``limit`` ready intents in one transaction and sign them.

        Each takes the signer's next nonce in turn, oldest intent first, or
        is set aside without one (held for approval, or already minted).
        Returns the signed intents with their attempts in nonce order — empty
        when every claimed intent was set aside — or None when nothing was
        ready. One transaction for the run spares each mint its own commit,
        signer lock and lease fence; a failure rolls back the whole run, and
        its intents are claimed again by the next cycle.
        """
        address = signer.address
        async with db.transaction(self.pool) as conn:
            row = await signers.get(conn, address, for_update=True)
            await self._fence(conn, address)
            if row is None or row.status != signers.ACTIVE:
                return None
            claimed = await intents.claim_ready_batch(conn, limit)
            minted = await self._minted_among([intent.id for intent in claimed])
            unminted: list[Intent] = []
            for intent in claimed:
                if intent.id in minted:
                    with logs.correlated(intent.request_id):
                        await self._adopt(conn, intent)
                else:
                    unminted.append(intent)
            signable = await self._without_held(conn, unminted)
            signed = await self._submit(conn, signer, signable, offer)
        if not claimed:
            return None
        for intent, attempt in signed:
            with logs.correlated(intent.request_id):
                _log(attempt).info(
                    "tx signed",
                    max_fee_wei=offer.max_fee_wei,
                    max_priority_fee_wei=offer.max_priority_fee_wei,
                )
        self.crash.hit("after_commit")
        return signed

    async def _sign_or_set_aside(
        self,
        conn: asyncpg.Connection,
        signer: custody.Signer,
        intent: Intent,
        offer: Fees,
        *,
        nonce: Nonce,
    ) -> Attempt | None:
        """Sign ``intent``, claimed by this transaction, at ``nonce`` (a gap),
        unless the chain shows it minted or the policy holds it."""
        if await self._is_minted(intent.id):
            await self._adopt(conn, intent)
            return None
        if not await self._without_held(conn, [intent]):
            return None
        [(_, attempt)] = await self._submit(conn, signer, [intent], offer, nonce=nonce)
        return attempt

    async def _without_held(
        self, conn: asyncpg.Connection, claimed: list[Intent]
    ) -> list[Intent]:
        """Hold each intent of ``claimed`` that is over a cap for approval;
        return the others, in order."""
        if not claimed:
            return []
        reasons = await self.policy.hold_reasons(conn, claimed)
        for intent, reason in zip(claimed, reasons, strict=True):
            if reason is None:
                continue
            await intents.transition(
                conn,
                intent.id,
                from_statuses=(intents.READY,),
                to_status=intents.APPROVAL,
                reason=reason,
            )
            with logs.correlated(intent.request_id):
                logger.bind(intent_id=intent_id_hex(intent.id)).info(
                    "intent held for approval", reason=reason
                )
        return [
            intent
            for intent, reason in zip(claimed, reasons, strict=True)
            if reason is None
        ]

    async def _adopt(self, conn: asyncpg.Connection, intent: Intent) -> None:
        """Never sign again an intent the chain shows minted (a restored database).

        A mint by one of our signers is adopted: the intent becomes
        ``submitted`` with that signer and transaction, for the tailer to
        settle. Anything else waits for a person, with an alert.
        """
        mint = await self._find_mint(conn, intent.id)
        log = logger.bind(intent_id=intent_id_hex(intent.id))
        if mint is not None and await signers.get(conn, mint.minter) is not None:
            tx_hash = mint.position.tx_hash
            await intents.transition(
                conn,
                intent.id,
                from_statuses=(intents.READY,),
                to_status=intents.SUBMITTED,
                reason=f"already minted by 0x{tx_hash.hex()}; not signed again",
                signer=mint.minter,
                tx_hash=tx_hash,
            )
            log.bind(tx_hash="0x" + tx_hash.hex()).warning(
                "ready intent already minted on chain; adopted its mint"
            )
            return
        minter = mint.minter if mint is not None else "an unknown minter"
        reason = f"already minted on chain by {minter}, not by a signer of ours"
        await intents.transition(
            conn,
            intent.id,
            from_statuses=(intents.READY,),
            to_status=intents.APPROVAL,
            reason=reason,
        )
        await alerts_outbox.raise_alert(
            conn,
            FOREIGN_MINT,
            intent_id_hex(intent.id),
            CRITICAL,
            {"intent_id": intent_id_hex(intent.id), "minter": minter},
        )
        log.error("ready intent minted by someone else; held — check MINTER_ROLE")

    async def _find_mint(
        self, conn: asyncpg.Connection, intent_id: bytes
    ) -> token.RewardMinted | None:
        indexed = await transfers.mints_of(conn, intent_id)
        if indexed:
            return indexed[0]
        head = await self._rpc(self.chain.block_number)
        logs = await self._rpc(
            self.chain.get_logs,
            address=self.token_address,
            from_block=self.settings.start_block,
            to_block=head,
            topics=[token.REWARD_MINTED_TOPIC, intent_id_hex(intent_id)],
        )
        for entry in logs:
            event = token.decode_log(entry, self.token_address)
            if isinstance(event, token.RewardMinted):
                return event
        return None

    async def _submit(
        self,
        conn: asyncpg.Connection,
        signer: custody.Signer,
        run: list[Intent],
        offer: Fees,
        *,
        nonce: Nonce | None = None,
    ) -> list[tuple[Intent, Attempt]]:
        """Sign the claimed intents of ``run`` at the signer's next nonces, in
        order, or the one intent of ``run`` at ``nonce`` (a gap).

        Every step is one statement for the whole run: the nonces, the
        attempts with their audit rows, the status changes, the spends.
        """
        if not run:
            return []
        if nonce is None:
            taken = await nonces.allocate_many(conn, signer.address, len(run))
            assert taken is not None, "the signer row is locked and active"
        else:
            assert len(run) == 1, "a gap takes one intent"
            taken = [nonce]
        made = await self._sign_all(
            conn, signer, list(zip(run, taken, strict=True)), offer
        )
        await intents.submit_claimed(
            conn,
            signer.address,
            [
                (intent.id, attempt.nonce, _hash_bytes(attempt.tx_hash))
                for intent, attempt in zip(run, made, strict=True)
            ],
        )
        await self.policy.record_spends(conn, run)
        self.crash.hit("after_allocate")
        return list(zip(run, made, strict=True))

    async def _sign(
        self,
        conn: asyncpg.Connection,
        signer: custody.Signer,
        intent: Intent,
        nonce: int,
        offer: Fees,
    ) -> Attempt:
        [attempt] = await self._sign_all(conn, signer, [(intent, nonce)], offer)
        return attempt

    async def _sign_all(
        self,
        conn: asyncpg.Connection,
        signer: custody.Signer,
        work: list[tuple[Intent, int]],
        offer: Fees,
    ) -> list[Attempt]:
        """Sign each intent at its nonce and store the attempts, in order."""
        txs = [
            (
                {
                    "type": 2,
                    "chainId": self.settings.chain_id,
                    "nonce": nonce,
                    "to": self.token_address,
                    "value": 0,
                    "gas": self.settings.gas_limit,
                    "maxFeePerGas": offer.max_fee_wei,
                    "maxPriorityFeePerGas": offer.max_priority_fee_wei,
                    "data": token.mint_reward_data(
                        intent.wallet, intent.amount_wei, intent.id
                    ),
                    "accessList": [],
                },
                intent,
            )
            for intent, nonce in work
        ]
        signed = await custody.sign_all(conn, signer, txs, policy=self.policy)
        drafts = [
            attempts.Draft(
                intent_id=intent.id,
                signer=signer.address,
                nonce=Nonce(nonce),
                tx_hash=one.tx_hash,
                raw_tx=one.raw_tx,
                max_fee_wei=offer.max_fee_wei,
                max_priority_fee_wei=offer.max_priority_fee_wei,
                gas_limit=self.settings.gas_limit,
            )
            for (intent, nonce), one in zip(work, signed, strict=True)
        ]
        stored: list[Attempt] = await attempts.record_all(conn, drafts)
        return stored

    # --- sending ----------------------------------------------------------

    async def _send(self, signer: custody.Signer, attempt: Attempt, head: int) -> str:
        """Broadcast stored bytes and record the node's answer; return the outcome.

        Raises RpcUnavailableError when no node answers (nothing is recorded:
        the bytes are sent again next cycle) and ChainMismatchError when the
        node is on another chain.
        """
        outcome = await self._push(signer, attempt)
        if outcome == ACCEPTED:
            await self._record_sent([attempt], head)
            _log_sent(attempt, head)
        return outcome

    async def _push(self, signer: custody.Signer, attempt: Attempt) -> str:
        """Broadcast stored bytes; return the outcome, recording only a refusal.

        The caller records an acceptance (:meth:`_record_sent`); until it
        does, the attempt reads as signed and unsent, which is safe: tending
        sends it again and the node answers that it knows it.
        """
        try:
            node_hash = await self._rpc(self.chain.send_raw_transaction, attempt.raw_tx)
        except RpcResponseError as exc:
            if exc.kind != chain.ALREADY_KNOWN:
                return await self._refused(signer, attempt, exc)
            node_hash = attempt.tx_hash
        self.crash.hit("after_send")
        if str(node_hash).lower() != attempt.tx_hash.lower():
            await self._hash_mismatch(attempt, str(node_hash))
        return ACCEPTED

    async def _record_sent(self, accepted: list[Attempt], head: int) -> None:
        if accepted:
            hashes = [attempt.tx_hash for attempt in accepted]
            await asyncio.shield(
                self._execute(attempts.mark_sent, hashes, block_number=head)
            )

    async def _refused(
        self, signer: custody.Signer, attempt: Attempt, exc: RpcResponseError
    ) -> str:
        kind = exc.kind
        await asyncio.shield(
            self._write(
                attempts.note_refusal, attempt.tx_hash, kind=kind, message=exc.message
            )
        )
        log = _log(attempt).bind(kind=kind, error=exc.message)
        if kind == chain.CHAIN_ID_MISMATCH:
            raise ChainMismatchError(
                f"node refused {attempt.tx_hash} as signed for another chain "
                f"({exc.message}); check HAVEN_CHAIN_ID and HAVEN_RPC_URL"
            ) from exc
        if kind == chain.NONCE_TOO_LOW:
            log.info("nonce already used on chain; looking up receipts at the nonce")
            await self._resolve(signer, [attempt.nonce])
            return CONSUMED
        if kind in stuck.PRICE_REFUSALS:
            log.warning("tx refused for its price; re-pricing it")
            return REFUSED
        if kind == chain.INSUFFICIENT_FUNDS:
            await self._out_of_funds(attempt)
            log.error(
                "signer cannot pay for gas; fund it — nothing is bumped meanwhile"
            )
            return BLOCKED
        if kind in _CONFIGURATION_REFUSALS:
            await self._alert(
                TX_MISCONFIGURED,
                attempt.signer,
                CRITICAL,
                {"kind": kind, "message": exc.message, "tx_hash": attempt.tx_hash},
            )
            log.error(
                "node refuses the transaction's gas settings; check "
                "HAVEN_GAS_LIMIT and HAVEN_MAX_FEE_WEI"
            )
            return BLOCKED
        if kind == chain.NONCE_TOO_HIGH:
            log.warning("node lacks an earlier nonce; re-sending in order next cycle")
            return BLOCKED
        if kind not in _BUSY_REFUSALS:
            await self._alert(
                RPC_UNEXPECTED,
                attempt.signer,
                WARNING,
                {"kind": kind, "message": exc.message, "code": exc.code},
            )
        log.warning("node refused the send; trying again next cycle")
        return BLOCKED

    async def _out_of_funds(self, attempt: Attempt) -> None:
        balance = await self._rpc(self.chain.get_balance, attempt.signer)
        await self._alert(
            SIGNER_OUT_OF_FUNDS,
            attempt.signer,
            CRITICAL,
            {
                "balance_wei": str(balance),
                "needed_wei": str(attempt.gas_limit * attempt.max_fee_wei),
                "nonce": attempt.nonce,
            },
        )

    async def _hash_mismatch(self, attempt: Attempt, node_hash: str) -> None:
        await self._alert(
            TX_HASH_MISMATCH,
            attempt.tx_hash,
            CRITICAL,
            {"local_hash": attempt.tx_hash, "node_hash": node_hash},
        )
        _log(attempt).error(
            "node reports another hash for our bytes; check the RPC endpoint",
            node_hash=node_hash,
        )

    # --- small helpers ----------------------------------------------------

    async def _market(self) -> Market:
        history = await self._rpc(
            self.chain.fee_history,
            self.options.fee_history_blocks,
            "latest",
            [self.options.tip_percentile],
        )
        return fees.read_market(history, min_tip_wei=self.options.min_tip_wei)

    async def _is_minted(self, intent_id: bytes) -> bool:
        data = await self._rpc(
            self.chain.eth_call,
            self.token_address,
            token.is_minted_data(IntentId(intent_id)),
        )
        return token.decode_bool(data)

    async def _minted_among(self, intent_ids: list[bytes]) -> set[bytes]:
        """Return which of ``intent_ids`` the token shows minted, asked together."""
        limit = asyncio.Semaphore(READS_AT_ONCE)

        async def one(intent_id: bytes) -> bool:
            async with limit:
                return await self._is_minted(intent_id)

        async with asyncio.TaskGroup() as group:
            tasks = {i: group.create_task(one(i)) for i in intent_ids}
        return {intent_id for intent_id, task in tasks.items() if task.result()}

    async def _attempts_at(self, address: str, nonce: Nonce) -> list[Attempt]:
        async with self._conn() as conn:
            return await attempts.at_nonce(conn, address, nonce)

    async def _rpc(
        self, fn: Callable[P, Awaitable[Any]], *args: P.args, **kwargs: P.kwargs
    ) -> Any:
        return await self.breaker.call(fn, *args, **kwargs)

    async def _alert(
        self, rule: str, subject: str, severity: str, evidence: dict[str, Any]
    ) -> None:
        await asyncio.shield(
            self._write(alerts_outbox.raise_alert, rule, subject, severity, evidence)
        )

    async def _write(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        async with db.transaction(self.pool) as conn:
            await fn(conn, *args, **kwargs)

    async def _execute(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Run ``fn``, a single statement, on a pooled connection: atomic alone."""
        async with self._conn() as conn:
            await fn(conn, *args, **kwargs)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        async with db.translate_errors(), self.pool.acquire() as conn:
            yield conn


class _Lazy(Generic[T]):
    """Fetch a value on first use within one cycle, at most once."""

    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._value: T | None = None

    async def get(self) -> T:
        if self._value is None:
            self._value = await self._fetch()
        return self._value


def _is_in_flight_at(intent: Intent | None, address: str, nonce: int) -> bool:
    return (
        intent is not None
        and intent.status == intents.SUBMITTED
        and intent.signer == address
        and intent.nonce == nonce
    )


def _distinct(items: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(items))


def _hash_bytes(tx_hash: str) -> bytes:
    return bytes.fromhex(tx_hash.removeprefix("0x"))


def _log_sent(attempt: Attempt, head: int) -> None:
    if attempt.status == attempts.SIGNED or attempt.error_kind is not None:
        _log(attempt).info("tx broadcast", block_number=head)
    else:
        _log(attempt).debug("tx sent again", block_number=head)


def _log(attempt: Attempt) -> Any:
    return logger.bind(
        intent_id=intent_id_hex(attempt.intent_id),
        nonce=attempt.nonce,
        tx_hash=attempt.tx_hash,
        signer=attempt.signer,
    )


async def _first(timeout_s: float, *waits: Awaitable[object]) -> None:
    """Return when any of ``waits`` is done or ``timeout_s`` passed; cancel the rest."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(
            tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
