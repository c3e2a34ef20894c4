"""The committed HNV artifact matches its source, and the source lints clean."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from haven import contracts

ROOT = Path(__file__).resolve().parents[1]
COMPILE_JS = ROOT / "contracts" / "compile.js"
SOLHINT = ROOT / "node_modules" / ".bin" / "solhint"
TOOL_TIMEOUT_S = 60


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a toolchain command to completion and capture its output."""
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )


def compile_into(
    out: Path, script: Path = COMPILE_JS
) -> subprocess.CompletedProcess[str]:
    """Compile HNV.sol with `script` into the artifact file `out`."""
    return run(["node", str(script), "--out", str(out)], cwd=script.parents[1])


def test_recompiling_reproduces_the_committed_artifact_byte_for_byte(
    tmp_path: Path,
) -> None:
    out = tmp_path / "HNV.json"

    result = compile_into(out)

    assert result.returncode == 0, result.stderr
    # A mismatch means HNV.sol or the toolchain changed without a rebuild:
    # run `node contracts/compile.js` and commit contracts/build/HNV.json.
    assert out.read_bytes() == contracts.ARTIFACT_PATH.read_bytes()


def test_artifact_records_the_compiler_and_its_settings() -> None:
    artifact = contracts.load_artifact()

    assert artifact["contractName"] == "HNV"
    assert artifact["compiler"]["version"].startswith("0.8.37+")
    assert artifact["compiler"]["settings"] == {
        "evmVersion": "osaka",
        "optimizer": {"enabled": True, "runs": 200},
    }
    assert contracts.bytecode().startswith("0x60")
    assert artifact["deployedBytecode"].startswith("0x60")


def test_compiling_a_broken_source_fails_with_the_compiler_message(
    tmp_path: Path,
) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "contracts").mkdir(parents=True)
    shutil.copy(COMPILE_JS, checkout / "contracts" / "compile.js")
    (checkout / "contracts" / "HNV.sol").write_text(
        "// SPDX-License-Identifier: UNLICENSED\n"
        "pragma solidity 0.8.37;\n"
        "contract HNV { function f() external { undefinedName(); } }\n"
    )
    (checkout / "node_modules").symlink_to(ROOT / "node_modules")
    out = tmp_path / "HNV.json"

    result = compile_into(out, script=checkout / "contracts" / "compile.js")

    assert result.returncode != 0
    assert "Undeclared identifier" in result.stderr
    assert not out.exists()


def test_solhint_reports_no_errors_and_no_warnings() -> None:
    # --disc skips solhint's online update check; --max-warnings 0 turns the
    # warnings of the recommended ruleset into a failure, which solhint alone
    # does not.
    args = [str(SOLHINT), "--disc", "--noPoster", "--max-warnings", "0"]

    result = run([*args, "contracts/**/*.sol"], cwd=ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
