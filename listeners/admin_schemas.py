"""JSON Schemas of the OpenAPI document: every body the listener takes or gives.

Amounts are strings of digits (base units); times are RFC 3339 strings;
ids and hashes are 0x-prefixed hex. ``nullable`` fields are present with
``null`` rather than left out, so clients can rely on every key.
"""

from __future__ import annotations

from typing import Any

from haven import audit, intents
from haven.reconciler import alerts, breaks, runs

Schema = dict[str, Any]

ADDRESS: Schema = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}
INTENT_ID: Schema = {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}
HASH: Schema = {"type": "string", "pattern": "^0x[0-9a-f]{64}$"}
WEI: Schema = {"type": "string", "pattern": "^[0-9]{1,78}$"}
SIGNED_WEI: Schema = {"type": "string", "pattern": "^-?[0-9]{1,78}$"}
HNV: Schema = {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,18})?$"}
TIME: Schema = {"type": "string", "format": "date-time"}
# An ISO 8601 date or time in a query; UTC when it has no offset.
MOMENT: Schema = {"type": "string", "minLength": 1, "maxLength": 64}
SHORT_TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": 64}
ID_TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": 128}
ALERT_STATUS: Schema = {"type": "string", "enum": list(alerts.STATUSES)}
SIGNER_STATUS: Schema = {"type": "string", "enum": ["active", "draining", "revoked"]}
VERDICT: Schema = {"type": "string", "enum": list(runs.VERDICTS)}

AURORA_EVENTS = (
    "BookingConfirmed",
    "BookingCompleted",
    "BookingCancelled",
    "ReviewSubmitted",
)
TRIBE_EVENTS = (
    "EventAttended",
    "ContributionRecorded",
    "CoachingCompleted",
    "ReferralCompleted",
    "StakingChanged",
)
EXAMPLE_WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def nullable(schema: Schema) -> Schema:
    """Return ``schema`` that also admits null."""
    if "type" in schema and "$ref" not in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*kinds, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def record(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """Return an object schema; every property is required unless ``optional``."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
    }


def closed(properties: dict[str, Schema], *, required: tuple[str, ...] = ()) -> Schema:
    """Return a request body schema that refuses unknown fields."""
    return {
        "type": "object",
        "required": list(required),
        "properties": properties,
        "additionalProperties": False,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def components() -> dict[str, Schema]:
    """Return every named schema of the document."""
    return {
        **_errors(),
        **_webhooks(),
        **_health(),
        **_wallets(),
        **_health_admin(),
        **_intents(),
        **_transactions(),
        **_alerts(),
        **_audit(),
        **_report(),
        **_bodies(),
    }


def _errors() -> dict[str, Schema]:
    return {
        "FieldProblem": record(
            {"path": {"type": "string"}, "message": {"type": "string"}}
        ),
        "Error": record(
            {
                "error": record(
                    {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "fields": {"type": "array", "items": _ref("FieldProblem")},
                    },
                    optional=("fields",),
                )
            }
        ),
    }


# --- webhooks


def _event(type_name: str, data: Schema, example: dict[str, Any]) -> Schema:
    return {
        "type": "object",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"const": type_name},
            "timestamp": {**TIME, "description": "When the partner saw it."},
            "data": data,
        },
        "examples": [
            {"type": type_name, "timestamp": "2026-12-01T10:00:00Z", "data": example}
        ],
    }


def _webhooks() -> dict[str, Schema]:
    wallet = {**ADDRESS, "description": "The guest's or member's wallet."}
    booking = record(
        {
            "booking_id": ID_TEXT,
            "guest_id": ID_TEXT,
            "wallet": wallet,
            "total_paid_cents": {"type": "integer", "minimum": 1, "maximum": 10**12},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "nights": {"type": "integer", "minimum": 1, "maximum": 3650},
        }
    )
    booking_example = {
        "booking_id": "AUR-100234",
        "guest_id": "G-5521",
        "wallet": EXAMPLE_WALLET,
        "total_paid_cents": 45000,
        "currency": "CAD",
        "nights": 3,
    }
    member = {"member_id": ID_TEXT, "wallet": wallet}
    member_example = {"member_id": "M-77", "wallet": EXAMPLE_WALLET}

    def tribe(name: str, extra: dict[str, Schema], example: dict[str, Any]) -> Schema:
        return _event(name, record({**member, **extra}), {**member_example, **example})

    return {
        "BookingConfirmed": _event("booking.confirmed", booking, booking_example),
        "BookingCompleted": _event("booking.completed", booking, booking_example),
        "BookingCancelled": _event("booking.cancelled", booking, booking_example),
        "ReviewSubmitted": _event(
            "review.submitted",
            record(
                {
                    "booking_id": ID_TEXT,
                    "guest_id": ID_TEXT,
                    "wallet": wallet,
                    "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                }
            ),
            {**booking_example, "rating": 5},
        ),
        "EventAttended": tribe(
            "event.attended",
            {"event_id": ID_TEXT, "event_type": SHORT_TEXT},
            {"event_id": "EV-1", "event_type": "workshop"},
        ),
        "ContributionRecorded": tribe(
            "contribution.recorded",
            {"contribution_id": ID_TEXT},
            {"contribution_id": "C-9"},
        ),
        "CoachingCompleted": tribe(
            "coaching.completed", {"session_id": ID_TEXT}, {"session_id": "S-3"}
        ),
        "ReferralCompleted": tribe(
            "referral.completed",
            {"referral_id": ID_TEXT, "referred_member_id": ID_TEXT},
            {"referral_id": "R-1", "referred_member_id": "M-78"},
        ),
        "StakingChanged": tribe(
            "staking.changed",
            {
                "stake_id": ID_TEXT,
                "action": {"type": "string", "enum": ["stake", "unstake"]},
                "amount_wei": {
                    "anyOf": [WEI, {"type": "integer", "minimum": 0}],
                    "description": "Base units, as digits or a JSON integer.",
                },
            },
            {"stake_id": "ST-1", "action": "stake", "amount_wei": "1000"},
        ),
        "Accepted": record(
            {
                "status": {"const": "accepted"},
                "outcome": {"type": "string"},
                "intent_id": nullable(INTENT_ID),
                "intent_status": nullable({"type": "string"}),
                "delivery_id": {"type": "string"},
                "event_type": {"type": "string"},
            }
        ),
    }


# --- health


def _health() -> dict[str, Schema]:
    check = record(
        {
            "ok": {"type": "boolean"},
            "detail": nullable({"type": "string"}),
            "required": {
                "type": "boolean",
                "description": "Whether its failure makes the process not ready.",
            },
        }
    )
    return {
        "Alive": record({"status": {"const": "alive"}}),
        "Check": check,
        "Readiness": record(
            {
                "status": {
                    "type": "string",
                    "enum": ["ready", "degraded", "not_ready"],
                    "description": "degraded: only checks not required failed.",
                },
                "checks": {
                    "type": "object",
                    "additionalProperties": _ref("Check"),
                },
            }
        ),
    }


# --- wallets, breakers and nonces


def _wallets() -> dict[str, Schema]:
    wallet = record(
        {
            "address": ADDRESS,
            "status": SIGNER_STATUS,
            "next_nonce": {"type": "integer", "minimum": 0},
            "created_at": TIME,
            "revoked_at": nullable(TIME),
            "balance_wei": nullable(WEI),
        }
    )
    entry = record(
        {
            "id": {"type": "integer"},
            "action": {"type": "string"},
            "actor": {"type": "string"},
            "detail": {"type": "object"},
            "at": TIME,
        }
    )
    return {
        "Wallet": wallet,
        "WalletList": record({"wallets": {"type": "array", "items": _ref("Wallet")}}),
        "Rotation": record({"wallet": _ref("Wallet"), "retired": _ref("Wallet")}),
        "CustodyAuditEntry": entry,
        "CustodyAuditPage": record(
            {
                "entries": {"type": "array", "items": _ref("CustodyAuditEntry")},
                "next_cursor": nullable({"type": "string"}),
            }
        ),
    }


def _health_admin() -> dict[str, Schema]:
    seconds = nullable({"type": "number", "minimum": 0})
    breaker = record(
        {
            "name": {"type": "string"},
            "process": {"type": "string"},
            "state": {"type": "string", "enum": ["closed", "open", "half_open"]},
            "consecutive_failures": {"type": "integer", "minimum": 0},
            "opened_for_s": seconds,
            "retry_in_s": seconds,
            "reported_at": TIME,
            "stale": {"type": "boolean"},
        }
    )
    count = nullable({"type": "integer", "minimum": 0})
    nonce = record(
        {
            "signer": ADDRESS,
            "status": SIGNER_STATUS,
            "next_nonce": {"type": "integer", "minimum": 0},
            "chain_latest": count,
            "chain_pending": count,
            "in_flight": count,
            "live_nonces": {"type": "integer", "minimum": 0},
            "lowest_live_nonce": count,
        }
    )
    return {
        "Breaker": breaker,
        "BreakerList": record(
            {"breakers": {"type": "array", "items": _ref("Breaker")}}
        ),
        "BreakerReset": record(
            {
                "reset_id": {"type": "integer"},
                "applied": {"type": "boolean"},
                "breakers": {"type": "array", "items": _ref("Breaker")},
            }
        ),
        "NonceStatus": nonce,
        "NonceList": record(
            {"signers": {"type": "array", "items": _ref("NonceStatus")}}
        ),
        "NonceReset": record(
            {
                "signer": ADDRESS,
                "previous_next_nonce": {"type": "integer", "minimum": 0},
                "next_nonce": {"type": "integer", "minimum": 0},
                "changed": {"type": "boolean"},
            }
        ),
    }


# --- intents and transactions


def _intents() -> dict[str, Schema]:
    intent = record(
        {
            "id": INTENT_ID,
            "partner": {"type": "string"},
            "kind": {"type": "string"},
            "source_key": {"type": "string"},
            "wallet": ADDRESS,
            "amount_wei": WEI,
            "amount_hnv": HNV,
            "rule_version": {"type": "string"},
            "status": {"type": "string", "enum": list(intents.STATUSES)},
            "status_reason": nullable({"type": "string"}),
            "signer": nullable(ADDRESS),
            "nonce": nullable({"type": "integer", "minimum": 0}),
            "tx_hash": nullable(HASH),
            "block_number": nullable({"type": "integer"}),
            "block_hash": nullable(HASH),
            "request_id": nullable({"type": "string"}),
            "reversed_at": nullable(TIME),
            "created_at": TIME,
            "updated_at": TIME,
        }
    )
    history = record(
        {
            "from_status": nullable({"type": "string"}),
            "to_status": {"type": "string"},
            "reason": nullable({"type": "string"}),
            "at": TIME,
        }
    )
    attempt = record(
        {
            "id": {"type": "integer"},
            "signer": ADDRESS,
            "nonce": {"type": "integer", "minimum": 0},
            "tx_hash": HASH,
            "max_fee_wei": WEI,
            "max_priority_fee_wei": WEI,
            "gas_limit": {"type": "integer"},
            "status": {"type": "string"},
            "error": nullable({"type": "string"}),
            "created_at": TIME,
            "broadcast_at": nullable(TIME),
            "last_sent_at": nullable(TIME),
            "sent_block": nullable({"type": "integer"}),
            "mined_block": nullable({"type": "integer"}),
        }
    )
    detail = {
        "allOf": [
            _ref("Intent"),
            record(
                {
                    "history": {"type": "array", "items": _ref("IntentEvent")},
                    "attempts": {"type": "array", "items": _ref("Attempt")},
                }
            ),
        ]
    }
    return {
        "Intent": intent,
        "IntentEvent": history,
        "Attempt": attempt,
        "IntentDetailEnvelope": record({"intent": detail}),
        "IntentPage": record(
            {
                "intents": {"type": "array", "items": _ref("Intent")},
                "next_cursor": nullable({"type": "string"}),
            }
        ),
    }


def _transactions() -> dict[str, Schema]:
    in_flight = record(
        {
            "intent_id": INTENT_ID,
            "nonce": {"type": "integer", "minimum": 0},
            "tx_hash": HASH,
            "status": {"type": "string"},
            "attempts": {"type": "integer", "minimum": 1},
            "max_fee_wei": WEI,
            "max_priority_fee_wei": WEI,
            "first_sent_block": nullable({"type": "integer"}),
            "last_sent_at": nullable(TIME),
            "blocks_waiting": nullable({"type": "integer", "minimum": 0}),
            "stuck": {"type": "boolean"},
        }
    )
    signer = record(
        {
            "signer": ADDRESS,
            "in_flight": {"type": "integer", "minimum": 0},
            "stuck": {"type": "integer", "minimum": 0},
            "transactions": {"type": "array", "items": _ref("InFlight")},
        }
    )
    return {
        "InFlight": in_flight,
        "SignerTransactions": signer,
        "TransactionsOverview": record(
            {
                "head_block": nullable({"type": "integer"}),
                "stuck_after_blocks": {"type": "integer"},
                "queued": {"type": "integer", "minimum": 0},
                "awaiting_approval": {"type": "integer", "minimum": 0},
                "signers": {"type": "array", "items": _ref("SignerTransactions")},
                "failed": {"type": "array", "items": _ref("Intent")},
            }
        ),
    }


# --- alerts and audit


def _alerts() -> dict[str, Schema]:
    text = nullable({"type": "string"})
    alert = record(
        {
            "id": {"type": "integer"},
            "rule": {"type": "string"},
            "subject": {"type": "string"},
            "severity": {"type": "string"},
            "status": ALERT_STATUS,
            "evidence": {"type": "object"},
            "first_seen_at": TIME,
            "last_seen_at": TIME,
            "occurrences": {"type": "integer"},
            "acknowledged_at": nullable(TIME),
            "acknowledged_by": text,
            "resolved_at": nullable(TIME),
            "resolved_by": text,
            "accepted_at": nullable(TIME),
            "accepted_by": text,
            "note": text,
            "notified_at": nullable(TIME),
        }
    )
    detail = {
        "allOf": [
            _ref("Alert"),
            record(
                {
                    "history": {"type": "array", "items": {"type": "object"}},
                    "deliveries": {"type": "array", "items": {"type": "object"}},
                }
            ),
        ]
    }
    return {
        "Alert": alert,
        "AlertDetailEnvelope": record({"alert": detail}),
        "AlertPage": record(
            {
                "alerts": {"type": "array", "items": _ref("Alert")},
                "next_cursor": nullable({"type": "string"}),
            }
        ),
        "BreakClass": {"type": "string", "enum": list(breaks.CLASSES)},
    }


def _audit() -> dict[str, Schema]:
    entry = record(
        {
            "id": {"type": "integer"},
            "at": TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "method": {"type": "string"},
            "path": {"type": "string"},
            "subject": nullable({"type": "string"}),
            "outcome": {
                "type": "string",
                "enum": [
                    audit.SUCCEEDED,
                    audit.REFUSED,
                    audit.UNAUTHORIZED,
                    audit.FAILED,
                ],
            },
            "status_code": {"type": "integer"},
            "detail": {"type": "object"},
            "request_id": {"type": "string"},
        }
    )
    return {
        "AuditEntry": entry,
        "AuditPage": record(
            {
                "entries": {"type": "array", "items": _ref("AuditEntry")},
                "next_cursor": nullable({"type": "string"}),
            }
        ),
    }


def _report() -> dict[str, Schema]:
    array = {"type": "array", "items": {"type": "object"}}
    return {
        "Report": {
            **record(
                {
                    "schema": {"const": "haven.report/1"},
                    "verdict": VERDICT,
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "cut": {"type": "object"},
                    "window": {"type": "object"},
                    "token": nullable(ADDRESS),
                    "decimals": {"const": 18},
                    "totals": {
                        "type": "object",
                        "additionalProperties": nullable(SIGNED_WEI),
                    },
                    "by_status": array,
                    "by_partner": array,
                    "breaks": array,
                    "breaks_by_class": array,
                    "unreconciled": array,
                    "stuck": array,
                    "series": array,
                }
            ),
            "description": "Documented field by field in docs/reports.md.",
        }
    }


# --- request bodies


def _bodies() -> dict[str, Schema]:
    note = {"type": "string", "minLength": 1, "maxLength": 1000}
    return {
        "EmptyBody": closed({}),
        "NoteBody": closed({"note": note}),
        "RequiredNoteBody": closed({"note": note}, required=("note",)),
        "ReasonBody": closed({"reason": note}, required=("reason",)),
        "RotateBody": closed(
            {"fund_wei": {**WEI, "description": "ETH for gas, in wei."}}
        ),
        "NonceResetBody": closed(
            {
                "confirm": {**ADDRESS, "description": "The signer's address again."},
                "expected_next_nonce": {"type": "integer", "minimum": 0},
            },
            required=("confirm",),
        ),
    }
