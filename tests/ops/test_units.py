"""The shipped service units and example settings: complete, hardened, current."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from haven import cli, settings
from haven.listeners import app as listener_app

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
SERVICES = {"listener": "listen", "daemon": "run"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
}


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file: section -> key -> every value, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (CONFIG / name).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def one(values: dict[str, list[str]], key: str) -> str:
    assert key in values, f"{key} is not set"
    return values[key][-1]


def daemon_grace_s() -> float:
    by_key = {spec.key: spec for spec in settings.FIELDS}
    return float(by_key["shutdown_grace_s"].default)


def load_env_example_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "env_example", ROOT / "scripts" / "env_example.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("service_name", "command"), sorted(SERVICES.items()))
def test_each_service_unit_runs_its_command_hardened_with_the_env_file(
    service_name, command
):
    service_section = unit(f"haven-{service_name}.service")["Service"]

    executable, *arguments = one(service_section, "ExecStart").split()
    assert Path(executable).name == "haven"
    assert arguments == [command]
    assert one(service_section, "EnvironmentFile") == "/etc/haven/haven.env"
    assert one(service_section, "User") == "haven"
    for key, expected in HARDENING.items():
        assert one(service_section, key) == expected, key


@pytest.mark.parametrize("service_name", sorted(SERVICES))
def test_each_service_restarts_on_crashes_but_not_on_bad_settings(service_name):
    service_section = unit(f"haven-{service_name}.service")["Service"]

    assert one(service_section, "Restart") == "on-failure"
    prevented = one(service_section, "RestartPreventExitStatus").split()
    assert str(cli.EXIT_CONFIG) in prevented
    assert str(cli.EXIT_UNAVAILABLE) not in prevented


def test_daemon_unit_waits_longer_than_the_grace_period_before_sigkill():
    service_section = unit("haven-daemon.service")["Service"]

    assert one(service_section, "KillSignal") == "SIGTERM"
    assert one(service_section, "KillMode") == "mixed"
    assert float(one(service_section, "TimeoutStopSec")) >= daemon_grace_s() + 10


def test_listener_unit_waits_longer_than_its_drain_before_sigkill():
    service_section = unit("haven-listener.service")["Service"]
    drain_s = listener_app.SHUTDOWN_TIMEOUT_S + listener_app.POOL_CLOSE_TIMEOUT_S

    assert one(service_section, "KillSignal") == "SIGTERM"
    assert float(one(service_section, "TimeoutStopSec")) > drain_s


def test_systemd_accepts_every_unit_without_a_warning(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    haven_bin = Path(sys.executable).with_name("haven")
    names = [p.name for p in CONFIG.glob("haven-*.service")]
    names += [p.name for p in CONFIG.glob("haven-*.timer")]
    for name in names:
        text = (CONFIG / name).read_text(encoding="utf-8")
        # Point at this checkout and a user that exists here.
        text = text.replace("/opt/haven/.venv/bin/haven", str(haven_bin))
        text = text.replace("User=haven", "User=root").replace(
            "Group=haven", "Group=root"
        )
        (tmp_path / name).write_text(text, encoding="utf-8")

    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert len(names) >= 4
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


# --- the example environment file -------------------------------------------


def example_assignments() -> dict[str, str]:
    found = {}
    for raw in (CONFIG / "haven.env.example").read_text(encoding="utf-8").splitlines():
        line = raw.removeprefix("#")
        if line.startswith("HAVEN_") and "=" in line:
            key, _, value = line.partition("=")
            assert key not in found, f"{key} appears twice"
            found[key] = value
    return found


def test_env_example_documents_every_setting_and_nothing_else():
    documented = set(example_assignments())
    declared = {spec.env_name for spec in settings.FIELDS}

    assert declared - documented == set(), "run scripts/env_example.py"
    assert documented - declared == set(), "run scripts/env_example.py"


def test_env_example_is_what_the_generator_writes_today():
    module = load_env_example_module()

    expected = module.render()
    actual = (CONFIG / "haven.env.example").read_text(encoding="utf-8")
    assert actual == expected, "config/haven.env.example is stale: run the script"


def test_env_example_values_are_the_defaults_the_code_uses():
    required = {
        "HAVEN_DATABASE_URL": "postgresql://haven@db.internal:5432/haven",
        "HAVEN_RPC_URL": "https://rpc.example.net",
        "HAVEN_CHAIN_ID": "8453",
        "HAVEN_WEBHOOK_SECRETS_AURORA": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "HAVEN_WEBHOOK_SECRETS_TRIBE": "whsec_dGhpcyBpcyBhIHRyaWJlIHNlY3JldCE=",
        "HAVEN_MASTER_KEY": "n2bJ3gk9H1QxVw4S5ZpVZ3m7m6kJx0v8yQm1k2s3t4U=",
        "HAVEN_ADMIN_API_KEYS": "admin-key-0123456789abcdefghij",
    }
    shown = {k: v for k, v in example_assignments().items() if v}

    assert settings.load(shown | required) == settings.load(required)


def test_env_example_ships_no_secret_value():
    assignments = example_assignments()

    for spec in settings.FIELDS:
        if spec.secret:
            assert assignments[spec.env_name] == "", spec.env_name
