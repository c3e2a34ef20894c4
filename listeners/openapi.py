"""The OpenAPI 3.1 document of the listener's whole HTTP surface, at ``/openapi.json``.

Webhooks, health, metrics, the reports page and the admin API are all
described here, built from small helpers so each operation reads as its
path, parameters and answers. Every response carries ``X-Request-Id``;
every error is the listener's shape ``{"error": {"code", "message",
"fields"?}}``. The contract test runs schemathesis against a running
listener with this document: no 500s, every answer as documented.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from haven import intents
from haven.listeners import admin_schemas as schemas
from haven.listeners.admin import PREFIX

PATH = "/openapi.json"
Schema = dict[str, Any]

ERROR_STATUSES = {
    400: ("BadRequest", "The body is not valid JSON, or a header is malformed."),
    401: ("Unauthorized", "No valid credential: signature or admin key."),
    404: ("NotFound", "No such resource."),
    405: ("MethodNotAllowed", "The method is not served at this path."),
    409: ("Conflict", "The resource is not in a state that allows this."),
    413: ("PayloadTooLarge", "The body is larger than allowed."),
    415: ("UnsupportedMediaType", "The body is not application/json in UTF-8."),
    422: ("Unprocessable", "The request is well-formed but invalid; see fields."),
    429: ("RateLimited", "Too many requests; retry after Retry-After seconds."),
    502: ("ChainRefused", "The chain node refused the request."),
    503: ("Unavailable", "A dependency is down; retry after Retry-After seconds."),
}
RETRY_AFTER_STATUSES = (429, 503)


def setup(app: web.Application) -> None:
    """Serve the document at :data:`PATH`."""
    body = orjson.dumps(document())

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(PATH, serve)


def document() -> Schema:
    """Return the OpenAPI document of every route of the listener."""
    paths: dict[str, Any] = {}
    paths.update(_webhook_paths())
    paths.update(_service_paths())
    paths.update(_admin_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "haven listener",
            "version": "1",
            "description": (
                "Partner webhooks (Standard Webhooks signatures), health, "
                "metrics and the admin API of haven. Amounts are integers in "
                "base units (18 decimals) sent as strings of digits."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas.components(),
            "responses": _error_responses(),
            "headers": {
                "XRequestId": {
                    "description": "The request's correlation id.",
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "securitySchemes": {
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An admin API key (HAVEN_ADMIN_API_KEYS).",
                }
            },
        },
    }


# --- building blocks


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _headers(status: int) -> dict[str, Any]:
    headers = {"X-Request-Id": {"$ref": "#/components/headers/XRequestId"}}
    if status in RETRY_AFTER_STATUSES:
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return headers


def _error_responses() -> dict[str, Any]:
    found = {}
    for status, (name, description) in ERROR_STATUSES.items():
        response: dict[str, Any] = {
            "description": description,
            "headers": _headers(status),
            "content": {"application/json": {"schema": ref("Error")}},
        }
        if status == 401:
            response["headers"]["WWW-Authenticate"] = {
                "description": "Present on admin API answers.",
                "schema": {"type": "string"},
            }
        found[name] = response
    return found


def ok(schema: Schema, description: str, status: int = 200) -> dict[str, Any]:
    """Return a JSON success response."""
    return {
        str(status): {
            "description": description,
            "headers": _headers(status),
            "content": {"application/json": {"schema": schema}},
        }
    }


def errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {"$ref": f"#/components/responses/{ERROR_STATUSES[status][0]}"}
        for status in statuses
    }


def json_body(schema: Schema, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def path_parameter(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def query_parameter(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


LIMIT = query_parameter(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    "Page size.",
)
CURSOR = query_parameter(
    "cursor",
    {"type": "string", "maxLength": 512},
    "next_cursor of the previous page.",
)
INTENT_ID = path_parameter(
    "intent_id", schemas.INTENT_ID, "The intent id, 0x and 64 hex digits."
)
ADDRESS = path_parameter("address", schemas.ADDRESS, "A signer's address.")
ALERT_ID = path_parameter(
    "alert_id",
    {"type": "string", "pattern": "^[0-9]{1,18}$"},
    "The alert's numeric id.",
)


def admin_operation(
    summary: str,
    tag: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return an admin operation: bearer key, 401, 422, 429 and 503 documented.

    422 is always possible: unknown query parameters are refused everywhere;
    429 once a client has sent too many missing or wrong keys.
    """
    codes = [401, 422, 429, 503]
    if body is not None:
        codes += [400, 413, 415]
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "security": [{"adminKey": []}],
        "parameters": parameters or [],
        "responses": {**responses, **errors(*sorted(set(codes)))},
    }
    if body is not None:
        operation["requestBody"] = body
    return operation


# --- webhooks


def _webhook_paths() -> dict[str, Any]:
    signed = [
        {
            "name": name,
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": description,
        }
        for name, description in (
            ("webhook-id", "The delivery id, 1 to 128 visible ASCII characters."),
            ("webhook-timestamp", "Whole seconds since the Unix epoch."),
            ("webhook-signature", "Space-separated v1,<base64 HMAC-SHA256>."),
        )
    ]
    found: dict[str, Any] = {}
    for partner, events in (
        ("aurora", schemas.AURORA_EVENTS),
        ("tribe", schemas.TRIBE_EVENTS),
    ):
        found[f"/webhooks/{partner}"] = {
            "post": {
                "summary": f"Deliver one {partner.title()} event",
                "tags": ["webhooks"],
                "description": (
                    "Standard Webhooks: sign `webhook-id.webhook-timestamp.body` "
                    "with HMAC-SHA256 under the partner's secret. An authentic "
                    "event of an unknown type is stored, parked and answered 202."
                ),
                "parameters": signed,
                "requestBody": json_body({"oneOf": [ref(e) for e in events]}),
                "responses": {
                    **ok(ref("Accepted"), "Accepted (or replayed).", 202),
                    **errors(400, 401, 404, 409, 413, 415, 422, 429, 503),
                },
            }
        }
    return found


# --- health, metrics, the document itself, the reports page


def _service_paths() -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "tags": ["health"],
                "responses": ok(ref("Alive"), "The process runs."),
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: PostgreSQL, Redis, RPC and tail lag",
                "description": (
                    "The listener needs PostgreSQL only: Redis, the RPC node "
                    "and the tail lag are reported, and their failure answers "
                    "200 degraded. The daemon needs PostgreSQL, the RPC node "
                    "and the tail lag."
                ),
                "tags": ["health"],
                "responses": {
                    **ok(ref("Readiness"), "Ready (or degraded) for work."),
                    "503": {
                        "description": "Not ready; the failing checks say why.",
                        "headers": _headers(200),
                        "content": {"application/json": {"schema": ref("Readiness")}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["health"],
                "responses": _plain("Text exposition format.", "text/plain", text),
            }
        },
        PATH: {
            "get": {
                "summary": "This document",
                "tags": ["health"],
                "responses": ok({"type": "object"}, "The OpenAPI document."),
            }
        },
        "/reports": {
            "get": {
                "summary": "The reports page for a browser",
                "tags": ["reports"],
                "description": (
                    "A page with no data of its own: it asks for an admin key "
                    "(or reads #key=... from the URL) and fetches the report."
                ),
                "responses": _plain("The page.", "text/html", text),
            }
        },
        "/reports/assets/{name}": {
            "get": {
                "summary": "Script and style of the reports page",
                "tags": ["reports"],
                "parameters": [
                    path_parameter(
                        "name",
                        {"type": "string", "enum": ["page.js", "page.css"]},
                        "The asset.",
                    )
                ],
                "responses": {
                    "200": {
                        "description": "The asset.",
                        "headers": _headers(200),
                        "content": {
                            "text/javascript": {"schema": text},
                            "text/css": {"schema": text},
                        },
                    },
                    **errors(404),
                },
            }
        },
    }


def _plain(description: str, media_type: str, schema: Schema) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "headers": _headers(200),
            "content": {media_type: {"schema": schema}},
        }
    }


# --- the admin API


def _admin_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for part in (
        _wallet_paths,
        _health_paths,
        _intent_paths,
        _transaction_paths,
        _alert_paths,
        _report_paths,
        _audit_paths,
    ):
        for path, operations in part().items():
            paths[PREFIX + path] = operations
    return paths


def _wallet_paths() -> dict[str, Any]:
    wallet = {
        "type": "object",
        "required": ["wallet"],
        "properties": {"wallet": ref("Wallet")},
    }
    rotated = ref("Rotation")
    return {
        "/wallets": {
            "get": admin_operation(
                "List signers, oldest first",
                "wallets",
                ok(ref("WalletList"), "The signers."),
                parameters=[
                    query_parameter("status", schemas.SIGNER_STATUS, "Status.")
                ],
            ),
            "post": admin_operation(
                "Create a signer (key generated and stored encrypted)",
                "wallets",
                {**ok(wallet, "The new signer.", 201), **errors(409)},
                body=json_body(ref("EmptyBody"), required=False),
            ),
        },
        "/wallets/{address}": {
            "get": admin_operation(
                "One signer",
                "wallets",
                {**ok(wallet, "The signer."), **errors(404)},
                parameters=[ADDRESS],
            )
        },
        "/wallets/{address}/audit": {
            "get": admin_operation(
                "The custody audit trail of one signer, newest first",
                "wallets",
                {**ok(ref("CustodyAuditPage"), "One page."), **errors(404)},
                parameters=[ADDRESS, LIMIT, CURSOR],
            )
        },
        "/wallets/{address}/rotate": {
            "post": admin_operation(
                "Rotate a signer: successor created and granted, old one drained",
                "wallets",
                {
                    **ok(rotated, "Rotated; the old signer is revoked."),
                    **ok(rotated, "Rotated; the old signer is still draining.", 202),
                    **errors(404, 409, 502),
                },
                parameters=[ADDRESS],
                body=json_body(ref("RotateBody"), required=False),
            )
        },
        "/wallets/{address}/revoke": {
            "post": admin_operation(
                "Drain and revoke a signer",
                "wallets",
                {
                    **ok(wallet, "Revoked."),
                    **ok(wallet, "Draining; repeat later to finish.", 202),
                    **errors(404, 409, 502),
                },
                parameters=[ADDRESS],
                body=json_body(ref("EmptyBody"), required=False),
            )
        },
    }


def _health_paths() -> dict[str, Any]:
    name = path_parameter(
        "name", {"type": "string", "pattern": "^[a-z0-9_.-]{1,64}$"}, "Breaker."
    )
    return {
        "/health/breakers": {
            "get": admin_operation(
                "Circuit breakers of every running daemon",
                "health",
                ok(ref("BreakerList"), "The breakers."),
            )
        },
        "/health/breakers/{name}/reset": {
            "post": admin_operation(
                "Close a breaker in every daemon running it",
                "health",
                {
                    **ok(ref("BreakerReset"), "Applied by every live daemon."),
                    **ok(ref("BreakerReset"), "Requested; not yet applied.", 202),
                    **errors(404),
                },
                parameters=[name],
                body=json_body(ref("EmptyBody"), required=False),
            )
        },
        "/health/nonces": {
            "get": admin_operation(
                "Nonce counter of each signer beside the chain's view",
                "health",
                ok(ref("NonceList"), "The signers' nonces."),
            )
        },
        "/health/nonces/{address}/reset": {
            "post": admin_operation(
                "Guarded reset of a signer's next nonce to the chain's latest",
                "health",
                {
                    **ok(ref("NonceReset"), "Reset (or already equal)."),
                    **errors(404, 409, 502),
                },
                parameters=[ADDRESS],
                body=json_body(ref("NonceResetBody")),
            )
        },
    }


def _intent_paths() -> dict[str, Any]:
    filters = [
        query_parameter(
            "status", {"type": "string", "enum": list(intents.STATUSES)}, "Status."
        ),
        query_parameter("partner", schemas.SHORT_TEXT, "Partner, e.g. aurora."),
        query_parameter("kind", schemas.SHORT_TEXT, "Kind, e.g. booking."),
        query_parameter("wallet", schemas.ADDRESS, "Rewarded wallet."),
        query_parameter("signer", schemas.ADDRESS, "Signer that minted it."),
        query_parameter("request_id", schemas.SHORT_TEXT, "Correlation id."),
        query_parameter("created_from", schemas.MOMENT, "Created at or after."),
        query_parameter("created_to", schemas.MOMENT, "Created before."),
        LIMIT,
        CURSOR,
    ]
    intent = ok(
        {
            "type": "object",
            "required": ["intent"],
            "properties": {"intent": ref("Intent")},
        },
        "The intent.",
    )
    return {
        "/intents": {
            "get": admin_operation(
                "List intents, newest first",
                "intents",
                ok(ref("IntentPage"), "One page of intents."),
                parameters=filters,
            )
        },
        "/intents/{intent_id}": {
            "get": admin_operation(
                "One intent with its history and attempts",
                "intents",
                {
                    **ok(ref("IntentDetailEnvelope"), "The intent."),
                    **errors(404),
                },
                parameters=[INTENT_ID],
            )
        },
        "/intents/{intent_id}/approve": {
            "post": admin_operation(
                "Approve an intent held for approval (approval → ready)",
                "intents",
                {**intent, **errors(404, 409)},
                parameters=[INTENT_ID],
                body=json_body(ref("NoteBody"), required=False),
            )
        },
        "/intents/{intent_id}/reject": {
            "post": admin_operation(
                "Reject an intent held for approval (approval → rejected)",
                "intents",
                {**intent, **errors(404, 409)},
                parameters=[INTENT_ID],
                body=json_body(ref("ReasonBody")),
            )
        },
    }


def _transaction_paths() -> dict[str, Any]:
    intent = ok(
        {
            "type": "object",
            "required": ["intent"],
            "properties": {"intent": ref("Intent")},
        },
        "The intent.",
    )
    return {
        "/transactions": {
            "get": admin_operation(
                "Queued, in-flight, stuck and failed transactions per signer",
                "transactions",
                ok(ref("TransactionsOverview"), "The monitoring view."),
                parameters=[
                    query_parameter("signer", schemas.ADDRESS, "Only this signer.")
                ],
            )
        },
        "/transactions/{intent_id}/retry": {
            "post": admin_operation(
                "Retry a failed intent (failed → ready, fresh nonce)",
                "transactions",
                {**intent, **errors(404, 409)},
                parameters=[INTENT_ID],
                body=json_body(ref("NoteBody"), required=False),
            )
        },
    }


def _alert_paths() -> dict[str, Any]:
    alert = ok(
        {
            "type": "object",
            "required": ["alert"],
            "properties": {"alert": ref("Alert")},
        },
        "The alert.",
    )

    def move(summary: str, body: Schema, required: bool) -> dict[str, Any]:
        return {
            "post": admin_operation(
                summary,
                "alerts",
                {**alert, **errors(404, 409)},
                parameters=[ALERT_ID],
                body=json_body(body, required=required),
            )
        }

    return {
        "/alerts": {
            "get": admin_operation(
                "List alerts, newest first",
                "alerts",
                ok(ref("AlertPage"), "One page of alerts."),
                parameters=[
                    query_parameter("status", schemas.ALERT_STATUS, "Status."),
                    query_parameter("rule", schemas.SHORT_TEXT, "Rule."),
                    query_parameter("subject", schemas.SHORT_TEXT, "Subject."),
                    LIMIT,
                    CURSOR,
                ],
            )
        },
        "/alerts/{alert_id}": {
            "get": admin_operation(
                "One alert with its history and deliveries",
                "alerts",
                {**ok(ref("AlertDetailEnvelope"), "The alert."), **errors(404)},
                parameters=[ALERT_ID],
            )
        },
        "/alerts/{alert_id}/acknowledge": move(
            "Acknowledge an open alert", ref("EmptyBody"), False
        ),
        "/alerts/{alert_id}/resolve": move("Resolve an alert", ref("NoteBody"), False),
        "/alerts/{alert_id}/accept": move(
            "Accept an alert with a mandatory note", ref("RequiredNoteBody"), True
        ),
    }


def _report_paths() -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "/reports": {
            "get": admin_operation(
                "The reconciliation report (as `haven report`)",
                "reports",
                {
                    "200": {
                        "description": (
                            "The report; Haven-Verdict names the verdict. Without "
                            "as_of the run is stored and moves break state."
                        ),
                        "headers": {
                            **_headers(200),
                            "Haven-Verdict": {"schema": schemas.VERDICT},
                        },
                        "content": {
                            "application/json": {"schema": ref("Report")},
                            "text/csv": {"schema": text},
                            "text/html": {"schema": text},
                        },
                    }
                },
                parameters=[
                    query_parameter(
                        "format",
                        {"type": "string", "enum": ["json", "csv", "html"]},
                        "Format; json by default.",
                    ),
                    query_parameter(
                        "from", schemas.MOMENT, "Intents created at or after."
                    ),
                    query_parameter("to", schemas.MOMENT, "Intents created before."),
                    query_parameter(
                        "as_of", schemas.MOMENT, "The books as they stood then."
                    ),
                ],
            )
        }
    }


def _audit_paths() -> dict[str, Any]:
    return {
        "/audit": {
            "get": admin_operation(
                "The admin audit log, newest first",
                "audit",
                ok(ref("AuditPage"), "One page of audit rows."),
                parameters=[
                    query_parameter("actor", schemas.SHORT_TEXT, "Key fingerprint."),
                    query_parameter("action", schemas.SHORT_TEXT, "Action prefix."),
                    query_parameter("subject", schemas.SHORT_TEXT, "Subject."),
                    LIMIT,
                    CURSOR,
                ],
            )
        }
    }
