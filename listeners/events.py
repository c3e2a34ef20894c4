"""Partner events: their envelopes, their typed data, and the ``partner_events`` table.

A body is parsed only after its signature holds. Parsing is strict where a
lenient parser would let two readers disagree (duplicate keys, NaN, lone
surrogates) and exact where money is involved: integers keep every digit.
Validation gathers every problem with its dotted path (``data.wallet``) so
one 422 tells the sender everything to fix. A type the partner has not told
us about is not an error: it is stored and parked for operators.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from haven.listeners.answers import FieldProblem, Rejection
from haven.types import ZERO_ADDRESS, ChecksumAddress, Wei, checksum

MAX_ID_LENGTH = 128
MAX_TOTAL_PAID_CENTS = 10**12
MAX_NIGHTS = 3650
_INT64 = range(-(2**63), 2**63)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CURRENCY = re.compile(r"[A-Z]{3}")
_DIGITS = re.compile(r"[0-9]{1,78}")
MAX_DEPTH = 32
# Python's own bound on converting digits to an int (and back, which the
# canonical form of a body does); an amount in wei needs at most 78.
MAX_INTEGER_DIGITS = 4300
# A JSON string, or an unterminated one up to the end of the body: matched
# possessively and always from its opening quote, so one pass strips them
# all. (Requiring the closing quote made the engine scan to the end again
# from every quote of an unterminated string: quadratic in the body.)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)


class InvalidEventError(Rejection):
    """The body is JSON but not a valid event; answered 422 with field paths."""

    def __init__(self, fields: list[FieldProblem]) -> None:
        noun = "problem" if len(fields) == 1 else "problems"
        super().__init__(
            422,
            "invalid_event",
            f"the event has {len(fields)} {noun}; see fields",
            fields=fields,
        )


@dataclass(frozen=True)
class Booking:
    booking_id: str
    guest_id: str
    wallet: ChecksumAddress
    total_paid_cents: int
    currency: str
    nights: int


@dataclass(frozen=True)
class Review:
    booking_id: str
    guest_id: str
    wallet: ChecksumAddress
    rating: int


@dataclass(frozen=True)
class Attendance:
    member_id: str
    wallet: ChecksumAddress
    event_id: str
    event_type: str


@dataclass(frozen=True)
class Contribution:
    member_id: str
    wallet: ChecksumAddress
    contribution_id: str


@dataclass(frozen=True)
class Coaching:
    member_id: str
    wallet: ChecksumAddress
    session_id: str


@dataclass(frozen=True)
class Referral:
    member_id: str
    wallet: ChecksumAddress
    referral_id: str
    referred_member_id: str


@dataclass(frozen=True)
class Stake:
    member_id: str
    wallet: ChecksumAddress
    stake_id: str
    action: str
    amount_wei: Wei


EventData = Booking | Review | Attendance | Contribution | Coaching | Referral | Stake


@dataclass(frozen=True)
class Event:
    """One authentic partner event; ``data`` is None for an unknown type."""

    partner: str
    type: str
    occurred_at: datetime
    data: EventData | None
    payload: dict[str, Any]

    @property
    def is_known(self) -> bool:
        return self.data is not None


# --- parsing


def parse_body(body: bytes) -> dict[str, Any]:
    """Parse a webhook body, a UTF-8 JSON object, with :func:`load_json`.

    Raise a 400 Rejection if it is not JSON, InvalidEventError (422) if it
    is JSON but not an object.
    """
    document = load_json(body)
    if not isinstance(document, dict):
        raise InvalidEventError(
            [{"path": "$", "message": "expected a JSON object (the envelope)"}]
        )
    return document


def load_json(body: bytes) -> Any:
    """Parse UTF-8 JSON strictly; raise a 400 Rejection (``malformed_json``) if not.

    Integers keep every digit (amounts in wei exceed 64 bits). Duplicate
    keys, NaN and Infinity are refused: readers disagree about them. So are
    integers of more than :data:`MAX_INTEGER_DIGITS` digits, numbers too
    large for a float, and nesting deeper than :data:`MAX_DEPTH` (checked
    before the recursive parser sees it).
    """
    if _nests_deeper_than(body, MAX_DEPTH):
        raise Rejection(
            400, "malformed_json", f"the body nests deeper than {MAX_DEPTH} levels"
        )
    try:
        text = body.decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_int=_integer,
            parse_float=_finite_float,
        )
    except _NumberTooLargeError as exc:
        raise Rejection(400, "malformed_json", str(exc)) from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Rejection(
            400, "malformed_json", f"the body is not valid UTF-8 JSON: {_brief(exc)}"
        ) from exc


def _nests_deeper_than(body: bytes, limit: int) -> bool:
    # The recursion limit is no guard: a dependency raises it to 100000, and
    # the C parser would then recurse once per bracket of a 64 KiB body.
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_JSON_STRING.sub(b"", body)):
        depth += 1 if bracket.group() in (b"[", b"{") else -1
        if depth > limit:
            return True
    return False


def canonical(payload: dict[str, Any]) -> bytes:
    """Return the canonical bytes of a parsed body: sorted keys, no spaces."""
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    # Lone surrogates are refused later by validation; here they must still
    # hash, so a body holding one can be compared with a stored delivery.
    return text.encode("utf-8", "surrogatepass")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _NumberTooLargeError(ValueError):
    """A JSON number beyond what the body may hold; its message is for the sender."""


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise _NumberTooLargeError(
            f"an integer of the body has {digits} digits; "
            f"at most {MAX_INTEGER_DIGITS} digits are accepted"
        )
    return int(text)


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (math.inf, -math.inf):
        raise _NumberTooLargeError(
            "a number of the body is beyond the range of a float (about 1.8e308)"
        )
    return number


def _abridged(value: int, keep: int = 12) -> str:
    """``value`` in digits, or its first digits and length when it is long.

    A number of thousands of digits is told about, not echoed into answers
    and logs.
    """
    digits = str(abs(value))
    if len(digits) <= 2 * keep:
        return str(value)
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:keep]}... ({len(digits)} digits)"


def _brief(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).splitlines()[0][:200]


# --- validation


class Reader:
    """Reads typed fields of one JSON object, gathering problems with paths."""

    def __init__(self, value: Any, path: str, problems: list[FieldProblem]) -> None:
        self.path = path
        self.problems = problems
        self.fields: dict[str, Any] = value if isinstance(value, dict) else {}
        if not isinstance(value, dict):
            self.fail(path, "expected a JSON object")

    def fail(self, path: str, message: str) -> None:
        self.problems.append({"path": path, "message": message})

    def _get(self, name: str) -> tuple[str, Any]:
        path = f"{self.path}.{name}" if self.path != "$" else name
        if name not in self.fields or self.fields[name] is None:
            self.fail(path, "is required")
            return path, None
        return path, self.fields[name]

    def text(self, name: str, *, max_length: int = MAX_ID_LENGTH) -> str:
        path, value = self._get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.fail(path, "expected a string")
        elif not 1 <= len(value) <= max_length:
            self.fail(path, f"expected 1 to {max_length} characters")
        elif _CONTROL.search(value):
            self.fail(path, "must not contain control characters")
        else:
            return value
        return ""

    def integer(self, name: str, low: int, high: int) -> int:
        path, value = self._get(name)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"expected an integer from {low} to {high}")
        elif not low <= value <= high:
            self.fail(
                path,
                f"expected an integer from {low} to {high}, got {_abridged(value)}",
            )
        else:
            return value
        return 0

    def wei(self, name: str) -> Wei:
        """Read a uint256 given as a JSON integer or a string of digits."""
        path, value = self._get(name)
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            value = int(value)
        if value is None:
            return Wei(0)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, "expected a non-negative integer in wei (or its digits)")
        elif not 0 <= value < 2**256:
            self.fail(path, "expected a non-negative integer below 2**256")
        else:
            return Wei(value)
        return Wei(0)

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        value = self.text(name)
        if value and value not in options:
            path = f"{self.path}.{name}"
            self.fail(path, f"expected one of {', '.join(options)}")
            return ""
        return value

    def wallet(self, name: str) -> ChecksumAddress:
        value = self.text(name)
        if not value:
            return ZERO_ADDRESS
        path = f"{self.path}.{name}"
        try:
            address = checksum(value)
        except ValueError:
            self.fail(
                path, "expected a 0x-prefixed 20-byte address (EIP-55 if mixed case)"
            )
            return ZERO_ADDRESS
        if address == ZERO_ADDRESS:
            self.fail(path, "the zero address cannot receive rewards")
        return address


def is_currency(code: str) -> bool:
    """Tell whether ``code`` has the shape of an ISO 4217 code (three capitals)."""
    return _CURRENCY.fullmatch(code) is not None


def _booking(data: Reader) -> Booking:
    currency = data.text("currency", max_length=3)
    if currency and not is_currency(currency):
        data.fail("data.currency", "expected an ISO 4217 code such as CAD")
    return Booking(
        booking_id=data.text("booking_id"),
        guest_id=data.text("guest_id"),
        wallet=data.wallet("wallet"),
        total_paid_cents=data.integer("total_paid_cents", 1, MAX_TOTAL_PAID_CENTS),
        currency=currency,
        nights=data.integer("nights", 1, MAX_NIGHTS),
    )


def _review(data: Reader) -> Review:
    return Review(
        booking_id=data.text("booking_id"),
        guest_id=data.text("guest_id"),
        wallet=data.wallet("wallet"),
        rating=data.integer("rating", 1, 5),
    )


def _attendance(data: Reader) -> Attendance:
    return Attendance(
        member_id=data.text("member_id"),
        wallet=data.wallet("wallet"),
        event_id=data.text("event_id"),
        event_type=data.text("event_type", max_length=64),
    )


def _contribution(data: Reader) -> Contribution:
    return Contribution(
        member_id=data.text("member_id"),
        wallet=data.wallet("wallet"),
        contribution_id=data.text("contribution_id"),
    )


def _coaching(data: Reader) -> Coaching:
    return Coaching(
        member_id=data.text("member_id"),
        wallet=data.wallet("wallet"),
        session_id=data.text("session_id"),
    )


def _referral(data: Reader) -> Referral:
    referral = Referral(
        member_id=data.text("member_id"),
        wallet=data.wallet("wallet"),
        referral_id=data.text("referral_id"),
        referred_member_id=data.text("referred_member_id"),
    )
    if referral.member_id and referral.member_id == referral.referred_member_id:
        data.fail("data.referred_member_id", "a member cannot refer themselves")
    return referral


def _stake(data: Reader) -> Stake:
    return Stake(
        member_id=data.text("member_id"),
        wallet=data.wallet("wallet"),
        stake_id=data.text("stake_id"),
        action=data.choice("action", ("stake", "unstake")),
        amount_wei=data.wei("amount_wei"),
    )


SCHEMAS: dict[str, dict[str, Callable[[Reader], EventData]]] = {
    "aurora": {
        "booking.confirmed": _booking,
        "booking.completed": _booking,
        "booking.cancelled": _booking,
        "review.submitted": _review,
    },
    "tribe": {
        "event.attended": _attendance,
        "contribution.recorded": _contribution,
        "coaching.completed": _coaching,
        "referral.completed": _referral,
        "staking.changed": _stake,
    },
}


def read(partner: str, payload: dict[str, Any]) -> Event:
    """Validate an envelope and its data; raise InvalidEventError listing every problem.

    An unknown ``type`` yields an Event with ``data`` None, to be parked.
    """
    problems: list[FieldProblem] = []
    envelope = Reader(payload, "$", problems)
    event_type = envelope.text("type", max_length=MAX_ID_LENGTH)
    occurred_at = _timestamp(envelope)
    schema = SCHEMAS[partner].get(event_type)
    data_reader = Reader(payload.get("data"), "data", problems)
    data = schema(data_reader) if schema is not None else None

    # A field the schema already refused (a NUL is a control character to
    # it) is reported once, with the schema's message.
    refused = {problem["path"] for problem in problems}
    for problem in _text_problems(payload, "$"):
        if problem["path"] not in refused:
            refused.add(problem["path"])
            problems.append(problem)
    if problems:
        raise InvalidEventError(problems)
    assert occurred_at is not None
    return Event(partner, event_type, occurred_at, data, payload)


def _timestamp(envelope: Reader) -> datetime | None:
    text = envelope.text("timestamp", max_length=64)
    if not text:
        return None
    # RFC 3339 only: Python also reads ISO 8601's other spellings (basic
    # format, a space for the T, offsets with seconds), which the contract
    # does not promise and a partner's parser might read otherwise.
    moment = None
    if _RFC3339.fullmatch(text):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(text)
    if moment is None or moment.tzinfo is None:
        envelope.fail(
            "timestamp",
            "expected an RFC 3339 time with offset, e.g. 2026-12-01T10:00:00Z",
        )
        return None
    # An offset can push a time at the edge of the calendar past it
    # (0001-01-01T00:00:00+14:00 is before year 1 in UTC), where neither
    # Python nor the database driver can convert it.
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        envelope.fail(
            "timestamp",
            "expected a time from 0001-01-01 to 9999-12-31 in UTC",
        )
        return None


def _text_problems(value: Any, path: str) -> list[FieldProblem]:
    """Find strings PostgreSQL cannot store: NUL characters and lone surrogates."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            # A key that cannot be stored cannot be answered as it is either.
            shown = key if _is_storable_text(key) else _escaped(key)
            child = shown if path == "$" else f"{path}.{shown}"
            found += _text_problems(key, child) + _text_problems(item, child)
        return found
    if isinstance(value, list):
        return [
            p
            for i, item in enumerate(value)
            for p in _text_problems(item, f"{path}[{i}]")
        ]
    if isinstance(value, str) and not _is_storable_text(value):
        return [{"path": path, "message": "must not contain NUL or lone surrogates"}]
    return []


def _escaped(value: str) -> str:
    return value.encode("unicode_escape").decode("ascii")


def _is_storable_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- the partner_events table


def stored_payload(event: Event) -> Any:
    """The event's payload as ``partner_events.payload`` stores it.

    The row itself is written by the intake's closing statement
    (``listeners/intake.py``), with the delivery's answer and attempt.
    """
    return _storable(event.payload)


def _storable(value: Any) -> Any:
    """Return ``value`` with integers beyond 64 bits as strings of digits.

    The jsonb codec cannot encode them, and a string keeps every digit.
    """
    if isinstance(value, dict):
        return {key: _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return str(value)
    return value
