"""Effects: what applying one partner event did, as told to the sender.

The outcome is the stable word of the 202 body; ``change`` is the state
change worth one INFO log line (None when nothing changed).
"""

from __future__ import annotations

from dataclasses import dataclass

from haven.intents import Intent

INTENT_CREATED = "intent_created"
INTENT_UPDATED = "intent_updated"
DUPLICATE = "duplicate"
PARKED = "parked"
RECORDED = "recorded"

# partner_events.outcome of each answer outcome.
STORED_OUTCOME = {
    INTENT_CREATED: "applied",
    INTENT_UPDATED: "applied",
    DUPLICATE: "ignored",
    PARKED: "parked",
    RECORDED: "recorded",
}


@dataclass(frozen=True)
class Effect:
    outcome: str
    intent: Intent | None = None
    change: str | None = None

    @property
    def stored_outcome(self) -> str:
        return STORED_OUTCOME[self.outcome]
