"""What every admin handler shares: its context, reading input, writing answers.

Input is read strictly: unknown query parameters and body fields are
refused (a misspelt filter must not silently widen a listing), every
problem is gathered with its path and answered 422 in the listener's error
shape (:mod:`haven.listeners.answers`). Nothing a client sends can raise
anything but a :class:`~haven.listeners.answers.Rejection` out of here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from haven import audit
from haven.chain import ChainClient
from haven.listeners import correlation, events
from haven.listeners.answers import FieldProblem, Rejection
from haven.listeners.auth import AdminKeys
from haven.listeners.ratelimits import Limiter
from haven.settings import Settings
from haven.types import ChecksumAddress, IntentId, checksum, parse_intent_id

MAX_BODY_BYTES = 16 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_ROW_ID = 2**63 - 1  # PostgreSQL bigint
MAX_NOTE_LENGTH = 1000
# Times a client may ask about. Nothing of ours predates the Unix epoch (nor
# does any block), and the margin below year 9999 keeps every offset and
# every day added to a bound inside what datetime and PostgreSQL can hold.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 1, 1, tzinfo=UTC)
# Said inclusively: the last day a time may fall on.
TIME_RANGE = (
    f"from {EARLIEST_TIME:%Y-%m-%d} through "
    f"{LATEST_TIME - timedelta(days=1):%Y-%m-%d} UTC"
)

ACTOR = web.RequestKey("haven.admin.actor", str)
AUDITED = web.RequestKey("haven.admin.audited", bool)
AUDIT_DETAIL = web.RequestKey("haven.admin.audit_detail", dict[str, Any])


@dataclass(frozen=True)
class AdminContext:
    """The resources of the admin API, shared by every handler."""

    settings: Settings
    pool: asyncpg.Pool
    chain: ChainClient
    keys: AdminKeys
    # Counts refused keys per client; None: refusals are not limited.
    limiter: Limiter | None = None


CONTEXT = web.AppKey("haven.admin.context", AdminContext)


def context(request: web.Request) -> AdminContext:
    return request.config_dict[CONTEXT]


def actor(request: web.Request) -> str:
    """Return the fingerprint of the key that made ``request``."""
    return request.get(ACTOR, audit.ANONYMOUS)


def note_audit(request: web.Request, **detail: Any) -> None:
    """Add ``detail`` to the audit row the middleware writes for ``request``."""
    request.setdefault(AUDIT_DETAIL, {}).update(detail)


def mark_audited(request: web.Request) -> None:
    """Tell the middleware the handler wrote the audit row in its own transaction."""
    request[AUDITED] = True


def is_audited(request: web.Request) -> bool:
    return request.get(AUDITED, False)


def audit_entry(
    request: web.Request, status_code: int, detail: dict[str, Any] | None = None
) -> audit.Entry:
    """Return the audit row of ``request`` answered with ``status_code``."""
    route = request.match_info.route
    action = route.name if route.name else "unknown"
    subject = next(iter(request.match_info.values()), None)
    merged = dict(request.get(AUDIT_DETAIL, {}))
    merged.update(detail or {})
    return audit.Entry(
        actor=actor(request),
        action=action,
        method=request.method,
        path=request.path,
        subject=subject,
        status_code=status_code,
        request_id=correlation.request_id(request),
        remote_addr=request.remote,
        detail=merged,
    )


# --- answers


def respond(body: Any, status: int = 200) -> web.Response:
    """Return a JSON response; amounts must already be strings."""
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def not_found(what: str, key: str) -> Rejection:
    return Rejection(404, "not_found", f"no {what} {key}")


def conflict(code: str, message: str) -> Rejection:
    return Rejection(409, code, message)


def invalid(path: str, message: str) -> Rejection:
    return Rejection(
        422,
        "invalid_request",
        "the request has 1 problem; see fields",
        fields=[{"path": path, "message": message}],
    )


def is_in_time_range(value: datetime) -> bool:
    """Tell whether an aware ``value`` lies within the times a client may ask about.

    Compared as it is: converting an offset time near year 1 or 9999 to UTC
    would raise OverflowError.
    """
    return EARLIEST_TIME <= value < LATEST_TIME


def timestamp(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def hex_or_none(value: bytes | None) -> str | None:
    return "0x" + value.hex() if value is not None else None


# --- path parameters


def path_intent_id(request: web.Request, name: str = "intent_id") -> IntentId:
    try:
        return parse_intent_id(request.match_info[name])
    except ValueError:
        raise invalid(name, "expected 0x and 64 hex digits") from None


def path_address(request: web.Request, name: str = "address") -> ChecksumAddress:
    try:
        return checksum(request.match_info[name])
    except ValueError:
        raise invalid(name, "expected a 0x-prefixed 20-byte address") from None


def path_int(request: web.Request, name: str) -> int:
    text = request.match_info[name]
    if not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) < 1:
        raise invalid(name, "expected a positive integer")
    return int(text)


# --- query strings


class Query:
    """Reads the query string, gathering problems; call :meth:`done` last."""

    def __init__(self, request: web.Request, allowed: Collection[str]) -> None:
        self._values: Mapping[str, str] = request.query
        self.problems: list[FieldProblem] = []
        for name in request.query:
            if name not in allowed:
                self.problems.append(
                    {"path": f"query.{name}", "message": "unknown parameter"}
                )
            elif len(request.query.getall(name)) > 1:
                self.problems.append(
                    {"path": f"query.{name}", "message": "given more than once"}
                )

    def fail(self, name: str, message: str) -> None:
        """Record a problem of parameter ``name``; :meth:`done` answers it."""
        self.problems.append({"path": f"query.{name}", "message": message})

    def text(self, name: str, *, max_length: int = 128) -> str | None:
        value = self._values.get(name)
        if value is None:
            return None
        if not 1 <= len(value) <= max_length or not value.isprintable():
            self.fail(name, f"expected 1 to {max_length} printable characters")
            return None
        return value

    def choice(self, name: str, options: Collection[str]) -> str | None:
        value = self._values.get(name)
        if value is None:
            return None
        if value not in options:
            self.fail(name, f"expected one of {', '.join(sorted(options))}")
            return None
        return value

    def address(self, name: str) -> ChecksumAddress | None:
        value = self._values.get(name)
        if value is None:
            return None
        try:
            return checksum(value)
        except ValueError:
            self.fail(name, "expected a 0x-prefixed 20-byte address")
            return None

    def integer(self, name: str, low: int, high: int, default: int) -> int:
        value = self._values.get(name)
        if value is None:
            return default
        if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
            self.fail(name, f"expected an integer from {low} to {high}")
            return default
        return int(value)

    def limit(self) -> int:
        return self.integer("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)

    def moment(self, name: str) -> datetime | None:
        """Read an ISO 8601 date or time, UTC when it has no offset.

        As the command line reads them; within :data:`TIME_RANGE`.
        """
        value = self.text(name, max_length=64)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            # A query string decodes an unescaped + to a space.
            hint = " (a + in an offset is sent as %2B)" if " " in value else ""
            self.fail(name, f"expected an ISO 8601 date or time, e.g. 2026-12-01{hint}")
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return self._in_range(name, parsed)

    def _in_range(self, name: str, value: datetime) -> datetime | None:
        if not is_in_time_range(value):
            self.fail(name, f"expected a time {TIME_RANGE}")
            return None
        return value

    def cursor(self) -> dict[str, Any] | None:
        value = self._values.get("cursor")
        if value is None:
            return None
        decoded = decode_cursor(value)
        if decoded is None:
            self.fail("cursor", "not a cursor returned by this listing")
        return decoded

    def before_id(self) -> int | None:
        """Read the ``before_id`` cursor of a listing paged by row id."""
        cursor = self.cursor()
        if cursor is None:
            return None
        before_id = cursor.get("before_id")
        # A cursor is opaque but not trusted: a forged id past bigint would
        # reach PostgreSQL and fail there.
        if type(before_id) is not int or not 0 < before_id <= MAX_ROW_ID:
            self.fail("cursor", "not a cursor of this listing")
            return None
        return before_id

    def done(self) -> None:
        """Raise a 422 Rejection listing every problem found, if any."""
        if self.problems:
            raise _invalid_all(self.problems)


def encode_cursor(position: dict[str, Any]) -> str:
    """Return an opaque cursor for ``position`` (a small JSON object)."""
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(text: str) -> dict[str, Any] | None:
    """Return the position of a cursor, or None when it is not one of ours."""
    if len(text) > 512:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        position = orjson.loads(raw)
    except (binascii.Error, ValueError):
        return None
    return position if isinstance(position, dict) else None


# --- bodies


class Body:
    """Reads a JSON object body, gathering problems; call :meth:`done` last."""

    def __init__(self, document: dict[str, Any], allowed: Collection[str]) -> None:
        self._fields = document
        self.problems: list[FieldProblem] = [
            {"path": name, "message": "unknown field"}
            for name in document
            if name not in allowed
        ]

    def _fail(self, name: str, message: str) -> None:
        self.problems.append({"path": name, "message": message})

    def raw(self, name: str) -> Any:
        """Return the field as sent (None when absent), for a caller to judge."""
        return self._fields.get(name)

    def text(
        self, name: str, *, required: bool = False, max_length: int = MAX_NOTE_LENGTH
    ) -> str | None:
        value = self._fields.get(name)
        if value is None:
            if required:
                self._fail(name, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self._fail(name, "expected a non-empty string")
            return None
        if any(not ch.isprintable() and ch not in "\n\t" for ch in value):
            self._fail(name, "must not contain control characters")
            return None
        if len(value) > max_length:
            self._fail(name, f"expected at most {max_length} characters")
            return None
        return value.strip()

    def boolean(self, name: str) -> bool | None:
        value = self._fields.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            self._fail(name, "expected true or false")
            return None
        return value

    def address(self, name: str, *, required: bool = False) -> ChecksumAddress | None:
        value = self._fields.get(name)
        if value is None:
            if required:
                self._fail(name, "is required")
            return None
        try:
            return checksum(value) if isinstance(value, str) else checksum("")
        except ValueError:
            self._fail(name, "expected a 0x-prefixed 20-byte address")
            return None

    def integer(
        self, name: str, low: int, high: int, *, required: bool = False
    ) -> int | None:
        value = self._fields.get(name)
        if value is None:
            if required:
                self._fail(name, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self._fail(name, f"expected an integer from {low} to {high}")
            return None
        if not low <= value <= high:
            self._fail(name, f"expected an integer from {low} to {high}")
            return None
        return value

    def done(self) -> None:
        """Raise a 422 Rejection listing every problem found, if any."""
        if self.problems:
            raise _invalid_all(self.problems)


async def read_body(request: web.Request, allowed: Collection[str]) -> Body:
    """Read the request's JSON object body (an empty body is ``{}``).

    Raises a Rejection: 413 over :data:`MAX_BODY_BYTES`, 415 for a body that
    is not JSON, 400 for malformed JSON, 422 for a JSON value that is not
    an object.
    """
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise _too_large()
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    if not raw.strip():
        return Body({}, allowed)
    if request.content_type != "application/json":
        raise Rejection(
            415, "unsupported_media_type", "send the body as application/json"
        )
    # The webhooks' strict reading: no duplicate keys, no NaN, bounded
    # numbers and nesting.
    document = events.load_json(raw)
    if not isinstance(document, dict):
        raise _invalid_all([{"path": "$", "message": "expected a JSON object"}])
    return Body(document, allowed)


def _too_large() -> Rejection:
    return Rejection(
        413, "payload_too_large", f"the body must not exceed {MAX_BODY_BYTES} bytes"
    )


def _invalid_all(problems: list[FieldProblem]) -> Rejection:
    noun = "problem" if len(problems) == 1 else "problems"
    return Rejection(
        422,
        "invalid_request",
        f"the request has {len(problems)} {noun}; see fields",
        fields=problems,
    )
