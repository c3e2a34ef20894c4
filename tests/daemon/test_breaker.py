"""The RPC circuit breaker: closed, open, half-open, reset — on a fake clock."""

from __future__ import annotations

import pytest

from haven import chain, metrics
from haven.daemon import breaker
from haven.daemon.breaker import BreakerOpenError, CircuitBreaker
from haven.errors import RpcResponseError, RpcUnavailableError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Endpoint:
    """A fake RPC call that fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.down:
            raise RpcUnavailableError("connection refused")
        return "ok"


def make(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(
        "test",
        failure_threshold=2,
        reset_timeout_s=5.0,
        attempts=3,
        backoff_initial_s=0.0,
        backoff_max_s=0.0,
        clock=clock,
    )


async def test_failures_are_retried_then_counted_and_open_the_circuit():
    clock, endpoint = Clock(), Endpoint()
    circuit = make(clock)
    endpoint.down = True

    for _ in range(2):
        with pytest.raises(RpcUnavailableError):
            await circuit.call(endpoint)

    assert endpoint.calls == 6
    assert circuit.state == breaker.OPEN
    with pytest.raises(BreakerOpenError):
        await circuit.call(endpoint)
    assert endpoint.calls == 6


async def test_half_open_lets_one_probe_through_and_success_closes():
    clock, endpoint = Clock(), Endpoint()
    circuit = make(clock)
    endpoint.down = True
    for _ in range(2):
        with pytest.raises(RpcUnavailableError):
            await circuit.call(endpoint)

    clock.now += 5.0
    assert circuit.state == breaker.HALF_OPEN
    endpoint.down = False

    assert await circuit.call(endpoint) == "ok"
    assert circuit.state == breaker.CLOSED
    assert circuit.snapshot().consecutive_failures == 0


async def test_a_failed_probe_opens_the_circuit_again_for_a_full_timeout():
    clock, endpoint = Clock(), Endpoint()
    circuit = make(clock)
    endpoint.down = True
    for _ in range(2):
        with pytest.raises(RpcUnavailableError):
            await circuit.call(endpoint)
    clock.now += 5.0

    with pytest.raises(RpcUnavailableError):
        await circuit.call(endpoint)

    assert circuit.state == breaker.OPEN
    assert circuit.snapshot().retry_in_s == pytest.approx(5.0)


async def test_a_node_answering_with_an_error_is_up_and_not_retried():
    clock = Clock()
    circuit = make(clock)
    calls = 0

    async def refuse() -> None:
        nonlocal calls
        calls += 1
        raise RpcResponseError(
            "eth_sendRawTransaction", -32000, "nonce too low", chain.NONCE_TOO_LOW
        )

    for _ in range(3):
        with pytest.raises(RpcResponseError):
            await circuit.call(refuse)

    assert calls == 3
    assert circuit.state == breaker.CLOSED


async def test_reset_closes_an_open_circuit_at_once():
    clock, endpoint = Clock(), Endpoint()
    circuit = make(clock)
    endpoint.down = True
    for _ in range(2):
        with pytest.raises(RpcUnavailableError):
            await circuit.call(endpoint)

    circuit.reset()
    endpoint.down = False

    assert circuit.snapshot().state == breaker.CLOSED
    assert await circuit.call(endpoint) == "ok"


def transitions(name: str, state: str) -> float:
    """Read haven_breaker_transitions_total{breaker, state} from the registry."""
    found = metrics.EVENTS.get_sample_value(
        "haven_breaker_transitions_total", {"breaker": name, "state": state}
    )
    return found or 0.0


async def test_every_state_change_is_counted_once_by_breaker_and_new_state():
    clock, endpoint = Clock(), Endpoint()
    circuit = CircuitBreaker(
        "test-transitions",
        failure_threshold=1,
        reset_timeout_s=5.0,
        attempts=1,
        clock=clock,
    )
    states = (breaker.OPEN, breaker.HALF_OPEN, breaker.CLOSED)
    before = {state: transitions(circuit.name, state) for state in states}
    endpoint.down = True

    with pytest.raises(RpcUnavailableError):
        await circuit.call(endpoint)  # opens
    clock.now += 5.0
    with pytest.raises(RpcUnavailableError):
        await circuit.call(endpoint)  # half-opens, the probe fails: opens again
    clock.now += 5.0
    endpoint.down = False
    await circuit.call(endpoint)  # half-opens, the probe succeeds: closes
    endpoint.down = True
    with pytest.raises(RpcUnavailableError):
        await circuit.call(endpoint)  # opens
    circuit.reset()  # closes

    grew = {state: transitions(circuit.name, state) - before[state] for state in states}
    assert grew == {breaker.OPEN: 3, breaker.HALF_OPEN: 2, breaker.CLOSED: 2}


async def test_calls_through_a_closed_circuit_count_no_transition():
    clock, endpoint = Clock(), Endpoint()
    circuit = make(clock)
    states = (breaker.OPEN, breaker.HALF_OPEN, breaker.CLOSED)
    before = {state: transitions(circuit.name, state) for state in states}

    await circuit.call(endpoint)
    circuit.reset()

    assert {state: transitions(circuit.name, state) for state in states} == before
