"""Thresholds from a false-alarm budget stated in a plant's words.

"At most ``alarms`` false drift alarms per agent per ``per_days`` days" is shared equally
among every signal the agent monitors (each feature's envelope CUSUM, each channel's step
test, the alert rate): a Bonferroni split, which holds whatever the signals' correlation.
Over ``per_days`` days an agent sees ``assets * per_days * windows_per_day / life_windows``
asset lives, so each signal may raise, per life, at most

    lam = alarms / (signals * lives_per_period)

false conditions. The card's calibration (``contract.card.Tail``, written by
``linewatch calibrate`` from held-out training lives) gives each signal's rate of
excursions above ``h`` per life as ``count / lives * exp(-theta * (h - u))``; the
threshold is the ``h`` where the pessimistic 95 % bound of that rate equals ``lam``
(:func:`tail_threshold`). Budgets far below what the held-out
data can show rest on that exponential tail: ``linewatch evaluate`` prints the thresholds
and the benchmark measures the realised rate on resampled data.

The alert-rate CUSUM has no recorded tail; its threshold is Wald's bound ``ln(1/alpha)``
for independent windows, stretched by the mean length of an alert run in training,
because alerts come in runs and a run of ``r`` windows carries about one window's worth of
independent evidence.

Stuck and impossible values are not part of the budget: they are facts about a reading,
not statistical judgements. A channel counts as stuck after twice the longest run of
identical samples training showed, plus two.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from agent.monitors.quality import ChannelLimits
from contract.card import ModelCard, Monitoring, Tail
from contract.wire import Budget, Thresholds

__all__ = ["FIXED_ENVELOPE_THRESHOLD", "Calibration", "calibrate", "tail_threshold"]

logger = logging.getLogger(__name__)

# Without a calibration in the card: a documented rule instead of a library default.
FIXED_ENVELOPE_THRESHOLD = 3.0
FIXED_ALLOWANCE = 0.5


def tail_threshold(tail: Tail, signal: str, per_life: float) -> float:
    """The level ``h`` a signal's excursions pass at most ``per_life`` times per life, with
    95 % confidence given how little held-out data there is.

    Both parts of the tail model are taken at their pessimistic 95 % bound: the count of
    excursions above ``u`` at its Poisson upper bound (3.0 for a signal that never moved),
    the exponential rate ``theta`` at its lower bound for the number of peaks it was fitted
    on (a heavier tail). A tight budget over a few dozen lives therefore costs a higher
    threshold, not a broken promise.

    >>> t = Tail(u=0.0, theta=2.0, lives=100, windows=20000, counts={"a": 0, "b": 9})
    >>> round(tail_threshold(t, "a", 1e-4), 2), round(tail_threshold(t, "b", 1e-4), 2)
    (5.47, 7.06)
    """
    own = signal in tail.thetas
    theta = tail.thetas[signal] if own else tail.theta
    fitted = tail.counts.get(signal, 0) if own else sum(tail.counts.values())
    theta *= _chi2_lower(2 * max(fitted, 1)) / (2 * max(fitted, 1))
    base = _poisson_upper(tail.counts.get(signal, 0)) / tail.lives
    return tail.u + max(math.log(base / per_life), 1.0) / theta


_Z95 = 1.6448536269514722  # one-sided 95 % normal quantile


def _poisson_upper(k: int) -> float:
    """One-sided 95 % upper bound of a Poisson mean seen as ``k`` (Wilson-Hilferty).

    >>> round(_poisson_upper(0), 2), round(_poisson_upper(10), 1)
    (3.0, 17.0)
    """
    if k == 0:
        return -math.log(0.05)
    k1 = k + 1
    return k1 * (1 - 1 / (9 * k1) + _Z95 / (3 * math.sqrt(k1))) ** 3


def _chi2_lower(dof: int) -> float:
    """Lower 5 % quantile of chi-square with ``dof`` degrees of freedom (Wilson-Hilferty).

    >>> round(_chi2_lower(16), 2)
    7.96
    """
    return max(dof * (1 - 2 / (9 * dof) - _Z95 * math.sqrt(2 / (9 * dof))) ** 3, 1e-9)


@dataclass(frozen=True)
class Calibration:
    """Everything the monitors need, and what the agent reports of it."""

    report: Thresholds
    allowance: float
    envelope: np.ndarray
    limits: dict[str, ChannelLimits]
    step_window: int
    score: tuple[float, float, float] | None  # p0, p1, threshold


def calibrate(
    card: ModelCard, budget: Budget, assets: int, *, stuck_samples: int | None = None
) -> Calibration:
    """Thresholds of every monitor for ``assets`` assets under ``budget``."""
    mon = card.reference.monitoring
    used = [c for c in card.channel_names if any(c in f.inputs for f in card.features)]
    if mon is None:
        logger.warning("model card %s %s has no monitor calibration: envelope threshold fixed "
                       "at %.1f, no step or alert-rate test (run `linewatch calibrate`)",
                       card.name, card.version, FIXED_ENVELOPE_THRESHOLD)
        return _fixed(card, budget, assets, used, stuck_samples)
    steps = [c for c in used if c in mon.step.counts]
    signals = len(card.features) + len(steps) + 1
    lives = max(assets, 1) * budget.per_days * budget.windows_per_day / mon.life_windows
    per_life = budget.alarms / (signals * lives)
    envelope = np.array([tail_threshold(mon.envelope, f, per_life) for f in card.feature_names])
    limits = {c: _limits(card, mon, c, per_life if c in steps else None, stuck_samples)
              for c in used}
    score = _score(mon, budget, assets, signals)
    report = Thresholds(
        budget=budget, assets=assets, signals=signals, calibrated=True,
        envelope={n: round(float(h), 4) for n, h in zip(card.feature_names, envelope,
                                                          strict=True)},
        step={c: round(lm.step_threshold, 4) for c, lm in limits.items()
              if lm.step_threshold is not None},
        stuck_samples={c: lm.stuck_samples for c, lm in limits.items()
                       if lm.stuck_samples is not None},
        alert_rate=None if score is None else round(score[2], 4),
    )
    return Calibration(report, mon.envelope_allowance, envelope, limits, mon.step_window, score)


def _limits(card: ModelCard, mon: Monitoring, channel: str, per_life: float | None,
            stuck_samples: int | None) -> ChannelLimits:
    ref = mon.channels[channel]
    unit = next((c.unit for c in card.input.channels if c.name == channel), "")
    return ChannelLimits(
        low=ref.min, high=ref.max, noise=ref.noise,
        stuck_samples=stuck_samples or 2 * ref.longest_run + 2,
        step_threshold=None if per_life is None else tail_threshold(mon.step, channel, per_life),
        step_rearm=mon.step.u, longest_run=ref.longest_run, unit=unit)


def _score(mon: Monitoring, budget: Budget, assets: int,
           signals: int) -> tuple[float, float, float] | None:
    p0 = mon.alert_rate
    if not 0 < p0 < 1:
        return None
    p1 = 2 * p0 if p0 < 0.4 else (1 + p0) / 2
    windows = max(assets, 1) * budget.per_days * budget.windows_per_day
    alpha = budget.alarms / (signals * windows)
    run = mon.alert_run
    return p0, p1, run * math.log(1 / min(alpha * run, 0.5))


def _fixed(card: ModelCard, budget: Budget, assets: int, used: list[str],
           stuck_samples: int | None) -> Calibration:
    envelope = np.full(len(card.features), FIXED_ENVELOPE_THRESHOLD)
    limits = {}
    for c in used:
        ranges = [f.range for f in card.features if c in f.inputs and f.range is not None]
        lo = min((r[0] for r in ranges), default=-math.inf)
        hi = max((r[1] for r in ranges), default=math.inf)
        limits[c] = ChannelLimits(low=lo, high=hi, stuck_samples=stuck_samples)
    report = Thresholds(
        budget=budget, assets=assets, signals=len(card.features), calibrated=False,
        envelope={n: FIXED_ENVELOPE_THRESHOLD for n in card.feature_names},
        stuck_samples={} if stuck_samples is None else {c: stuck_samples for c in used})
    return Calibration(report, FIXED_ALLOWANCE, envelope, limits, 10, None)
