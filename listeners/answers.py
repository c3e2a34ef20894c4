"""Answers to partners: the 202 body, the error bodies and their stable codes.

Every answer the intake gives is an :class:`Answer`, so it can be stored for
a replay, logged in the attempt log and rendered the same way. Errors travel
as :class:`Rejection` until the handler turns them into an answer; nothing a
client sends reaches the catch-all that answers 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

import orjson
from aiohttp import web

from haven.errors import HavenError

DATABASE_RETRY_AFTER_S = 10


class FieldProblem(TypedDict):
    """One schema problem: a dotted path into the body and what was expected."""

    path: str
    message: str


class AcceptedBody(TypedDict):
    """The 202 body; documented in docs/webhooks.md."""

    status: str
    outcome: str
    intent_id: str | None
    intent_status: str | None
    delivery_id: str
    event_type: str


@dataclass(frozen=True)
class Answer:
    """A status code, a JSON body and the headers that go with them."""

    status_code: int
    body: dict[str, Any]
    outcome: str
    reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def to_response(self) -> web.Response:
        """Render the answer as an aiohttp response with a JSON body."""
        return web.Response(
            status=self.status_code,
            body=orjson.dumps(self.body),
            content_type="application/json",
            headers=self.headers,
        )


class Rejection(HavenError):
    """A request refused with a 4xx or 5xx status and a stable error code.

    ``retry_after_s`` becomes a ``Retry-After`` header when set; ``headers``
    are sent as they are.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        fields: list[FieldProblem] | None = None,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.fields = list(fields or [])
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})
        super().__init__(message)

    def to_answer(self) -> Answer:
        """Return the JSON error answer of this rejection."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        headers = dict(self.headers)
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return Answer(
            status_code=self.status_code,
            body={"error": error},
            outcome=self.code,
            reason=self.message,
            headers=headers,
        )


def accepted(
    *,
    outcome: str,
    intent_id: str | None,
    intent_status: str | None,
    delivery_id: str,
    event_type: str,
) -> Answer:
    """Return the 202 answer of an applied, parked or recorded delivery."""
    body: AcceptedBody = {
        "status": "accepted",
        "outcome": outcome,
        "intent_id": intent_id,
        "intent_status": intent_status,
        "delivery_id": delivery_id,
        "event_type": event_type,
    }
    return Answer(status_code=202, body=dict(body), outcome=outcome)


def database_unavailable() -> Rejection:
    """Return the 503 rejection used whenever PostgreSQL cannot be reached."""
    return Rejection(
        503,
        "database_unavailable",
        "the listener cannot reach its database; retry later",
        retry_after_s=DATABASE_RETRY_AFTER_S,
    )
