"""A circuit breaker and retries around the RPC, so an outage pauses work calmly.

Closed: calls go through; a call that still fails after its retries counts
one failure, and ``failure_threshold`` failures in a row open the circuit.
Open: calls fail at once with BreakerOpenError until ``reset_timeout_s``
has passed. Half-open: one probe call goes through; success closes the
circuit, failure opens it again.

Only transport failures and rate limiting count: a node that answers with
an error object (nonce too low, underpriced...) is up. The breaker never
decides anything about a transaction — it only says "not now" — so an
outage can never mark a broadcast transaction failed. State is in-process,
readable with :meth:`CircuitBreaker.snapshot` and cleared with
:meth:`CircuitBreaker.reset`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from loguru import logger
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from haven import chain, metrics
from haven.errors import RpcResponseError, RpcUnavailableError

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

P = ParamSpec("P")
T = TypeVar("T")


class BreakerOpenError(RpcUnavailableError):
    """The circuit is open: the call was not made; try again after the timeout."""


@dataclass(frozen=True)
class BreakerSnapshot:
    name: str
    state: str
    consecutive_failures: int
    opened_for_s: float | None
    retry_in_s: float | None


def is_transient(exc: BaseException) -> bool:
    """Tell whether ``exc`` means "the RPC is not answering", not "the node refused"."""
    if isinstance(exc, BreakerOpenError):
        return False
    if isinstance(exc, RpcUnavailableError):
        return True
    return isinstance(exc, RpcResponseError) and exc.kind == chain.RATE_LIMITED


class CircuitBreaker:
    """Closed / open / half-open around one dependency; not thread-safe (one loop)."""

    def __init__(
        self,
        name: str = "rpc",
        *,
        failure_threshold: int = 3,
        reset_timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or attempts < 1:
            raise ValueError("failure_threshold and attempts must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._attempts = attempts
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """The current state; an open circuit past its timeout reads half-open."""
        if self._opened_at is None:
            return CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout_s:
            return HALF_OPEN
        return OPEN

    def snapshot(self) -> BreakerSnapshot:
        """Return the state for an operator (the admin API shows this)."""
        now = self._clock()
        opened_for = None if self._opened_at is None else now - self._opened_at
        retry_in = None
        if opened_for is not None:
            retry_in = max(0.0, self.reset_timeout_s - opened_for)
        return BreakerSnapshot(
            self.name, self.state, self._failures, opened_for, retry_in
        )

    def reset(self) -> None:
        """Close the circuit now (an operator's override after fixing the RPC)."""
        if self._opened_at is not None:
            metrics.BREAKER_TRANSITIONS.labels(self.name, CLOSED).inc()
            logger.info("circuit closed by reset", breaker=self.name)
        self._failures = 0
        self._opened_at = None
        self._probing = False

    async def call(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call ``fn`` with retries (backoff and jitter) unless the circuit is open.

        Raises BreakerOpenError without calling when open; otherwise whatever
        ``fn`` raised last. Safe to cancel.
        """
        self._admit()
        try:
            result = await self._with_retries(fn, *args, **kwargs)
        except BaseException as exc:
            self._probing = False
            if is_transient(exc):
                self._failed(exc)
            elif isinstance(exc, RpcResponseError):
                self._succeeded()
            raise
        self._succeeded()
        return result

    async def _with_retries(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        initial, most = self._backoff
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=initial, max=most, jitter=initial),
            retry=retry_if_exception(is_transient),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await fn(*args, **kwargs)
        raise AssertionError("tenacity returned without a result")  # pragma: no cover

    def _admit(self) -> None:
        state = self.state
        if state == OPEN or (state == HALF_OPEN and self._probing):
            raise BreakerOpenError(
                f"{self.name} circuit is open after {self._failures} failures; "
                f"next probe within {self.reset_timeout_s:.1f} s"
            )
        if state == HALF_OPEN:
            metrics.BREAKER_TRANSITIONS.labels(self.name, HALF_OPEN).inc()
            self._probing = True

    def _succeeded(self) -> None:
        if self._opened_at is not None:
            metrics.BREAKER_TRANSITIONS.labels(self.name, CLOSED).inc()
            logger.info("circuit closed, resuming", breaker=self.name)
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        reopen = self._opened_at is not None
        if reopen or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            metrics.BREAKER_TRANSITIONS.labels(self.name, OPEN).inc()
            logger.warning(
                "circuit opened, pausing work that needs the RPC",
                breaker=self.name,
                failures=self._failures,
                retry_in_s=self.reset_timeout_s,
                error=str(exc),
            )
