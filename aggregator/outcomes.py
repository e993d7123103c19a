"""The outcome vocabulary: what a person closing a ticket says happened, in ONE place.

``OUTCOME_MEANINGS`` pairs every outcome with its one-line meaning; everything else
(``OUTCOMES``, the ``Outcome`` literal, the classes below, the API's documentation, the
database's allowed values) is derived from it, so adding an outcome is a change here only
(plus the migration that widens ``db.Ticket``'s check constraint).

For a **maintenance** ticket, the outcome sorts into one of three classes that model health
(``aggregator.figures``) is computed from:

- **real fault** (``REAL_FAULT``): ``confirmed_failure``, ``preventive_action``: the fault
  the model flagged was there;
- **false alarm** (``FALSE_ALARM``): ``no_fault_found``, ``sensor_fault``: the machine was
  fine;
- **not counted** (``NOT_COUNTED``): ``superseded``, ``other``: no ground truth either way
  (a still-open ticket is not counted either).

Examples
--------
>>> OUTCOMES
('confirmed_failure', 'preventive_action', 'no_fault_found', 'sensor_fault', 'other', 'superseded')
>>> classify("preventive_action"), classify("sensor_fault"), classify("superseded")
('real', 'false', None)
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "FALSE_ALARM",
    "NOT_COUNTED",
    "OUTCOMES",
    "OUTCOME_MEANINGS",
    "REAL_FAULT",
    "Outcome",
    "OutcomeClass",
    "classify",
]

Outcome = Literal[
    "confirmed_failure", "preventive_action", "no_fault_found", "sensor_fault", "other",
    "superseded",
]
OutcomeClass = Literal["real", "false"]

# (outcome, one-line meaning), in the order a form should offer them.
OUTCOME_MEANINGS: tuple[tuple[Outcome, str], ...] = (
    ("confirmed_failure",
     "the machine failed, or was found failing, as the alert said: a real fault"),
    ("preventive_action",
     "a fault was found and fixed before the machine failed: a real fault"),
    ("no_fault_found",
     "a technician checked and the machine was fine: a false alarm"),
    ("sensor_fault",
     "the alert came from a faulty sensor while the machine was fine: a false alarm"),
    ("other",
     "closed for another reason (machine retired, could not be checked): not counted"),
    ("superseded",
     "closed by the aggregator when later evidence showed the ticket was of another kind "
     "(e.g. a sensor ticket): not ground truth, not counted"),
)
OUTCOMES: tuple[Outcome, ...] = tuple(name for name, _ in OUTCOME_MEANINGS)
REAL_FAULT: frozenset[Outcome] = frozenset({"confirmed_failure", "preventive_action"})
FALSE_ALARM: frozenset[Outcome] = frozenset({"no_fault_found", "sensor_fault"})
NOT_COUNTED: frozenset[Outcome] = frozenset({"other", "superseded"})

# The literal, the meanings and the classes must list the same outcomes; checked at import.
if not set(get_args(Outcome)) == set(OUTCOMES) == REAL_FAULT | FALSE_ALARM | NOT_COUNTED:
    raise RuntimeError("aggregator.outcomes: Outcome, OUTCOME_MEANINGS and the classes differ")


def classify(outcome: str | None) -> OutcomeClass | None:
    """``"real"``, ``"false"`` or None (not counted, or no outcome yet) for a maintenance
    ticket's outcome; ``ValueError`` for a word not in ``OUTCOMES``."""
    if outcome is None:
        return None
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    if outcome in REAL_FAULT:
        return "real"
    if outcome in FALSE_ALARM:
        return "false"
    return None
