"""False drift alarms on resampled in-distribution data, against the stated budget.

The FD001 training engines are split in two halves, again and again. One half plays the
training data: it sets the features' envelope (as a card's ranges would) and is calibrated
(``linewatch.calibration``); the other half plays new engines of the same kind, run the same
way. The agent's detectors are run over every life of that half with the thresholds a budget
gives (``agent.monitors.budget``), and each life's alarms are counted: envelope CUSUM per
feature, step test per channel, stuck channels. Agents of 25 assets
at 144 windows a day (one cycle every 10 minutes) are what the budget is stated for, so the
held-out windows are converted to agent-years (25 assets x 365 days x 144 windows each).
On in-distribution data every alarm is false: alarms per agent-year is the realised
false-alarm rate, reported with a 95 % Poisson interval next to what the budget allows.

Budgets far looser than the shipped one (1 per agent per 90 days) are included because at
the shipped budget a handful of held-out lives shows no alarm at all: the looser ones show
whether the calibration's tail model holds where alarms are frequent enough to count.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from agent.datasets import Recording, read_recordings
from agent.features import FeatureExtractor
from agent.monitors.budget import calibrate as thresholds_for
from agent.monitors.cusum import excursion_peaks
from agent.monitors.envelope import exceedance
from contract.card import FeatureSpec, ModelCard
from contract.wire import Budget
from linewatch.calibration import (
    STEP_U,
    _features,
    calibrate,
    run_peaks,
    step_statistic,
)

__all__ = ["false_alarms"]

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cmapss_fd001"
TRAIN = ROOT / "models" / "data" / "cmapss_fd001" / "train_FD001.txt.gz"
ASSETS = 25
WINDOWS_PER_DAY = 144.0
BUDGETS = [(1.0, 90.0), (1.0, 7.0), (1.0, 1.0), (10.0, 1.0), (50.0, 1.0)]


def _lives(card: ModelCard) -> list[Recording]:
    out = []
    for r in read_recordings(TRAIN, "cmapss"):
        idx = [r.channels.index(c) for c in card.channel_names]
        out.append(Recording(r.asset, tuple(card.channel_names), r.t, r.values[:, idx]))
    return out


def _card_from(card: ModelCard, X: np.ndarray) -> ModelCard:
    """The card as if trained on these rows: their ranges and statistics."""
    features = [FeatureSpec(**{**f.model_dump(), "range": (float(X[:, j].min()),
                                                          float(X[:, j].max()))})
                for j, f in enumerate(card.features)]
    ref = {f.name: card.reference.features[f.name].model_copy(
        update={"std": float(X[:, j].std()), "mean": float(X[:, j].mean())})
        for j, f in enumerate(card.features)}
    return card.model_copy(update={"features": features, "reference": card.reference.model_copy(
        update={"features": ref, "monitoring": None})})


def _per_life_alarms(card: ModelCard, lives: list[Recording], X: list[np.ndarray],
                     budget: Budget) -> tuple[np.ndarray, dict[str, int]]:
    """Alarms each life raises under ``budget`` (the detectors as the agent runs them)."""
    cal = thresholds_for(card, budget, ASSETS)
    low = np.array([f.range[0] for f in card.features])  # type: ignore[index]
    high = np.array([f.range[1] for f in card.features])  # type: ignore[index]
    scale = np.array([card.reference.features[n].std for n in card.feature_names])
    used = list(cal.limits)
    cols = [card.channel_names.index(c) for c in used]
    counts = np.zeros(len(lives), dtype=np.int64)
    by = {"envelope": 0, "step": 0, "stuck": 0}
    for i, (life, x) in enumerate(zip(lives, X, strict=True)):
        if len(x):
            c, peaks = excursion_peaks(exceedance(x, low, high, scale), cal.allowance)
            n = int((peaks > cal.envelope[c]).sum())
            counts[i] += n
            by["envelope"] += n
        raw = life.values[:, cols]
        for k, ch in enumerate(used):
            lm = cal.limits[ch]
            if lm.step_threshold is not None and len(raw) >= 2 * cal.step_window:
                z = step_statistic(raw[:, [k]], np.array([lm.noise]), cal.step_window)[:, 0]
                n = sum(p > lm.step_threshold for p in run_peaks(z, STEP_U))
                counts[i] += n
                by["step"] += n
            if lm.stuck_samples is not None:
                col = raw[:, k]
                starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
                runs = np.diff(np.r_[starts, len(col)])
                n = int((runs >= lm.stuck_samples).sum())
                counts[i] += n
                by["stuck"] += n
    return counts, by


def _poisson_ci(k: int) -> tuple[float, float]:
    """95 % interval of a Poisson mean from one count (Wilson-Hilferty / exact enough)."""
    lo = 0.0 if k == 0 else k * (1 - 1 / (9 * k) - 1.96 / (3 * math.sqrt(k))) ** 3
    k1 = k + 1
    hi = k1 * (1 - 1 / (9 * k1) + 1.96 / (3 * math.sqrt(k1))) ** 3
    return lo, hi


def false_alarms(repeats: int, *, splits: int = 5) -> dict[str, Any]:
    """Realised false drift alarms per agent against each budget (see the module)."""
    card = ModelCard.load(MODEL)
    lives = _lives(card)
    fx = FeatureExtractor(card.features, card.channel_names)
    X = [_features(card, life, fx).astype(np.float64) for life in lives]
    rng = np.random.default_rng(20261202)
    alarms_total = {b: 0 for b in BUDGETS}
    by_detector = {b: {"envelope": 0, "step": 0, "stuck": 0} for b in BUDGETS}
    windows = 0
    for _ in range(splits):
        order = rng.permutation(len(lives))
        a, b = order[: len(lives) // 2], order[len(lives) // 2:]
        trained = _card_from(card, np.vstack([X[i] for i in a]))
        monitoring = calibrate(trained, [lives[i] for i in a])
        trained = trained.model_copy(update={"reference": trained.reference.model_copy(
            update={"monitoring": monitoring})})
        windows += sum(len(X[i]) for i in b)
        for alarms, per_days in BUDGETS:
            budget = Budget(alarms=alarms, per_days=per_days, windows_per_day=WINDOWS_PER_DAY)
            counts, by = _per_life_alarms(trained, [lives[i] for i in b], [X[i] for i in b],
                                          budget)
            alarms_total[alarms, per_days] += int(counts.sum())
            for k, v in by.items():
                by_detector[alarms, per_days][k] += v
    # Every held-out window is one asset-window of an agent: an agent-year is
    # ASSETS * 365 * WINDOWS_PER_DAY of them.
    agent_years = windows / (ASSETS * 365.0 * WINDOWS_PER_DAY)
    out = {}
    for (alarms, per_days), k in alarms_total.items():
        lo, hi = _poisson_ci(k)
        allowed = alarms / per_days * 365.0
        out[f"{alarms:g} per {per_days:g} days"] = {
            "allowed_per_agent_year": round(allowed, 4),
            "realised_per_agent_year": round(k / agent_years, 4),
            "ci95_per_agent_year": [round(lo / agent_years, 4), round(hi / agent_years, 4)],
            "realised_over_allowed": round(k / agent_years / allowed, 4),
            "alarms": k, "by_detector": by_detector[alarms, per_days],
        }
    return {"assets_per_agent": ASSETS, "windows_per_day": WINDOWS_PER_DAY,
            "splits": splits, "held_out_lives": splits * (len(lives) - len(lives) // 2),
            "held_out_windows": windows, "agent_years_observed": round(agent_years, 4),
            "budgets": out}
