"""Backup archives: the sealed file format of ``haven backup``.

An archive is ``MAGIC`` followed by frames, each a 4-byte big-endian length
and a Fernet token stored as raw bytes (not base64). Every token carries a
kind, its sequence number and a payload, so frames cannot be dropped,
repeated or reordered unnoticed:

* ``M`` (first): the manifest, JSON: migrations, row counts per table taken
  in the very snapshot the dump reads, server version, time;
* ``D``: consecutive slices of one gzip stream of the dump;
* ``E`` (last): the number of data frames, the dump's length and SHA-256.

The invariant: :class:`Opener` yields only bytes that authenticated, in
order, and fails at the end unless every byte written was read back.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson
from cryptography.fernet import InvalidToken, MultiFernet

from haven.errors import HavenError

MAGIC = b"HAVENBK\x01"
FORMAT_VERSION = 1
CHUNK_BYTES = 4 * 1024 * 1024
_FRAME = struct.Struct(">I")
_HEADER = struct.Struct(">cQ")
_MANIFEST, _DATA, _END = b"M", b"D", b"E"


class BackupError(HavenError, RuntimeError):
    """A backup cannot be taken, read, restored or verified."""


@dataclass(frozen=True)
class Manifest:
    """What a backup holds, as read in the snapshot pg_dump dumped."""

    created_at: str
    database: str
    server_version: str
    migrations: tuple[str, ...]
    row_counts: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": self.format_version,
                "created_at": self.created_at,
                "database": self.database,
                "server_version": self.server_version,
                "migrations": list(self.migrations),
                "row_counts": self.row_counts,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = orjson.loads(raw)
        if data.get("format") != FORMAT_VERSION:
            raise BackupError(
                f"backup format {data.get('format')!r} is not supported; "
                f"expected {FORMAT_VERSION}"
            )
        return cls(
            created_at=data["created_at"],
            database=data["database"],
            server_version=data["server_version"],
            migrations=tuple(data["migrations"]),
            row_counts={k: int(v) for k, v in data["row_counts"].items()},
        )


# --- the sealed container --------------------------------------------------------


class Sealer:
    """Write frames of one backup file: manifest, data, end."""

    def __init__(self, out: BinaryIO, keys: MultiFernet) -> None:
        self._out = out
        self._keys = keys
        self._seq = 0
        self._gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
        self._digest = hashlib.sha256()
        self._dump_bytes = 0
        self._data_frames = 0
        self._pending = bytearray()
        out.write(MAGIC)

    def manifest(self, manifest: Manifest) -> None:
        self._frame(_MANIFEST, manifest.to_json())

    def data(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self._dump_bytes += len(chunk)
        self._pending += self._gzip.compress(chunk)
        if len(self._pending) >= CHUNK_BYTES:
            self._flush_data()

    def end(self) -> None:
        self._pending += self._gzip.flush()
        self._flush_data()
        summary = {
            "data_frames": self._data_frames,
            "dump_bytes": self._dump_bytes,
            "sha256": self._digest.hexdigest(),
        }
        self._frame(_END, orjson.dumps(summary))

    def _flush_data(self) -> None:
        if self._pending:
            self._frame(_DATA, bytes(self._pending))
            self._pending.clear()
            self._data_frames += 1

    def _frame(self, kind: bytes, payload: bytes) -> None:
        token = self._keys.encrypt(_HEADER.pack(kind, self._seq) + payload)
        raw = base64.urlsafe_b64decode(token)
        self._out.write(_FRAME.pack(len(raw)) + raw)
        self._seq += 1


class Opener:
    """Read and authenticate the frames of one backup file, in order."""

    def __init__(self, source: BinaryIO, keys: MultiFernet, name: str) -> None:
        self._source = source
        self._keys = keys
        self._name = name
        self._seq = 0
        self._gunzip = zlib.decompressobj(31)
        self._digest = hashlib.sha256()
        self._dump_bytes = 0
        self._data_frames = 0
        if source.read(len(MAGIC)) != MAGIC:
            raise BackupError(f"{name} is not a haven backup (bad magic)")

    def manifest(self) -> Manifest:
        kind, payload = self._next()
        if kind != _MANIFEST:
            raise BackupError(f"{self._name}: first frame is not the manifest")
        return Manifest.from_json(payload)

    def dump(self) -> Iterator[bytes]:
        """Yield the dump's bytes; raise BackupError at the end if they differ."""
        while True:
            kind, payload = self._next()
            if kind == _END:
                self._check_end(payload)
                return
            if kind != _DATA:
                raise BackupError(f"{self._name}: unexpected frame {kind!r}")
            self._data_frames += 1
            chunk = self._gunzip.decompress(payload)
            self._digest.update(chunk)
            self._dump_bytes += len(chunk)
            yield chunk

    def _next(self) -> tuple[bytes, bytes]:
        head = self._source.read(_FRAME.size)
        if len(head) != _FRAME.size:
            raise BackupError(f"{self._name} is truncated (frame {self._seq} missing)")
        (length,) = _FRAME.unpack(head)
        raw = self._source.read(length)
        if len(raw) != length:
            raise BackupError(f"{self._name} is truncated inside frame {self._seq}")
        try:
            plain = self._keys.decrypt(base64.urlsafe_b64encode(raw))
        except InvalidToken:
            raise BackupError(
                f"{self._name}: frame {self._seq} does not authenticate under any "
                "configured backup key (wrong key, or the file was altered)"
            ) from None
        kind, seq = _HEADER.unpack_from(plain)
        if seq != self._seq:
            raise BackupError(
                f"{self._name}: frame {self._seq} carries sequence {seq}; "
                "frames were dropped or reordered"
            )
        self._seq += 1
        return kind, plain[_HEADER.size :]

    def _check_end(self, payload: bytes) -> None:
        summary = orjson.loads(payload)
        actual = {
            "data_frames": self._data_frames,
            "dump_bytes": self._dump_bytes,
            "sha256": self._digest.hexdigest(),
        }
        if summary != actual or not self._gunzip.eof:
            raise BackupError(f"{self._name}: contents do not match its end frame")
        if self._source.read(1):
            raise BackupError(f"{self._name}: bytes follow the end frame")


def read_manifest(path: Path, keys: MultiFernet) -> Manifest:
    """Return the manifest of ``path``, authenticating that frame only."""
    with path.open("rb") as source:
        return Opener(source, keys, path.name).manifest()


def read_dump(path: Path, keys: MultiFernet) -> Iterator[bytes]:
    """Yield the dump inside ``path``; raise BackupError at the first bad frame."""
    with path.open("rb") as source:
        opener = Opener(source, keys, path.name)
        opener.manifest()
        yield from opener.dump()


def inspect(path: Path, keys: MultiFernet) -> Manifest:
    """Authenticate every frame of ``path`` and return its manifest.

    Raises BackupError when the file is truncated, altered, sealed under an
    unknown key or its contents do not match their checksum.
    """
    with path.open("rb") as source:
        opener = Opener(source, keys, path.name)
        manifest = opener.manifest()
        for _ in opener.dump():
            pass
    return manifest
