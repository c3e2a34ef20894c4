"""Standard Webhooks signatures: who sent a body, and when.

A partner signs ``webhook-id.webhook-timestamp.`` followed by the exact body
bytes with HMAC-SHA256 under a ``whsec_`` secret, and sends one or more
``v1,<base64>`` signatures in ``webhook-signature``. Verification runs on the
received bytes before anything parses them, compares digests in constant
time, accepts any of the partner's active secrets (rotation without
downtime) and skips signature versions it does not know.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from haven.listeners.answers import Rejection

SECRET_PREFIX = "whsec_"
# Seconds since the epoch stay below 10**11 until the year 5138; anything at
# or above it is a timestamp in milliseconds (or finer) sent by mistake.
MILLISECONDS_FLOOR = 10**11
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,128}")
_DIGITS = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class SignedHeaders:
    """The three Standard Webhooks headers of one request, as received."""

    delivery_id: str
    timestamp: str
    signatures: str

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignedHeaders:
        """Pick the three headers; raise a 401 Rejection when one is missing."""
        delivery_id = headers.get("webhook-id", "")
        timestamp = headers.get("webhook-timestamp", "")
        signatures = headers.get("webhook-signature", "")
        if not (delivery_id and timestamp and signatures):
            raise Rejection(
                401,
                "signature_headers_missing",
                "webhook-id, webhook-timestamp and webhook-signature are required",
            )
        if not is_delivery_id(delivery_id):
            raise Rejection(
                400,
                "invalid_delivery_id",
                "webhook-id must be 1 to 128 visible ASCII characters",
            )
        return cls(delivery_id, timestamp, signatures)


def is_delivery_id(value: str) -> bool:
    """Tell whether ``value`` can be a delivery id: 1-128 visible ASCII characters."""
    return _DELIVERY_ID.fullmatch(value) is not None


class Verifier:
    """Checks signatures against every active secret of one partner."""

    def __init__(self, secrets: Sequence[str], *, tolerance_s: int) -> None:
        """Decode ``whsec_`` secrets; raise ValueError if one is bad or none given."""
        self._keys = tuple(_decode_secret(secret) for secret in secrets)
        if not self._keys:
            raise ValueError("a partner needs at least one webhook secret")
        self.tolerance_s = tolerance_s

    def verify(self, signed: SignedHeaders, body: bytes, *, now_s: int) -> None:
        """Return if ``body`` is authentic and fresh; raise a 401 Rejection if not.

        The timestamp must lie within ``tolerance_s`` of ``now_s`` on either
        side. Pure and safe to call concurrently.
        """
        self._check_timestamp(signed.timestamp, now_s)

        message = f"{signed.delivery_id}.{signed.timestamp}.".encode() + body
        expected = [hmac.digest(key, message, hashlib.sha256) for key in self._keys]
        for candidate in _v1_signatures(signed.signatures):
            # Compare against every key even after a match would be found, so
            # the time taken does not tell which secret is active.
            matches = [hmac.compare_digest(digest, candidate) for digest in expected]
            if any(matches):
                return
        raise Rejection(
            401,
            "invalid_signature",
            "no webhook-signature matches the body under an active secret",
        )

    def _check_timestamp(self, timestamp: str, now_s: int) -> None:
        if not _DIGITS.fullmatch(timestamp):
            raise Rejection(
                401,
                "invalid_timestamp",
                "webhook-timestamp must be whole seconds since the Unix epoch",
            )
        sent_s = int(timestamp)
        if sent_s >= MILLISECONDS_FLOOR:
            raise Rejection(
                401,
                "timestamp_in_milliseconds",
                f"webhook-timestamp {sent_s} looks like milliseconds; "
                "expected whole seconds since the Unix epoch",
            )
        if sent_s < now_s - self.tolerance_s:
            raise Rejection(
                401,
                "timestamp_too_old",
                f"webhook-timestamp is more than {self.tolerance_s} s in the past",
            )
        if sent_s > now_s + self.tolerance_s:
            raise Rejection(
                401,
                "timestamp_too_new",
                f"webhook-timestamp is more than {self.tolerance_s} s in the future",
            )


def _decode_secret(secret: str) -> bytes:
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret must be whsec_ and base64") from exc
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def _v1_signatures(header: str) -> list[bytes]:
    """Return the decoded ``v1`` signatures of a header, skipping anything else."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except ValueError:
            # binascii.Error, or non-ASCII text that cannot be base64 at all.
            continue
    return found
