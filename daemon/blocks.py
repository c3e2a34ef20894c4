"""Block headers: the only module that talks SQL to ``chain_blocks``.

The tailer keeps the header of every block it indexed within the reorg
window, and the header of each batch's last block below it. Stored headers
are canonical as far as the tailer knows: they move in the same transaction
as the events and the checkpoint, and are deleted above a fork point when a
reorg is rolled back. A reorg is found by comparing them with a node's.

Headers read from a node also carry the logs bloom, which is never stored:
it is only used to doubt a node that answers "no logs" for a block whose
bloom says otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from eth_utils.crypto import keccak

from haven.chain import ChainClient, from_hex

BLOOM_BYTES = 256


@dataclass(frozen=True)
class Header:
    """One block header: number, hash, parent hash and timestamp (seconds)."""

    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int
    logs_bloom: bytes | None = None

    @classmethod
    def from_rpc(cls, block: dict[str, Any]) -> Header:
        """Build a header from an ``eth_getBlockBy*`` answer; ValueError if bad."""
        try:
            bloom = block.get("logsBloom")
            return cls(
                number=from_hex(block["number"]),
                hash=_hash32(block["hash"]),
                parent_hash=_hash32(block["parentHash"]),
                timestamp=from_hex(block["timestamp"]),
                logs_bloom=bytes.fromhex(bloom[2:]) if bloom else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed block header: {exc}") from exc

    @property
    def hash_hex(self) -> str:
        return "0x" + self.hash.hex()

    def may_contain(self, address: bytes, topics: Iterable[bytes]) -> bool:
        """Tell whether the bloom admits a log of ``address`` with any of ``topics``.

        True when the header has no bloom: without one nothing can be ruled out.
        """
        if self.logs_bloom is None or len(self.logs_bloom) != BLOOM_BYTES:
            return True
        if not _in_bloom(self.logs_bloom, address):
            return False
        return any(_in_bloom(self.logs_bloom, topic) for topic in topics)


def _hash32(text: str) -> bytes:
    raw = bytes.fromhex(text[2:] if text.startswith("0x") else text)
    if len(raw) != 32:
        raise ValueError(f"expected a 32-byte hash, got {text!r}")
    return raw


def _in_bloom(bloom: bytes, item: bytes) -> bool:
    # The yellow paper's M3:2048: three 11-bit indices from the first six
    # bytes of keccak(item), bit 0 being the lowest bit of the last byte.
    digest = keccak(item)
    for i in range(0, 6, 2):
        bit = int.from_bytes(digest[i : i + 2], "big") & 0x7FF
        if not bloom[BLOOM_BYTES - 1 - bit // 8] & (1 << (bit % 8)):
            return False
    return True


async def fetch(
    client: ChainClient, numbers: Iterable[int], *, concurrency: int = 8
) -> dict[int, Header | None]:
    """Read the headers of ``numbers`` from one node; None where it has no such block.

    Safe to retry and to cancel. Raises ValueError when the node answers a
    header of another number than asked.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(number: int) -> tuple[int, Header | None]:
        async with gate:
            block = await client.get_block(number)
        if block is None:
            return number, None
        header = Header.from_rpc(block)
        if header.number != number:
            raise ValueError(f"asked for block {number}, node answered {header.number}")
        return number, header

    pairs = await asyncio.gather(*(one(number) for number in sorted(set(numbers))))
    return dict(pairs)


async def insert(connection: asyncpg.Connection, headers: Sequence[Header]) -> None:
    """Store canonical headers; must run in the transaction that moves the checkpoint.

    Not idempotent on purpose: a header already stored at the same height
    means a rollback was missed, and the unique key refuses it.
    """
    if not headers:
        return
    await connection.copy_records_to_table(
        "chain_blocks",
        columns=("number", "hash", "parent_hash", "timestamp"),
        records=[(h.number, h.hash, h.parent_hash, h.timestamp) for h in headers],
    )


async def get(connection: asyncpg.Connection, number: int) -> Header | None:
    """Return the stored header at ``number``, or None."""
    row = await connection.fetchrow(
        "SELECT number, hash, parent_hash, timestamp FROM chain_blocks "
        "WHERE number = $1",
        number,
    )
    return _from_row(row) if row is not None else None


async def below(
    connection: asyncpg.Connection, number: int, *, limit: int | None = None
) -> list[Header]:
    """Return the stored headers under ``number`` (up to ``limit``), newest first."""
    rows = await connection.fetch(
        "SELECT number, hash, parent_hash, timestamp FROM chain_blocks "
        "WHERE number < $1 ORDER BY number DESC LIMIT $2",
        number,
        limit,
    )
    return [_from_row(row) for row in rows]


async def delete_above(connection: asyncpg.Connection, number: int) -> int:
    """Delete headers above ``number`` (a fork point); return how many."""
    status = await connection.execute(
        "DELETE FROM chain_blocks WHERE number > $1", number
    )
    return int(status.split()[-1])


async def prune_below(connection: asyncpg.Connection, number: int) -> int:
    """Delete headers under ``number``, which are final; return how many."""
    status = await connection.execute(
        "DELETE FROM chain_blocks WHERE number < $1", number
    )
    return int(status.split()[-1])


def _from_row(row: asyncpg.Record) -> Header:
    return Header(
        number=row["number"],
        hash=bytes(row["hash"]),
        parent_hash=bytes(row["parent_hash"]),
        timestamp=row["timestamp"],
    )
