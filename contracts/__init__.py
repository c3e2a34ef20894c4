"""The compiled HNV token contract, as read from its committed artifact.

Owns read access to ``build/HNV.json``, which ``node contracts/compile.js``
writes from ``HNV.sol``. The invariant: the artifact is byte-identical to a
fresh compile of the source, which ``tests/test_contract_build.py`` enforces.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

ARTIFACT_PATH = Path(__file__).resolve().parent / "build" / "HNV.json"


@functools.cache
def load_artifact() -> dict[str, Any]:
    """Return the parsed artifact, read from disk once per process.

    The same dict is shared by every caller, so treat it as read-only.
    Raises ``FileNotFoundError`` if the contract was never compiled.
    """
    with ARTIFACT_PATH.open(encoding="utf-8") as file:
        artifact: dict[str, Any] = json.load(file)
    return artifact


def abi() -> list[dict[str, Any]]:
    """Return the contract's ABI entries (shared; treat as read-only)."""
    entries: list[dict[str, Any]] = load_artifact()["abi"]
    return entries


def bytecode() -> str:
    """Return the creation bytecode as ``0x``-prefixed hex, for deployment."""
    code: str = load_artifact()["bytecode"]
    return code
