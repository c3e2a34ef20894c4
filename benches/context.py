"""What every benchmark is handed: the scale of the run and its databases."""

from __future__ import annotations

from dataclasses import dataclass

from benches import services


@dataclass(frozen=True)
class Context:
    """The run's scale factor and the source of fresh databases."""

    scale: float
    databases: services.Databases

    def size(self, full: int, *, minimum: int) -> int:
        """Return ``full`` scaled by the run's factor, never below ``minimum``."""
        return max(minimum, round(full * self.scale))
