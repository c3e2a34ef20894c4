"""Reward rules: exact integer amounts, versions and strict loading."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from haven.errors import ConfigError
from haven.listeners import events, rules
from haven.listeners.events import InvalidEventError

HNV = 10**18
WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def booking(cents: int, nights: int, currency: str = "CAD") -> events.Booking:
    return events.Booking("B-1", "G-1", WALLET, cents, currency, nights)


def event(data: events.EventData, event_type: str = "booking.completed"):
    return events.Event("aurora", event_type, datetime.now(UTC), data, {})


def document() -> dict:
    return tomllib.loads(rules.DEFAULT_PATH.read_text())


def test_the_issue_example_earns_exactly_1080_hnv():
    book = rules.load()

    assert book.booking_wei(booking(45000, 3)) == 1080 * HNV


def test_the_bonus_starts_at_two_nights():
    book = rules.load()

    assert book.booking_wei(booking(45000, 1)) == 900 * HNV
    assert book.booking_wei(booking(45000, 2)) == 1080 * HNV


def test_the_result_matches_the_integer_formula_for_many_totals():
    book = rules.load()

    for cents in range(1, 5000, 7):
        for nights in (1, 2, 9):
            bonus = 120 if nights >= 2 else 100
            expected = cents * 2 * HNV // 100 * bonus // 100
            assert book.booking_wei(booking(cents, nights)) == expected


def test_a_configured_rate_rounds_down_once_at_the_end():
    raw = document()
    raw["aurora"]["booking"]["currencies"]["USD"] = "1.333333333333333333333"
    book = rules.parse(raw)

    amount = book.booking_wei(booking(1, 2, "USD"))

    exact = Fraction(1, 100) * Fraction("1.333333333333333333333") * 2 * HNV * 120 / 100
    assert amount == exact.numerator // exact.denominator
    assert amount == 31999999999999999


def test_a_currency_without_a_rate_is_refused_on_its_path():
    with pytest.raises(InvalidEventError) as refused:
        rules.load().booking_wei(booking(100, 1, "EUR"))

    assert refused.value.fields[0]["path"] == "data.currency"


def test_fixed_rewards_and_tiers_match_the_documented_defaults():
    book = rules.load()

    assert book.review_wei == 50 * HNV
    assert book.contribution_wei == 50 * HNV
    assert book.coaching_wei == 75 * HNV
    assert book.referral_wei == 100 * HNV
    assert book.attendance_wei == {
        "meetup": 25 * HNV,
        "workshop": 50 * HNV,
        "summit": 75 * HNV,
        "retreat": 100 * HNV,
    }


def test_every_reward_carries_the_rule_version():
    book = rules.load()

    reward = book.reward_for(event(booking(100, 1)))

    assert reward is not None
    assert reward.rule_version == book.version == "2026-12-01.1"
    assert (reward.kind, reward.source_key) == ("booking", "B-1")


def test_a_low_rating_and_a_stake_earn_nothing():
    book = rules.load()
    low = events.Review("B-1", "G-1", WALLET, 3)
    stake = events.Stake("M", WALLET, "S", "stake", 10)

    assert book.reward_for(event(low, "review.submitted")) is None
    assert book.reward_for(event(stake, "staking.changed")) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda raw: raw["tribe"]["coaching"].update(reward_hnv=75.5), "75.5"),
        (lambda raw: raw["tribe"]["coaching"].update(reward_hnv="-1"), "positive"),
        (lambda raw: raw["tribe"]["coaching"].update(bonus="1"), "unknown key"),
        (lambda raw: raw.update(extra=1), "rules.extra: unknown key"),
        (lambda raw: raw.pop("version"), "rules.version: missing"),
        (
            lambda raw: raw["tribe"]["coaching"].update(reward_hnv="1e-19"),
            "finer than one base unit",
        ),
        (
            lambda raw: raw["aurora"]["booking"]["currencies"].update(usd="1"),
            "ISO 4217",
        ),
    ],
)
def test_a_bad_rules_document_is_a_config_error_naming_the_key(change, problem):
    raw = document()
    change(raw)

    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        rules.parse(raw)


def test_an_unreadable_rules_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="HAVEN_REWARD_RULES"):
        rules.load(tmp_path / "missing.toml")
