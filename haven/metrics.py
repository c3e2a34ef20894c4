"""Prometheus metrics of both processes: every name, label and help text.

Two kinds live here. *Events* (a webhook answered, a gas bump, a reorg, an
RPC error, an alert delivered) are counters incremented by the code where
the event happens, one call each. *State* (intents by status, open breaks,
in-flight transactions, tail lag, signer balances, breaker state) is read
from PostgreSQL and the chain when ``/metrics`` is scraped (see
:mod:`haven.readings`), so nothing has to keep a second copy of the books in
memory and a restarted process reports the truth at once.

Label values are bounded: partners, outcome codes, RPC error kinds, signer
addresses and route templates — never ids, amounts or raw paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from haven.settings import PARTNERS

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Counters and histograms of events, shared by everything in one process.
EVENTS = CollectorRegistry(auto_describe=True)

WEBHOOK_REQUESTS = Counter(
    "haven_webhook_requests",
    "Webhook requests answered, by partner, outcome code and status.",
    ["partner", "outcome", "status_code"],
    registry=EVENTS,
)
GAS_BUMPS = Counter(
    "haven_gas_bumps",
    "Replacement transactions signed at a higher fee, by signer.",
    ["signer"],
    registry=EVENTS,
)
REORGS = Counter(
    "haven_reorgs",
    "Chain reorganisations detected by the tailer.",
    registry=EVENTS,
)
REORG_DEPTH = Histogram(
    "haven_reorg_depth_blocks",
    "Depth of detected reorganisations, in blocks.",
    buckets=(1, 2, 3, 5, 8, 13, 21, 34, 64, 128),
    registry=EVENTS,
)
ALERT_DELIVERIES = Counter(
    "haven_alert_deliveries",
    "Alert deliveries attempted, by channel (email, webhook) and outcome "
    "(sent, failed).",
    ["channel", "outcome"],
    registry=EVENTS,
)
RPC_ERRORS = Counter(
    "haven_rpc_errors",
    "JSON-RPC failures, by class: a haven.chain kind or 'unavailable'.",
    ["kind"],
    registry=EVENTS,
)
BREAKER_TRANSITIONS = Counter(
    "haven_breaker_transitions",
    "Circuit breaker state changes, by breaker and new state.",
    ["breaker", "state"],
    registry=EVENTS,
)
HTTP_REQUESTS = Counter(
    "haven_http_requests",
    "HTTP requests served, by route template, method and status.",
    ["route", "method", "status_code"],
    registry=EVENTS,
)
HTTP_DURATION = Histogram(
    "haven_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["route"],
    registry=EVENTS,
)
SCRAPE_ERRORS = Counter(
    "haven_scrape_errors",
    "Scrape-time readings that failed, by source (postgres, chain).",
    ["source"],
    registry=EVENTS,
)


def count_webhook(partner: str, outcome: str, status_code: int) -> None:
    """Count one answered webhook; a partner path we do not serve is 'other'."""
    shown = partner if partner in PARTNERS else "other"
    WEBHOOK_REQUESTS.labels(shown, outcome, str(status_code)).inc()


# The numeric value of each breaker state in haven_breaker_state.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True)
class StateGauge:
    """A gauge whose value is read at scrape time, not kept in memory."""

    name: str
    doc: str
    labels: tuple[str, ...] = ()

    def family(self, values: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
        """Return the metric family holding ``values`` ((label values), value)."""
        family = GaugeMetricFamily(self.name, self.doc, labels=list(self.labels))
        for label_values, value in values:
            family.add_metric(list(label_values), value)
        return family


INTENTS = StateGauge(
    "haven_intents", "Intents by status, read from PostgreSQL.", ("status",)
)
SIGNER_IN_FLIGHT = StateGauge(
    "haven_signer_in_flight",
    "Unsettled nonces whose transaction a node accepted, by signer.",
    ("signer",),
)
SIGNER_QUEUED = StateGauge(
    "haven_signer_queued",
    "Mints waiting to be sent, by signer: nonces signed but not yet accepted "
    "by a node; ready intents no signer has taken yet count as 'unassigned'.",
    ("signer",),
)
SIGNER_BALANCE = StateGauge(
    "haven_signer_balance_wei",
    "Gas balance of each signer that is not revoked, in wei.",
    ("signer",),
)
BREAKS_OPEN = StateGauge(
    "haven_breaks_open",
    "Unresolved reconciliation breaks, by class and priority.",
    ("class", "priority"),
)
OLDEST_BREAK_AGE = StateGauge(
    "haven_break_oldest_age_seconds",
    "Age of the oldest unresolved break of each class (0 when none).",
    ("class",),
)
TAIL_LAG = StateGauge(
    "haven_tail_lag_blocks",
    "Blocks between the chain head and the tailer's checkpoint.",
)
CHAIN_HEAD = StateGauge("haven_chain_head_block", "Latest block number of the node.")
BREAKER_STATE = StateGauge(
    "haven_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
    ("breaker",),
)
SOURCE_UP = StateGauge(
    "haven_scrape_source_up",
    "Whether a scrape-time source answered (1) or not (0).",
    ("source",),
)


class _Families:
    """A collector that yields families computed beforehand."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def exposition(state: Iterable[Metric] = ()) -> bytes:
    """Return the text exposition of the event metrics and ``state`` families."""
    return generate_latest(EVENTS) + generate_latest(_Families(state))
