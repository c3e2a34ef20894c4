"""Custody of signer keys: encryption at rest, the signer interface, the audit trail.

Owns the key material in ``signers.encrypted_key`` and the ``custody_audit``
table. The invariant: a private key exists in plaintext only inside a
:class:`LocalSigner` in memory — never in a log line, a repr, an audit row
or an exception message.

Keys are Fernet tokens under the master keys (``HAVEN_MASTER_KEY``, newest
first). MultiFernet encrypts with the first and decrypts with any, so the
master key rotates without downtime: give every process "new,old", run
:func:`rekey` (``haven wallet rekey``), then drop "old".

Nothing is signed without the signing policy's consent: :func:`sign` checks
the transaction against it first, and records an audit row in the caller's
transaction, so the row exists exactly when the signed attempt does.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

import asyncpg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from eth_account import Account
from loguru import logger

from haven import db
from haven.daemon import signers
from haven.errors import CustodyError
from haven.intents import Intent
from haven.settings import Settings
from haven.types import ChecksumAddress, TxHash, checksum, intent_id_hex

CREATE = "create"
IMPORT = "import"
DECRYPT = "decrypt"
SIGN = "sign"
REKEY = "rekey"
ROTATE = "rotate"
DRAIN = "drain"
GRANT = "grant"
REVOKE = "revoke"
FUND = "fund"


class SignedTx(NamedTuple):
    """A signed transaction: the exact bytes to broadcast and their hash."""

    raw_tx: bytes
    tx_hash: TxHash


@runtime_checkable
class Signer(Protocol):
    """Something that signs transactions for one address: a local key, a KMS.

    ``sign_transaction`` takes an eth-account transaction dict (type 2) and
    returns the signed bytes with their locally computed hash. It must not
    send anything and must be safe to call again with the same dict.
    """

    @property
    def address(self) -> ChecksumAddress: ...

    async def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTx: ...


class LocalSigner:
    """A :class:`Signer` holding a decrypted key in memory, the default."""

    __slots__ = ("_account", "_address")

    def __init__(self, private_key: bytes) -> None:
        try:
            self._account = Account.from_key(private_key)
        except (ValueError, TypeError):
            raise CustodyError("not a valid secp256k1 private key") from None
        self._address = checksum(self._account.address)

    @property
    def address(self) -> ChecksumAddress:
        return self._address

    async def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTx:
        signed = self._account.sign_transaction(dict(tx))
        return SignedTx(
            bytes(signed.raw_transaction), TxHash("0x" + bytes(signed.hash).hex())
        )

    def __repr__(self) -> str:
        return f"LocalSigner({self._address})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a LocalSigner holds a private key and cannot be pickled")


class SigningPolicy(Protocol):
    """The check :func:`sign` runs first (see haven.daemon.policy.Policy)."""

    def check_transaction(self, tx: Mapping[str, Any], intent: Intent) -> None: ...


@dataclass(frozen=True)
class AuditEntry:
    id: int
    signer: str
    action: str
    actor: str
    detail: dict[str, Any]
    at: datetime


def default_actor() -> str:
    """Name who acts from a command line: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def master_keys(settings: Settings) -> MultiFernet:
    """Return the MultiFernet of the configured master keys (first encrypts)."""
    return MultiFernet([Fernet(key) for key in settings.master_key.reveal()])


def parse_private_key(text: str) -> bytes:
    """Return the 32 bytes of a hex private key; never echo it in an error."""
    body = text.strip()
    body = body[2:] if body.startswith(("0x", "0X")) else body
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise CustodyError("a private key must be 32 bytes of hex (64 digits)")
    return raw


async def create_signer(
    pool: db.Pool, settings: Settings, *, actor: str = "haven"
) -> ChecksumAddress:
    """Generate a key, store it encrypted, and return its address."""
    return await _store(pool, settings, bytes(Account.create().key), CREATE, actor)


async def import_signer(
    pool: db.Pool, settings: Settings, private_key_hex: str, *, actor: str = "haven"
) -> ChecksumAddress:
    """Store an existing key encrypted and return its address.

    Raises CustodyError for a malformed key or an address already held.
    """
    key = parse_private_key(private_key_hex)
    return await _store(pool, settings, key, IMPORT, actor)


async def _store(
    pool: db.Pool, settings: Settings, key: bytes, action: str, actor: str
) -> ChecksumAddress:
    address = LocalSigner(key).address
    token = master_keys(settings).encrypt(key)
    async with db.transaction(pool) as conn:
        if await signers.insert(conn, address, token) is None:
            raise CustodyError(f"signer {address} already exists")
        await record(conn, address, action, actor=actor)
    logger.info("signer stored", signer=address, action=action)
    return address


async def active_signers(pool: db.Pool) -> list[ChecksumAddress]:
    """Return the addresses of the active signers, oldest first."""
    async with db.translate_errors(), pool.acquire() as conn:
        rows = await signers.listing(conn, [signers.ACTIVE])
    return [row.address for row in rows]


async def load_signer(
    pool: db.Pool, settings: Settings, address: str, *, actor: str = "daemon"
) -> LocalSigner:
    """Decrypt the key of ``address`` into a LocalSigner, leaving an audit row.

    Raises CustodyError when the signer is unknown or no configured master
    key decrypts it.
    """
    async with db.transaction(pool) as conn:
        row = await signers.get(conn, address)
        if row is None:
            raise CustodyError(f"no signer {address} in custody")
        signer = _decrypt(settings, row)
        await record(conn, row.address, DECRYPT, actor=actor)
    return signer


def _decrypt(settings: Settings, row: signers.SignerRow) -> LocalSigner:
    try:
        key = master_keys(settings).decrypt(row.encrypted_key)
    except InvalidToken:
        raise CustodyError(
            f"no configured master key decrypts signer {row.address}; "
            "expected HAVEN_MASTER_KEY to include the key it was encrypted under"
        ) from None
    signer = LocalSigner(key)
    if signer.address != row.address:
        raise CustodyError(
            f"signer {row.address} decrypts to the key of {signer.address}"
        )
    return signer


async def sign(
    conn: asyncpg.Connection,
    signer: Signer,
    tx: Mapping[str, Any],
    *,
    policy: SigningPolicy,
    intent: Intent,
    actor: str = "daemon",
) -> SignedTx:
    """Sign ``tx`` for ``intent`` if the policy allows it, and audit the signature.

    Raises PolicyViolationError (nothing signed) when the policy refuses.
    Must run in the transaction that records the attempt.
    """
    [signed] = await sign_all(conn, signer, [(tx, intent)], policy=policy, actor=actor)
    return signed


async def sign_all(
    conn: asyncpg.Connection,
    signer: Signer,
    work: Sequence[tuple[Mapping[str, Any], Intent]],
    *,
    policy: SigningPolicy,
    actor: str = "daemon",
) -> list[SignedTx]:
    """Sign each ``(tx, intent)`` of ``work`` in order, auditing them in one row each.

    The policy judges every transaction before any is signed: one refusal
    (PolicyViolationError) signs none. Must run in the transaction that
    records the attempts.
    """
    for tx, intent in work:
        policy.check_transaction(tx, intent)
    signed = [await signer.sign_transaction(tx) for tx, _ in work]
    details = [
        {
            "intent_id": intent_id_hex(intent.id),
            "nonce": int(tx["nonce"]),
            "tx_hash": one.tx_hash,
            "max_fee_wei": str(tx["maxFeePerGas"]),
            "max_priority_fee_wei": str(tx["maxPriorityFeePerGas"]),
        }
        for (tx, intent), one in zip(work, signed, strict=True)
    ]
    await record_all(conn, signer.address, SIGN, actor=actor, details=details)
    return signed


async def rekey(pool: db.Pool, settings: Settings, *, actor: str = "haven") -> int:
    """Re-encrypt every signer key under the first master key; return how many.

    Safe to run while daemons work (each row is locked only for its own
    update) and safe to re-run: a key already under the first master key is
    re-encrypted again, harmlessly.
    """
    keys = master_keys(settings)
    async with db.translate_errors(), pool.acquire() as conn:
        addresses = [row.address for row in await signers.listing(conn)]
    for address in addresses:
        async with db.transaction(pool) as conn:
            row = await signers.get(conn, address, for_update=True)
            assert row is not None
            try:
                token = keys.rotate(row.encrypted_key)
            except InvalidToken:
                raise CustodyError(
                    f"no configured master key decrypts signer {address}; "
                    "keep the old key in HAVEN_MASTER_KEY until rekey has run"
                ) from None
            await signers.replace_key(conn, address, token)
            await record(conn, address, REKEY, actor=actor)
    logger.info("signer keys re-encrypted", count=len(addresses))
    return len(addresses)


async def record(
    conn: asyncpg.Connection,
    signer: str,
    action: str,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one custody audit row; ``detail`` must hold no key material."""
    await record_all(conn, signer, action, actor=actor, details=[detail or {}])


async def record_all(
    conn: asyncpg.Connection,
    signer: str,
    action: str,
    *,
    actor: str,
    details: Sequence[dict[str, Any]],
) -> None:
    """Append one audit row per detail, in order, with one statement."""
    await conn.execute(
        "INSERT INTO custody_audit (signer, action, actor, detail) "
        "SELECT $1, $2, $3, detail FROM unnest($4::jsonb[]) WITH ORDINALITY "
        "AS d(detail, position) ORDER BY position",
        signer,
        action,
        actor,
        list(details),
    )


async def audit_trail(
    conn: asyncpg.Connection, signer: str | None = None
) -> list[AuditEntry]:
    """Return the audit rows of ``signer`` (or of every signer), oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM custody_audit WHERE $1::text IS NULL OR signer = $1 ORDER BY id",
        signer,
    )
    return [AuditEntry(**dict(row)) for row in rows]


async def audit_page(
    conn: asyncpg.Connection,
    signer: str,
    *,
    limit: int,
    before_id: int | None = None,
) -> list[AuditEntry]:
    """Return up to ``limit`` audit rows of ``signer`` before ``before_id``.

    Newest first; ask for one more row than a page to learn whether another
    page follows.
    """
    rows = await conn.fetch(
        "SELECT * FROM custody_audit WHERE signer = $1 "
        "AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        signer,
        before_id,
        limit,
    )
    return [AuditEntry(**dict(row)) for row in rows]
