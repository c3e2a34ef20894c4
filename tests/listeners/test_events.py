"""Envelope parsing and event validation, without a server."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from haven.listeners import events
from haven.listeners.answers import Rejection
from haven.listeners.events import InvalidEventError

WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def envelope(event_type: str, data) -> dict:
    return {"type": event_type, "timestamp": "2026-12-01T10:00:00Z", "data": data}


def problems(partner: str, payload: dict) -> list[tuple[str, str]]:
    with pytest.raises(InvalidEventError) as refused:
        events.read(partner, payload)
    return [(f["path"], f["message"]) for f in refused.value.fields]


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "a", "type": "b"}',
        b'{"amount": NaN}',
        b'{"amount": Infinity}',
        b"[" * 5000 + b"]" * 5000,
        b"\xff\xfe{}",
        b"",
        b'{"a": 1} trailing',
    ],
)
def test_ambiguous_or_broken_json_is_malformed(body):
    with pytest.raises(Rejection) as refused:
        events.parse_body(body)

    assert (refused.value.status_code, refused.value.code) == (400, "malformed_json")


def test_integers_keep_every_digit():
    document = events.parse_body(b'{"amount_wei": 123456789012345678901234567890}')

    assert document["amount_wei"] == 123456789012345678901234567890


@pytest.mark.parametrize(
    "body",
    [b'{"amount_wei": ' + b"9" * 5001 + b"}", b'{"n": -' + b"1" * 4301 + b"}"],
    ids=["5001-digits", "minus-4301-digits"],
)
def test_an_integer_of_more_than_4300_digits_is_refused_with_a_plain_message(body):
    with pytest.raises(Rejection) as refused:
        events.parse_body(body)

    assert (refused.value.status_code, refused.value.code) == (400, "malformed_json")
    assert "digits" in refused.value.message
    assert "sys." not in refused.value.message


def test_an_integer_of_4300_digits_keeps_every_digit():
    document = events.parse_body(b'{"n": ' + b"7" * 4300 + b"}")

    assert document["n"] == int("7" * 4300)


@pytest.mark.parametrize(
    "number",
    [b"1e999", b"-1e999", b"1" * 400 + b".0"],
    ids=["exponent", "negative-exponent", "400-digit-decimal"],
)
def test_a_number_beyond_a_float_is_refused_not_read_as_infinity(number):
    with pytest.raises(Rejection) as refused:
        events.parse_body(b'{"x": ' + number + b"}")

    assert refused.value.code == "malformed_json"
    assert "range of a float" in refused.value.message


def test_the_envelope_needs_a_type_a_timestamp_with_offset_and_a_data_object():
    found = problems("aurora", {"timestamp": "2026-12-01T10:00:00", "data": []})

    assert [path for path, _ in found] == ["type", "timestamp", "data"]


def test_every_missing_booking_field_is_named():
    found = problems("aurora", envelope("booking.completed", {}))

    assert sorted(path for path, _ in found) == [
        "data.booking_id",
        "data.currency",
        "data.guest_id",
        "data.nights",
        "data.total_paid_cents",
        "data.wallet",
    ]


@pytest.mark.parametrize(
    ("wallet", "message"),
    [
        ("0x70997970c51812dc3a010c7d01b50e0d17dc79c", "20-byte address"),
        ("0x70997970C51812DC3a010C7d01b50e0d17dc79C8", "EIP-55"),
        ("70997970C51812dc3A010C7d01b50e0d17dc79C8zz", "20-byte address"),
        ("0x0000000000000000000000000000000000000000", "zero address"),
        (42, "expected a string"),
    ],
)
def test_a_bad_wallet_is_refused_on_its_path(wallet, message):
    data = {"member_id": "M", "wallet": wallet, "contribution_id": "C"}

    found = problems("tribe", envelope("contribution.recorded", data))

    assert found[0][0] == "data.wallet"
    assert message in found[0][1]


def test_an_all_lowercase_wallet_is_accepted_and_checksummed():
    data = {"member_id": "M", "wallet": WALLET.lower(), "contribution_id": "C"}

    event = events.read("tribe", envelope("contribution.recorded", data))

    assert isinstance(event.data, events.Contribution)
    assert event.data.wallet == WALLET


@pytest.mark.parametrize("cents", [-1, 0, 1.5, "45000", 10**13, None, False])
def test_total_paid_must_be_a_positive_integer_of_cents(cents):
    data = {
        "booking_id": "B",
        "guest_id": "G",
        "wallet": WALLET,
        "total_paid_cents": cents,
        "currency": "CAD",
        "nights": 1,
    }

    found = problems("aurora", envelope("booking.confirmed", data))

    assert [path for path, _ in found] == ["data.total_paid_cents"]


def test_nul_characters_anywhere_are_refused_with_their_path():
    payload = envelope("booking.modified", {"notes": ["ok", "bad\u0000"]})

    found = problems("aurora", payload)

    assert found == [("data.notes[1]", "must not contain NUL or lone surrogates")]


def test_a_nul_in_an_id_is_reported_once():
    data = {"member_id": "M\u00001", "wallet": WALLET, "session_id": "S"}

    found = problems("tribe", envelope("coaching.completed", data))

    assert found == [("data.member_id", "must not contain control characters")]


def test_a_nul_in_a_key_and_its_value_is_reported_once():
    found = problems("aurora", envelope("booking.modified", {"k\u0000": "v\u0000"}))

    # Escaped in the path, so the answer shows it and can always be encoded.
    assert found == [("data.k\\x00", "must not contain NUL or lone surrogates")]


@pytest.mark.parametrize(
    "timestamp", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-05:00"]
)
def test_a_timestamp_past_the_calendar_in_utc_is_refused_on_its_field(timestamp):
    payload = {**envelope("x.y", {}), "timestamp": timestamp}

    found = problems("tribe", payload)

    assert found == [
        ("timestamp", "expected a time from 0001-01-01 to 9999-12-31 in UTC")
    ]


@pytest.mark.parametrize(
    "timestamp", ["0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59+05:00"]
)
def test_a_timestamp_at_the_calendar_edge_is_read_in_utc(timestamp):
    payload = {**envelope("x.y", {}), "timestamp": timestamp}

    event = events.read("tribe", payload)

    assert event.occurred_at == datetime.fromisoformat(timestamp)
    assert event.occurred_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "timestamp",
    [
        "20261201T100000Z",  # ISO 8601 basic format
        "2026-12-01 10:00:00Z",  # a space for the T
        "2026-12-01T10:00:00+00:00:01",  # an offset with seconds
        "2026-12-01T10:00Z",  # no seconds
        "2026-12-01T10:00:00",  # no offset
    ],
)
def test_a_timestamp_that_is_not_rfc_3339_is_refused(timestamp):
    payload = {**envelope("x.y", {}), "timestamp": timestamp}

    found = problems("tribe", payload)

    assert found == [
        (
            "timestamp",
            "expected an RFC 3339 time with offset, e.g. 2026-12-01T10:00:00Z",
        )
    ]


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-12-01T10:00:00Z",
        "2026-12-01T10:00:00.123+05:30",
        "2026-12-01T10:00:00-00:00",
    ],
)
def test_rfc_3339_timestamps_are_read(timestamp):
    payload = {**envelope("x.y", {}), "timestamp": timestamp}

    event = events.read("tribe", payload)

    assert event.occurred_at == datetime.fromisoformat(timestamp)


def test_lone_surrogates_are_refused():
    payload = events.parse_body(
        b'{"type": "x.y", "timestamp": "2026-12-01T10:00:00Z", '
        b'"data": {"n": "\\ud800"}}'
    )

    assert problems("tribe", payload)[0][0] == "data.n"


def test_a_lone_surrogate_in_a_key_is_refused_under_an_escaped_path():
    payload = events.parse_body(
        b'{"type": "x.y", "timestamp": "2026-12-01T10:00:00Z", '
        b'"data": {"list": [{"\\udcff": 1}]}, "\\ud800x": 2}'
    )

    found = problems("tribe", payload)

    assert [path for path, _ in found] == ["data.list[0].\\udcff", "\\ud800x"]
    for path, _ in found:
        path.encode("utf-8")


def test_control_characters_in_ids_are_refused():
    data = {"member_id": "M\n1", "wallet": WALLET, "session_id": "S"}

    found = problems("tribe", envelope("coaching.completed", data))

    assert found == [("data.member_id", "must not contain control characters")]


def test_extra_fields_are_allowed_for_forward_compatibility():
    data = {
        "member_id": "M",
        "wallet": WALLET,
        "session_id": "S",
        "coach": {"name": "Ana"},
    }

    event = events.read("tribe", envelope("coaching.completed", data) | {"v": 2})

    assert isinstance(event.data, events.Coaching)


def test_an_unknown_type_reads_as_an_event_without_data():
    event = events.read("tribe", envelope("poll.answered", {"x": 1}))

    assert not event.is_known
    assert event.type == "poll.answered"


def test_the_canonical_form_ignores_whitespace_and_key_order():
    one = events.parse_body(b'{"b": [1, 2], "a": "\\u00e9"}')
    two = events.parse_body(b'{ "a":"\xc3\xa9","b":[1,2] }')

    assert events.canonical(one) == events.canonical(two)


def test_nesting_is_limited_whatever_the_recursion_limit():
    deepest = b'{"a": ' * events.MAX_DEPTH + b"1" + b"}" * events.MAX_DEPTH
    too_deep = b"[" * (events.MAX_DEPTH + 1) + b"]" * (events.MAX_DEPTH + 1)
    brackets_in_strings = b'{"a": "' + b"[" * 100 + b'\\"{"}'

    assert events.parse_body(deepest)
    assert events.parse_body(brackets_in_strings) == {"a": "[" * 100 + '"{'}
    with pytest.raises(Rejection, match="deeper than"):
        events.parse_body(too_deep)


@pytest.mark.parametrize("tail", [b"", b"\\"])
def test_an_unterminated_string_is_one_match_to_the_end(tail):
    # Matched from its opening quote in one go: a body of escaped quotes in an
    # unterminated string once cost a rescan to its end from every quote.
    opened = b'"' + b'\\"' * 1000 + tail
    body = b"[" * (events.MAX_DEPTH + 1) + opened

    assert events._JSON_STRING.fullmatch(opened)
    with pytest.raises(Rejection, match="deeper than"):
        events.parse_body(body)


def test_an_out_of_range_integer_of_thousands_of_digits_is_not_echoed():
    data = {
        "booking_id": "B",
        "guest_id": "G",
        "wallet": WALLET,
        "total_paid_cents": 45000,
        "currency": "CAD",
        "nights": int("7" * 4300),
    }

    ((path, message),) = problems("aurora", envelope("booking.confirmed", data))

    assert path == "data.nights"
    assert message.endswith("got 777777777777... (4300 digits)")
    assert len(message) < 100
