"""Admin API keys: who may call ``/api/v1/admin``, and under which name.

Keys arrive in plain text from the settings; they are hashed (SHA-256) once
at start-up and only the digests are kept. A presented key is hashed and
compared with every digest in constant time, so neither the match nor its
position leaks through timing. An operator is known by the key's
fingerprint (``key:`` and the first 12 hex digits of its digest), which
is safe to log and store; the key itself never is.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from haven.errors import HavenError
from haven.settings import Settings

SCHEME = "bearer"
FINGERPRINT_HEX_DIGITS = 12
MAX_HEADER_LENGTH = 512


class Unauthorized(HavenError, PermissionError):
    """The request carries no usable admin key; ``reason`` says why (never the key)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def fingerprint(digest: bytes) -> str:
    """Return the public name of the key with SHA-256 ``digest``."""
    return "key:" + digest.hex()[:FINGERPRINT_HEX_DIGITS]


@dataclass(frozen=True)
class AdminKeys:
    """The SHA-256 digests of the accepted admin keys."""

    digests: tuple[bytes, ...]

    @classmethod
    def of(cls, keys: Iterable[str]) -> AdminKeys:
        """Hash plain ``keys``; the plain values are not kept."""
        digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)
        if not digests:
            raise ValueError("at least one admin API key is required")
        return cls(digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminKeys:
        return cls.of(settings.admin_api_keys.reveal())

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(fingerprint(digest) for digest in self.digests)

    def identify(self, authorization: str | None) -> str:
        """Return the fingerprint of the key in an ``Authorization`` header.

        Raises Unauthorized when the header is missing, not a Bearer
        credential, or names no accepted key.
        """
        presented = _bearer_token(authorization)
        digest = hashlib.sha256(presented.encode()).digest()
        matched: bytes | None = None
        # Compare with every digest, without stopping at a match: the time
        # taken must not tell which key (or how many) were tried.
        for candidate in self.digests:
            if hmac.compare_digest(candidate, digest):
                matched = candidate
        if matched is None:
            raise Unauthorized("the key is not an admin key")
        return fingerprint(matched)


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("the Authorization header is missing")
    if len(authorization) > MAX_HEADER_LENGTH:
        raise Unauthorized("the Authorization header is too long")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != SCHEME or not token or " " in token:
        raise Unauthorized("the Authorization header is not 'Bearer <key>'")
    return token
