"""The tailer's settings: bad values are configuration errors naming the key."""

from __future__ import annotations

import pytest

from haven import settings
from haven.errors import ConfigError

BASE = {
    "HAVEN_DATABASE_URL": "postgresql://127.0.0.1/haven",
    "HAVEN_RPC_URL": "http://127.0.0.1:8545",
    "HAVEN_CHAIN_ID": "31337",
}


def load(**extra: str) -> settings.Settings:
    return settings.load(
        {**BASE, **extra}, require=("database_url", "rpc_url", "chain_id")
    )


def test_the_tailer_keys_default_to_polling_with_production_limits() -> None:
    loaded = load()

    assert loaded.rpc_timeout_s == 10
    assert loaded.head_stall_s == 60
    assert loaded.log_range_max_blocks == 2000
    assert loaded.ws_url is None


def test_the_tailer_keys_are_read_from_the_environment() -> None:
    loaded = load(
        HAVEN_RPC_TIMEOUT_S="2.5",
        HAVEN_HEAD_STALL_S="30",
        HAVEN_LOG_RANGE_MAX_BLOCKS="500",
        HAVEN_WS_URL="wss://node.example/ws",
    )

    assert loaded.rpc_timeout_s == 2.5
    assert loaded.head_stall_s == 30
    assert loaded.log_range_max_blocks == 500
    assert loaded.ws_url == "wss://node.example/ws"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("HAVEN_RPC_TIMEOUT_S", "0", "a number of seconds from 0.1 to 600"),
        ("HAVEN_RPC_TIMEOUT_S", "ten", "a number of seconds from 0.1 to 600"),
        ("HAVEN_RPC_TIMEOUT_S", "nan", "a number of seconds from 0.1 to 600"),
        ("HAVEN_HEAD_STALL_S", "-5", "a number of seconds from 0.1 to 86400"),
        ("HAVEN_LOG_RANGE_MAX_BLOCKS", "0", "an integer from 1 to 1000000"),
        ("HAVEN_LOG_RANGE_MAX_BLOCKS", "1.5", "an integer from 1 to 1000000"),
        ("HAVEN_WS_URL", "http://127.0.0.1:8545", "a URL starting with ws or wss://"),
    ],
)
def test_a_bad_tailer_value_is_a_config_error_naming_key_value_and_expectation(
    key: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**{key: value})

    assert caught.value.problems == [f"{key}: got {value!r}; expected {expected}"]


def test_a_stall_limit_shorter_than_two_polls_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load(HAVEN_HEAD_STALL_S="1", HAVEN_POLL_INTERVAL_MS="800")

    assert caught.value.problems == [
        "HAVEN_HEAD_STALL_S: got 1; expected at least 2 x "
        "HAVEN_POLL_INTERVAL_MS (1600 ms)"
    ]
