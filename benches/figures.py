"""Benchmark outcomes: figures, goals, the printed table and the results file.

A :class:`Figure` is one benchmark's measured number, its baseline number
and the goal checks that decide pass or fail. Checks never fail the run:
the command reports them, and a person reads the table.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    ">": operator.gt,
}


@dataclass(frozen=True)
class Check:
    """One goal: ``value`` of the named quantity against ``limit``."""

    quantity: str
    op: str
    limit: float
    value: float

    @property
    def passed(self) -> bool:
        return _OPERATORS[self.op](self.value, self.limit)

    def describe(self) -> str:
        return f"{self.quantity} {self.op} {self.limit:g}"

    def to_json(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity,
            "op": self.op,
            "limit": self.limit,
            "value": _significant(self.value),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Figure:
    """One benchmark's result: measured and baseline in ``unit``, and its goals."""

    name: str
    unit: str
    measured: float
    baseline: float
    checks: tuple[Check, ...]
    sizes: Mapping[str, int | float]
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Measured over baseline; 0 when the baseline is not positive."""
        return self.measured / self.baseline if self.baseline > 0 else 0.0

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def goal(self) -> str:
        return " and ".join(check.describe() for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "measured": _significant(self.measured),
            "baseline": _significant(self.baseline),
            "ratio": _significant(self.ratio),
            "goal": self.goal,
            "checks": [check.to_json() for check in self.checks],
            "passed": self.passed,
            "sizes": dict(self.sizes),
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class Failure:
    """A benchmark that could not produce a figure, and why."""

    name: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "error": self.error, "passed": False}


Outcome = Figure | Failure


def write(
    path: Path,
    outcomes: Sequence[Outcome],
    *,
    machine: Mapping[str, Any],
    scale: float,
    elapsed_s: float,
) -> None:
    """Write the results file: one object per benchmark plus the machine."""
    document = {
        "scale": scale,
        "elapsed_s": round(elapsed_s, 2),
        "machine": dict(machine),
        "benchmarks": [outcome.to_json() for outcome in outcomes],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def table(outcomes: Iterable[Outcome]) -> str:
    """Render the outcomes as a plain-text table for a terminal."""
    header = ["benchmark", "unit", "measured", "baseline", "ratio", "goal", "result"]
    rows = [header]
    for outcome in outcomes:
        if isinstance(outcome, Failure):
            rows.append([outcome.name, "", "", "", "", "", _error_line(outcome.error)])
            continue
        rows.append(
            [
                outcome.name,
                outcome.unit,
                _number(outcome.measured),
                _number(outcome.baseline),
                f"{outcome.ratio:.3f}",
                outcome.goal,
                "pass" if outcome.passed else "FAIL",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [_line(row, widths) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _line(row: list[str], widths: list[int]) -> str:
    return "  ".join(
        cell.ljust(w) for cell, w in zip(row, widths, strict=True)
    ).rstrip()


def _significant(value: float) -> float:
    """Round to six significant digits: a few milliseconds keep their ratio."""
    return float(f"{value:.6g}")


def _error_line(error: str) -> str:
    """The last line of an error, which names it, cut to fit a terminal row."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    last = lines[-1] if lines else error
    return "ERROR " + (last if len(last) <= 100 else last[:97] + "...")


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}"
