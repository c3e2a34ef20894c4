"""Reward rules: what each partner event earns, in base units, and under which version.

The rules live in a TOML file (``config/rewards.toml`` unless
``HAVEN_REWARD_RULES`` names another) and are loaded once at start-up. Money
never passes through a float: rates are exact decimals held as fractions,
and an amount is rounded down to a whole base unit once, at the very end.

The business key of each reward (its kind and source key) is decided here,
so that one partner object can only ever owe one reward:

=================  ==================  ================================
event              kind                source key
=================  ==================  ================================
booking.*          booking             booking_id
review.submitted   review              booking_id
event.attended     event_attendance    ["event_id", "member_id"]
contribution.*     contribution        contribution_id
coaching.*         coaching            session_id
referral.*         referral            referred_member_id
=================  ==================  ================================
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from haven.errors import ConfigError
from haven.listeners import events
from haven.listeners.events import InvalidEventError
from haven.types import ONE_HNV, ChecksumAddress, Wei

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "config" / "rewards.toml"
CENTS_PER_UNIT = 100
PERCENT = 100


@dataclass(frozen=True)
class Reward:
    """A reward an event earns: its business key, wallet and amount."""

    kind: str
    source_key: str
    wallet: ChecksumAddress
    amount_wei: Wei
    rule_version: str


@dataclass(frozen=True)
class RuleBook:
    """One version of the reward rules; construct with :func:`load` or :func:`parse`."""

    version: str
    hnv_per_cad: Fraction
    cad_per_unit: dict[str, Fraction]
    long_stay_nights: int
    long_stay_bonus_percent: int
    review_wei: Wei
    review_min_rating: int
    attendance_wei: dict[str, Wei]
    contribution_wei: Wei
    coaching_wei: Wei
    referral_wei: Wei

    def booking_wei(self, booking: events.Booking) -> Wei:
        """Return the reward of a booking in base units, rounded down once.

        ``total_paid_cents * cad_per_unit / 100`` CAD, times ``hnv_per_cad``,
        times ``(100 + bonus) / 100`` for a long stay. Raise InvalidEventError
        for a currency without a configured rate.
        """
        rate = self.cad_per_unit.get(booking.currency)
        if rate is None:
            accepted = ", ".join(sorted(self.cad_per_unit))
            raise InvalidEventError(
                [
                    {
                        "path": "data.currency",
                        "message": f"{booking.currency} has no configured rate; "
                        f"expected one of {accepted}",
                    }
                ]
            )
        bonus = self.long_stay_bonus_percent
        if booking.nights < self.long_stay_nights:
            bonus = 0

        cad = Fraction(booking.total_paid_cents, CENTS_PER_UNIT) * rate
        exact = cad * self.hnv_per_cad * ONE_HNV * (PERCENT + bonus) / PERCENT
        return Wei(exact.numerator // exact.denominator)

    def reward_for(self, event: events.Event) -> Reward | None:
        """Return what ``event`` earns, or None when it earns nothing.

        Raise InvalidEventError when the rules refuse a value of the event
        (a currency or event type they do not price).
        """
        data = event.data
        match data:
            case events.Booking():
                return self._reward(
                    "booking", data.booking_id, data.wallet, self.booking_wei(data)
                )
            case events.Review() if data.rating >= self.review_min_rating:
                return self._reward(
                    "review", data.booking_id, data.wallet, self.review_wei
                )
            case events.Attendance():
                # A JSON pair, because ids may contain any separator.
                key = json.dumps([data.event_id, data.member_id], ensure_ascii=False)
                return self._reward(
                    "event_attendance", key, data.wallet, self._tier(data)
                )
            case events.Contribution():
                return self._reward(
                    "contribution",
                    data.contribution_id,
                    data.wallet,
                    self.contribution_wei,
                )
            case events.Coaching():
                return self._reward(
                    "coaching", data.session_id, data.wallet, self.coaching_wei
                )
            case events.Referral():
                return self._reward(
                    "referral", data.referred_member_id, data.wallet, self.referral_wei
                )
        return None

    def _reward(
        self, kind: str, source_key: str, wallet: ChecksumAddress, amount_wei: Wei
    ) -> Reward | None:
        if amount_wei <= 0:
            return None
        return Reward(kind, source_key, wallet, amount_wei, self.version)

    def _tier(self, attendance: events.Attendance) -> Wei:
        amount_wei = self.attendance_wei.get(attendance.event_type)
        if amount_wei is None:
            known = ", ".join(sorted(self.attendance_wei))
            raise InvalidEventError(
                [{"path": "data.event_type", "message": f"expected one of {known}"}]
            )
        return amount_wei


def load(path: Path | None = None) -> RuleBook:
    """Read and validate a rules file; raise ConfigError listing every problem."""
    path = path or DEFAULT_PATH
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            [
                f"HAVEN_REWARD_RULES: cannot read {str(path)!r} ({exc.strerror}); "
                "expected a readable TOML file"
            ]
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [f"HAVEN_REWARD_RULES: {str(path)!r} is not valid TOML ({exc})"]
        ) from exc
    return parse(document, origin=str(path))


def parse(document: dict[str, Any], *, origin: str = "rules") -> RuleBook:
    """Build a RuleBook from a parsed rules document; raise ConfigError if bad."""
    table = _Table(document, origin, [])
    aurora = table.table("aurora")
    booking = aurora.table("booking")
    review = aurora.table("review")
    tribe = table.table("tribe")
    tiers = tribe.table("event_attended")
    currencies = booking.table("currencies")

    book = RuleBook(
        version=table.text("version"),
        hnv_per_cad=booking.rate("hnv_per_cad"),
        cad_per_unit={code: currencies.rate(code) for code in currencies.keys},
        long_stay_nights=booking.integer("long_stay_nights", 1, 3650),
        long_stay_bonus_percent=booking.integer("long_stay_bonus_percent", 0, 1000),
        review_wei=review.hnv("reward_hnv"),
        review_min_rating=review.integer("min_rating", 1, 5),
        attendance_wei={name: tiers.hnv(name) for name in tiers.keys},
        contribution_wei=tribe.table("contribution").hnv("reward_hnv"),
        coaching_wei=tribe.table("coaching").hnv("reward_hnv"),
        referral_wei=tribe.table("referral").hnv("reward_hnv"),
    )
    for code in book.cad_per_unit:
        currencies.require(
            events.is_currency(code), code, "expected an ISO 4217 code such as CAD"
        )
    table.finish()
    return book


class _Table:
    """A TOML table read strictly: unknown keys and bad values are gathered."""

    def __init__(self, value: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.value: dict[str, Any] = value if isinstance(value, dict) else {}
        self.seen: set[str] = set()
        self.children: list[_Table] = []
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a table")

    @property
    def keys(self) -> list[str]:
        return list(self.value)

    def require(self, valid: bool, key: str, expectation: str) -> None:
        if not valid:
            self.problems.append(f"{self.path}.{key}: {expectation}")

    def _take(self, key: str) -> Any:
        self.seen.add(key)
        if key not in self.value:
            self.problems.append(f"{self.path}.{key}: missing")
        return self.value.get(key)

    def table(self, key: str) -> _Table:
        child = _Table(self._take(key) or {}, f"{self.path}.{key}", self.problems)
        self.children.append(child)
        return child

    def text(self, key: str) -> str:
        value = self._take(key)
        if not isinstance(value, str) or not value.strip():
            self.problems.append(
                f"{self.path}.{key}: got {value!r}; expected a non-empty string"
            )
            return ""
        return value.strip()

    def integer(self, key: str, low: int, high: int) -> int:
        value = self._take(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not low <= value <= high
        ):
            self.problems.append(
                f"{self.path}.{key}: got {value!r}; "
                f"expected an integer from {low} to {high}"
            )
            return low
        return value

    def rate(self, key: str) -> Fraction:
        value = self._take(key)
        try:
            if not isinstance(value, str):
                raise ValueError
            rate = Fraction(value)
            if rate <= 0:
                raise ValueError
        except (ValueError, ZeroDivisionError):
            self.problems.append(
                f"{self.path}.{key}: got {value!r}; "
                'expected a positive decimal string such as "1.25"'
            )
            return Fraction(1)
        return rate

    def hnv(self, key: str) -> Wei:
        amount = self.rate(key) * ONE_HNV
        if amount.denominator != 1:
            self.problems.append(
                f"{self.path}.{key}: finer than one base unit (18 decimals)"
            )
            return Wei(0)
        return Wei(amount.numerator)

    def finish(self) -> None:
        """Raise ConfigError if any problem or unknown key was found in the tables."""
        self._unknown_keys()
        if self.problems:
            raise ConfigError(self.problems)

    def _unknown_keys(self) -> None:
        for key in self.value:
            if key not in self.seen:
                self.problems.append(f"{self.path}.{key}: unknown key")
        for child in self.children:
            child._unknown_keys()
