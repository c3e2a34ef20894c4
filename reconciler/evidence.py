"""Evidence: the JSON facts behind a break or an alert, and their digest.

Evidence is canonical JSON (sorted keys, amounts as integer strings), so the
same facts always serialise to the same bytes and a repeat can be told from
a change by comparing digests. Measurements that move on every run without
changing the meaning (a signer's balance while it stays below the threshold)
go under the ``observed`` key: stored and shown, but left out of the digest.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

Evidence = dict[str, Any]
OBSERVED = "observed"


def dumps(value: Any, *, indent: bool = False) -> bytes:
    """Serialise ``value`` canonically: sorted keys, UTF-8, no float surprises."""
    option = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z
    if indent:
        option |= orjson.OPT_INDENT_2
    return orjson.dumps(value, option=option)


def digest(evidence: Evidence, severity: str = "") -> bytes:
    """Return the SHA-256 of the evidence's meaning (``observed`` excluded)."""
    essential = {k: v for k, v in evidence.items() if k != OBSERVED}
    return hashlib.sha256(severity.encode() + b"\n" + dumps(essential)).digest()


def hex_bytes(value: bytes | None) -> str | None:
    """Render bytes as 0x-prefixed lowercase hex."""
    return None if value is None else "0x" + bytes(value).hex()


def timestamp(value: datetime | None) -> str | None:
    """Render a timestamp as ISO 8601 in UTC with microseconds and a Z."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
