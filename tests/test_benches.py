"""The benchmarks at a hundredth of their size: each still runs and reports sanely.

Speed is never asserted here (a shared machine proves nothing); only that
every benchmark produces positive figures, a ratio and the documented JSON
shape, so ``make bench`` cannot rot between its runs.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["ingest", "backfill", "mint", "reconcile", "reorg"]
SMOKE_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "latest.json"
    finished = subprocess.run(
        [sys.executable, "-m", "benches", "--scale", "0.01", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    document: dict[str, Any] = orjson.loads(output.read_bytes())
    return document


pytestmark = pytest.mark.timeout(SMOKE_TIMEOUT_S + 30)


def test_every_benchmark_reports_once_in_order(results: dict[str, Any]) -> None:
    assert [b["name"] for b in results["benchmarks"]] == NAMES
    assert results["scale"] == 0.01


@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_has_positive_figures_and_their_ratio(
    results: dict[str, Any], name: str
) -> None:
    (found,) = [b for b in results["benchmarks"] if b["name"] == name]

    assert "error" not in found, found.get("error")
    assert found["measured"] > 0 and found["baseline"] > 0
    assert math.isclose(
        found["ratio"], found["measured"] / found["baseline"], rel_tol=1e-3
    )
    assert found["unit"] and found["goal"]
    assert found["sizes"] and all(v > 0 for v in found["sizes"].values())
    assert found["checks"]
    assert found["passed"] == all(c["passed"] for c in found["checks"])


def test_the_machine_block_names_the_hardware_and_every_server(
    results: dict[str, Any],
) -> None:
    machine = results["machine"]

    assert machine["cpu_count"] >= 1 and machine["memory_mb"] > 0
    for server in ("python", "postgres", "redis", "anvil"):
        assert machine[server], f"{server} version missing"


_OUTPUTS = """
import sys
from benches.__main__ import parse_args
for argv in sys.argv[1:]:
    try:
        print(parse_args(argv.split()).output)
    except SystemExit:
        print("refused")
"""


def test_only_a_full_run_replaces_the_recorded_results():
    runs = ["", f"--only {','.join(reversed(NAMES))}", "--scale 0.01", "--only reorg"]
    runs += ["--output /tmp/x.json", "--only reorg,speed"]
    done = subprocess.run(
        [sys.executable, "-c", _OUTPUTS, *runs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )

    results = ROOT / "benches" / "results"
    assert done.stdout.splitlines() == [
        str(results / "latest.json"),
        str(results / "latest.json"),
        str(results / "partial.json"),
        str(results / "partial.json"),
        "/tmp/x.json",
        "refused",
    ]
    assert "expected some of " + ",".join(NAMES) in done.stderr
