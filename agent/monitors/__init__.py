"""Watch the agent's own inputs and outputs, against what the model was trained on.

A machine's inputs change as it degrades: that is the signal the model reads, not drift.
The card's reference describes the training data over whole lives, degraded machines
included, so a degrading machine stays inside it, while another operating regime, a fault
mode the training lacked or a broken sensor does not. The monitors therefore test each
asset's signals *against the card's reference*, never against their own past:

- ``quality.QualityMonitor``: raw readings per asset and channel: non-finite or impossible
  values (the sample is skipped), a stuck channel, a step or offset on one channel, gaps;
- ``envelope.EnvelopeMonitor``: each feature the card names, per asset: a one-sided CUSUM
  of how far it stands beyond the training range;
- ``score.ScoreMonitor``: the agent's alert rate against the reference's;
- ``budget``: the thresholds of all three, calibrated to a false-alarm budget stated in a
  plant's words ("at most one false drift alarm per agent per 90 days").

Each reports *conditions*: an :class:`Event` with ``state="start"`` when one begins (with
its estimated onset ``since_s``) and ``state="end"`` when it is over, not one event per
sample while it lasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Event"]


@dataclass(frozen=True)
class Event:
    """A condition that started or ended; times are plant time, UTC epoch seconds.

    ``monitor`` names the signal (a channel, a feature, ``score``, or ``samples`` for a
    gap), ``signal`` says which kind it is and ``channels`` the raw inputs behind it.
    ``reference`` is (low, high, mean) of what training saw; ``current`` the signal's level
    now (its mean since ``since_s``); ``value`` the detector's statistic and ``threshold``
    the level it crossed.
    """

    asset: str | None
    at_s: float
    monitor: str
    detector: str
    value: float | None
    detail: str
    state: Literal["start", "end"] = "start"
    signal: Literal["feature", "channel", "score", "asset"] | None = None
    channels: tuple[str, ...] = ()
    since_s: float | None = None
    reference: tuple[float, float, float | None] | None = None
    current: float | None = None
    threshold: float | None = None
