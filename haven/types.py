"""Domain types for chain quantities.

Token amounts are integers in base units (18 decimals) end to end; addresses
are kept and compared in their EIP-55 checksummed form.
"""

from __future__ import annotations

import functools
import re
from typing import NewType

from eth_hash.auto import keccak
from eth_utils import is_address, is_checksum_address, to_checksum_address

Wei = NewType("Wei", int)
Nonce = NewType("Nonce", int)
TxHash = NewType("TxHash", str)
ChecksumAddress = NewType("ChecksumAddress", str)
IntentId = NewType("IntentId", bytes)

HNV_DECIMALS = 18
ONE_HNV = Wei(10**HNV_DECIMALS)
ZERO_ADDRESS = ChecksumAddress("0x0000000000000000000000000000000000000000")


_PREFIXED_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def checksum(address: str) -> ChecksumAddress:
    """Return ``address`` in checksummed form; raise ValueError if it is not one.

    Accepts any letter case. An all-lower or all-upper hex string is taken as
    is; a mixed-case one must already carry a valid checksum.
    """
    if not isinstance(address, str):
        raise ValueError(f"not an Ethereum address: {address!r}")
    return _checksum(address)


# Pure, and called for each address column of every row read or indexed:
# holders repeat, and an EIP-55 checksum costs a keccak. The bound keeps the
# cache to a few megabytes.
@functools.lru_cache(maxsize=1 << 16)
def _checksum(address: str) -> ChecksumAddress:
    if _PREFIXED_HEX_ADDRESS.fullmatch(address):
        body = address[2:]
        checksummed = _eip55(body.lower())
        is_mixed_case = body != body.lower() and body != body.upper()
        if is_mixed_case and checksummed != address:
            raise ValueError(f"address has a wrong EIP-55 checksum: {address!r}")
        return checksummed
    # Unprefixed and other unusual spellings: the library's full rules.
    if not is_address(address):
        raise ValueError(f"not an Ethereum address: {address!r}")
    body = address[2:]
    is_mixed_case = body != body.lower() and body != body.upper()
    if is_mixed_case and not is_checksum_address(address):
        raise ValueError(f"address has a wrong EIP-55 checksum: {address!r}")
    return ChecksumAddress(to_checksum_address(address))


def _eip55(lower_hex: str) -> ChecksumAddress:
    """EIP-55: upper-case each letter whose nibble of keccak(lower_hex) is >= 8."""
    digest = keccak(lower_hex.encode("ascii")).hex()
    return ChecksumAddress(
        "0x"
        + "".join(
            char.upper() if nibble in "89abcdef" else char
            for char, nibble in zip(lower_hex, digest[:40], strict=True)
        )
    )


def intent_id_hex(intent_id: bytes) -> str:
    """Render a 32-byte intent id as 0x-prefixed lowercase hex."""
    return "0x" + intent_id.hex()


def parse_intent_id(text: str) -> IntentId:
    """Parse a 0x-prefixed 32-byte hex intent id; raise ValueError otherwise."""
    body = text[2:] if text.startswith(("0x", "0X")) else ""
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"intent id must be 0x and 64 hex digits, got {text!r}")
    return IntentId(raw)


def format_hnv(amount_wei: int) -> str:
    """Render base units as a decimal HNV string, exactly (no floats)."""
    sign = "-" if amount_wei < 0 else ""
    whole, frac = divmod(abs(amount_wei), ONE_HNV)
    if frac == 0:
        return f"{sign}{whole}"
    digits = str(frac).rjust(HNV_DECIMALS, "0").rstrip("0")
    return f"{sign}{whole}.{digits}"
