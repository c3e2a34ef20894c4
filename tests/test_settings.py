from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from haven import settings
from haven.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SECRET_AURORA = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_TRIBE = "whsec_dGhpcyBpcyBhIHRyaWJlIHNlY3JldCE="
MASTER = Fernet.generate_key().decode()
ADMIN = "admin-key-0123456789abcdefghij"


def valid_env(**extra: str) -> dict[str, str]:
    env = {
        "HAVEN_DATABASE_URL": "postgresql://haven:s3cr3t-pw@127.0.0.1:5432/haven",
        "HAVEN_RPC_URL": "http://127.0.0.1:8545,http://127.0.0.1:8546",
        "HAVEN_CHAIN_ID": "31337",
        "HAVEN_TOKEN_ADDRESS": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
        "HAVEN_WEBHOOK_SECRETS_AURORA": SECRET_AURORA,
        "HAVEN_WEBHOOK_SECRETS_TRIBE": SECRET_TRIBE,
        "HAVEN_MASTER_KEY": MASTER,
        "HAVEN_ADMIN_API_KEYS": ADMIN,
        "HAVEN_LISTEN_PORT": "8080",
    }
    env.update(extra)
    return env


def test_valid_environment_loads_typed_values():
    loaded = settings.load(valid_env())

    assert loaded.chain_id == 31337
    assert loaded.rpc_url == ("http://127.0.0.1:8545", "http://127.0.0.1:8546")
    assert loaded.token_address == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert loaded.webhook_secrets("aurora") == (SECRET_AURORA,)
    assert loaded.confirmations == 12


def test_unknown_haven_key_is_an_error_naming_it():
    with pytest.raises(ConfigError) as caught:
        settings.load(valid_env(HAVEN_CONFIRMATION="3"))

    assert any(
        "HAVEN_CONFIRMATION:" in p and "unknown" in p for p in caught.value.problems
    )


def test_every_problem_names_key_value_and_expectation_at_once():
    env = valid_env(HAVEN_CHAIN_ID="mainnet", HAVEN_LISTEN_PORT="70000")
    del env["HAVEN_RPC_URL"]

    with pytest.raises(ConfigError) as caught:
        settings.load(env)

    problems = caught.value.problems
    assert len(problems) == 3
    assert any(
        p.startswith("HAVEN_CHAIN_ID: got 'mainnet'; expected an integer")
        for p in problems
    )
    assert any(
        p.startswith(
            "HAVEN_LISTEN_PORT: got '70000'; expected an integer from 1 to 65535"
        )
        for p in problems
    )
    assert any(p.startswith("HAVEN_RPC_URL: missing") for p in problems)


def test_a_bad_secret_is_reported_without_its_value():
    with pytest.raises(ConfigError) as caught:
        settings.load(valid_env(HAVEN_WEBHOOK_SECRETS_TRIBE="hunter2-not-a-whsec"))

    message = str(caught.value)
    assert "HAVEN_WEBHOOK_SECRETS_TRIBE" in message
    assert "hunter2" not in message


def test_secrets_never_show_in_repr_or_description():
    loaded = settings.load(valid_env())
    shown = repr(loaded) + str(loaded.describe())

    for secret in (SECRET_AURORA, SECRET_TRIBE, MASTER, ADMIN, "s3cr3t-pw"):
        assert secret not in shown
    assert "postgresql://haven:********@127.0.0.1:5432/haven" in shown


def test_toml_file_is_read_and_environment_wins(tmp_path: Path):
    path = tmp_path / "haven.toml"
    path.write_text('confirmations = 20\nlog_format = "json"\nchain_id = 1\n')

    loaded = settings.load(valid_env(HAVEN_CONFIG=str(path)))

    assert loaded.confirmations == 20
    assert loaded.log_format == "json"
    assert loaded.chain_id == 31337


def test_unknown_key_in_toml_file_is_an_error_naming_the_file(tmp_path: Path):
    path = tmp_path / "haven.toml"
    path.write_text("confirmatons = 20\n")

    with pytest.raises(ConfigError, match="confirmatons") as caught:
        settings.load(valid_env(HAVEN_CONFIG=str(path)))

    assert str(path) in str(caught.value)


def test_the_master_key_can_come_from_the_toml_file(tmp_path: Path):
    in_file = Fernet.generate_key().decode()
    path = tmp_path / "haven.toml"
    path.write_text(f'master_key = "{in_file}"\n')
    env = valid_env(HAVEN_CONFIG=str(path))
    del env["HAVEN_MASTER_KEY"]

    loaded = settings.load(env)

    assert loaded.master_key.reveal() == (in_file,)
    assert in_file not in repr(loaded) + str(loaded.describe())


def test_check_config_prints_masked_settings_or_errors_with_exit_code():
    ok = subprocess.run(
        [sys.executable, "-m", "haven.cli", "check-config"],
        env=valid_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    bad = subprocess.run(
        [sys.executable, "-m", "haven.cli", "check-config"],
        env=valid_env(HAVEN_CHAIN_ID="-4"),
        capture_output=True,
        text=True,
        check=False,
    )

    assert ok.returncode == 0, ok.stderr
    assert "HAVEN_MASTER_KEY" in ok.stdout and MASTER not in ok.stdout
    assert bad.returncode == 2
    assert "HAVEN_CHAIN_ID: got '-4'" in bad.stderr


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    missing = [f.env_name for f in settings.FIELDS if f"`{f.env_name}`" not in readme]
    assert missing == []


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haven.cli", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("contents", "problem"),
    [
        (None, "cannot read"),
        ("version = \n", "is not valid TOML"),
        ('version = "v1"\n', "aurora"),
    ],
    ids=["missing", "not-toml", "incomplete"],
)
def test_check_config_fails_on_a_rules_file_the_listener_would_refuse(
    tmp_path: Path, contents: str | None, problem: str
):
    path = tmp_path / "rewards.toml"
    if contents is not None:
        path.write_text(contents)

    checked = check_config(valid_env(HAVEN_REWARD_RULES=str(path)))

    assert checked.returncode == 2, checked.stdout
    assert "HAVEN_REWARD_RULES" in checked.stderr or str(path) in checked.stderr
    assert problem in checked.stderr
    assert "Traceback" not in checked.stderr


def test_check_config_names_the_rules_file_it_read():
    checked = check_config(valid_env())

    assert checked.returncode == 0, checked.stderr
    assert "# reward rules: " in checked.stdout
    assert "rewards.toml (version " in checked.stdout


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://haven:s3cr3t-pw@db:99999/haven", "port is an integer"),
        ("postgresql://haven:s3cr3t-pw@db:0/haven", "port is an integer"),
        ("postgresql://haven:s3cr3t-pw@[::1/haven", "well-formed host"),
    ],
    ids=["port-too-big", "port-zero", "unclosed-ipv6"],
)
def test_a_malformed_database_url_is_a_settings_error_with_its_password_masked(
    dsn: str, expected: str
):
    with pytest.raises(ConfigError) as caught:
        settings.load(valid_env(HAVEN_DATABASE_URL=dsn))
    checked = check_config(valid_env(HAVEN_DATABASE_URL=dsn))

    [problem] = caught.value.problems
    assert problem.startswith("HAVEN_DATABASE_URL: got 'postgresql://haven:********@")
    assert expected in problem
    assert "s3cr3t-pw" not in problem
    assert checked.returncode == 2
    assert problem in checked.stderr and "s3cr3t-pw" not in checked.stderr


def test_a_database_url_on_an_ipv6_host_is_accepted_and_masked():
    dsn = "postgresql://haven:s3cr3t-pw@[::1]:5432/haven"

    loaded = settings.load(valid_env(HAVEN_DATABASE_URL=dsn))

    assert dict(loaded.describe())["HAVEN_DATABASE_URL"] == (
        "postgresql://haven:********@[::1]:5432/haven"
    )


def test_a_token_address_with_a_wrong_checksum_is_called_so():
    # The valid checksummed form with one letter's case flipped.
    flipped = "0x5fbDB2315678afecb367f032d93F642f64180aa3"

    with pytest.raises(ConfigError) as caught:
        settings.load(valid_env(HAVEN_TOKEN_ADDRESS=flipped))

    [problem] = caught.value.problems
    assert problem.startswith(f"HAVEN_TOKEN_ADDRESS: got '{flipped}'")
    assert "checksum is wrong" in problem


def test_a_token_address_that_is_not_hex_is_called_so():
    with pytest.raises(ConfigError) as caught:
        settings.load(valid_env(HAVEN_TOKEN_ADDRESS="0x5fbdb2315678afecb367f0"))

    [problem] = caught.value.problems
    assert "a 0x-prefixed 20-byte hex address" in problem
    assert "checksum" not in problem


def test_a_finality_depth_shallower_than_the_confirmations_is_refused():
    with pytest.raises(ConfigError) as caught:
        settings.load(valid_env(HAVEN_CONFIRMATIONS="20", HAVEN_FINALITY_DEPTH="10"))

    assert caught.value.problems == [
        "HAVEN_FINALITY_DEPTH: got 10; expected at least HAVEN_CONFIRMATIONS (20): "
        "a block is confirmed before it is final"
    ]
    equal = settings.load(
        valid_env(HAVEN_CONFIRMATIONS="20", HAVEN_FINALITY_DEPTH="20")
    )
    assert equal.finality_depth == 20


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("HAVEN_RPC_URL", "https://user:rpc-pw@node.example/v3/rpc-api-key"),
        ("HAVEN_WS_URL", "wss://node.example/ws/ws-api-key?token=ws-token"),
        ("HAVEN_PARTNER_API_AURORA", "https://u:partner-pw@aurora.example/events"),
        ("HAVEN_ALERT_WEBHOOK_URL", "https://hooks.example/alert-path-key"),
    ],
)
def test_credentials_in_endpoint_urls_are_never_shown(key: str, url: str):
    environ = valid_env(**{key: url})
    if key == "HAVEN_ALERT_WEBHOOK_URL":
        environ["HAVEN_ALERT_WEBHOOK_SECRET"] = SECRET_TRIBE
    credentials = ("rpc-pw", "rpc-api-key", "ws-api-key", "ws-token", "partner-pw")

    shown = dict(settings.load(environ).describe())[key]
    refused = check_config(valid_env(**{key: url, "HAVEN_CHAIN_ID": "-1"}))

    assert shown.split("//")[1].split("/")[0].rsplit("@")[-1].endswith(".example")
    assert not any(c in shown for c in (*credentials, "alert-path-key"))
    assert refused.returncode == 2
    assert not any(c in refused.stdout + refused.stderr for c in credentials)


def test_a_refused_endpoint_url_is_named_with_its_credentials_masked():
    refused = check_config(
        valid_env(HAVEN_RPC_URL="ftp://user:rpc-pw@node.example/v3/rpc-api-key")
    )

    assert refused.returncode == 2
    assert "HAVEN_RPC_URL: got 'ftp://user:********@node.example/********'" in (
        refused.stderr
    )
    assert "rpc-pw" not in refused.stderr and "rpc-api-key" not in refused.stderr
