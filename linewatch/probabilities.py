"""Are a classifier's scores probabilities? Measured on held-out predictions, and mended
with a monotone map when they are not.

A gateway estimates the precision and recall of its alerts from the model's probabilities
(``agent.estimate``): that works only if, of the windows scored 0.3, about 30 % really are
positive. This module measures that on predictions the model did not train on (the
out-of-fold predictions the trainers choose their thresholds on) and writes the card's
``calibration`` (:class:`contract.card.ProbabilityCalibration`):

- **ECE**, expected calibration error: the windows sorted by score and cut into
  :data:`BINS` bins of equal count; the mean over windows of |mean score - share positive|
  of their bin. With the **reliability table** (each bin's mean score, share positive and
  count) and the **Brier score** (mean squared difference of score and label).
- **ECE by chance**: even perfectly calibrated scores show an ECE above 0, from the
  labels' own randomness; its 95th percentile over :data:`CHANCE_DRAWS` label sets drawn
  from the scores themselves (fixed seed) says how much of the measured ECE is noise.
- **Recalibration.** When the ECE exceeds what chance explains, an isotonic regression
  (scikit-learn) of label on score is fitted: a monotone map that keeps the model's order
  of windows (so its ROC curve), stored in the card as points for ``numpy.interp``; the
  model file and its sha256 do not change. It is *cross-fitted* to judge it: the map for
  each validation fold is fitted on the other folds' predictions, and ``ece_after`` is
  measured on those held-out windows. The map is kept only if it lowers the ECE there; the
  one written into the card is then fitted on every held-out prediction.
- **Calibrated** when the ECE of the probabilities the agent will use (mapped or not) is
  at most :data:`TOLERANCE`, 0.05: probabilities off by 5 points on average, the most
  that leaves a precision estimate within a few points. An uncalibrated card makes the
  agent say so instead of estimating.

Why fit a map already below the tolerance: the ECE averages over every window, and most
windows of a machine that is not failing score near 0, so a model can sit well within the
tolerance while being off where it matters for an estimate (the alerting windows, and the
many low scores whose sum is the expected number of missed positives). The chance level
is the honest bar for "off": more windows, a lower bar.

numpy, plus scikit-learn (the ``train`` extra) for the isotonic fit only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.estimate import apply_map
from contract.card import CalibrationMap, ProbabilityCalibration, ReliabilityBin

__all__ = [
    "BINS",
    "CHANCE_DRAWS",
    "SECTION",
    "SEED",
    "TOLERANCE",
    "brier",
    "card_section",
    "ece",
    "ece_by_chance",
    "fit_map",
    "measure",
    "reliability",
    "with_section",
]

BINS = 10
TOLERANCE = 0.05
CHANCE_DRAWS = 200
SEED = 20260301

Folds = Sequence[tuple[np.ndarray, np.ndarray]]


def _bins(p: np.ndarray, bins: int) -> list[np.ndarray]:
    """Indices of ``p`` sorted by score (stable) and cut into ``bins`` near-equal counts."""
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(bins, len(p))) if len(b)]


def ece(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-mass bins.

    >>> ece(np.array([0, 0, 1, 1]), np.array([0.0, 0.0, 1.0, 1.0]), bins=2)
    0.0
    >>> round(ece(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.8, 0.9]), bins=2), 4)
    0.35
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return float(sum(len(b) * abs(p[b].mean() - y[b].mean()) for b in _bins(p, bins))
                 / len(p))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference of probability and label.

    >>> brier(np.array([0, 1]), np.array([0.5, 0.5]))
    0.25
    """
    d = np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return float(np.mean(d * d))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> list[ReliabilityBin]:
    """The reliability table: each equal-mass bin's mean score, share positive and count."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return [ReliabilityBin(predicted=_r(p[b].mean()), observed=_r(y[b].mean()), n=len(b))
            for b in _bins(p, bins)]


def ece_by_chance(p: np.ndarray, bins: int = BINS, *, draws: int = CHANCE_DRAWS,
                  seed: int = SEED) -> float:
    """95th percentile of the ECE of perfectly calibrated scores ``p``: labels drawn as
    Bernoulli(p), ``draws`` times with a fixed seed. (Windows of one machine are not
    independent, so real noise is, if anything, larger: a map is then fitted a little more
    readily than needed, and kept only if it helps on held-out windows.)"""
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = [ece((rng.random(len(p)) < p).astype(np.float64), p, bins) for _ in range(draws)]
    return float(np.percentile(values, 95))


def fit_map(y: np.ndarray, p: np.ndarray) -> CalibrationMap:
    """Isotonic regression of ``y`` on ``p`` as a piecewise-linear map (scikit-learn's own
    prediction is the same interpolation between these points, clipped at the ends)."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64))
    x = [float(v) for v in iso.X_thresholds_]
    v = [min(1.0, max(0.0, float(u))) for u in iso.y_thresholds_]
    if len(x) == 1:  # one distinct score: a flat map
        x, v = [x[0], x[0] + 1e-9], [v[0], v[0]]
    return CalibrationMap(x=x, y=v)


def measure(y: np.ndarray, p: np.ndarray, folds: Folds, *, evaluated_on: str,
            tolerance: float = TOLERANCE, bins: int = BINS) -> ProbabilityCalibration:
    """The card's ``calibration`` from held-out scores ``p`` with labels ``y``.

    ``folds`` (train indices, held-out indices) are the groups a map is cross-fitted over
    (the trainer's validation folds, so one machine's windows never sit on both sides);
    ``evaluated_on`` says in words which predictions ``p`` are.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) != len(p) or len(p) == 0 or not np.all(np.isfinite(p)):
        raise ValueError("calibration needs one finite score per label, and at least one")
    before, chance = ece(y, p, bins), ece_by_chance(p, bins)
    shipped: CalibrationMap | None = None
    ece_after = brier_after = None
    bins_after = None
    note = (f"ECE {before:.4f} within what chance gives ({chance:.4f}): scores used as they "
            "are")
    if before > chance:
        q = np.empty_like(p)
        for fit_idx, held_idx in folds:
            q[held_idx] = apply_map(fit_map(y[fit_idx], p[fit_idx]), p[held_idx])
        after = ece(y, q, bins)
        if after < before:
            shipped = fit_map(y, p)
            ece_after, brier_after = _r(after), _r(brier(y, q))
            bins_after = reliability(y, q, bins)
            note = (f"ECE {before:.4f} above what chance gives ({chance:.4f}): isotonic map, "
                    f"cross-fitted over {len(folds)} folds, ECE {after:.4f} on the windows "
                    "each fold's map did not see; the map in the card is fitted on all of "
                    "them")
        else:
            note = (f"ECE {before:.4f} above what chance gives ({chance:.4f}), but a "
                    f"cross-fitted isotonic map did not lower it ({after:.4f}): scores used "
                    "as they are")
    final = before if ece_after is None else ece_after
    return ProbabilityCalibration(
        method="none" if shipped is None else "isotonic",
        calibrated=final <= tolerance,
        tolerance=tolerance,
        evaluated_on=evaluated_on,
        note=note,
        n=len(p),
        ece_before=_r(before),
        ece_chance=_r(chance),
        brier_before=_r(brier(y, p)),
        bins=reliability(y, p, bins),
        map=shipped,
        ece_after=ece_after,
        brier_after=brier_after,
        bins_after=bins_after,
    )


def _r(v: float) -> float:
    """8 significant digits, as the card's other statistics."""
    return float(f"{float(v):.8g}")


# --- in words, for CARD.md -----------------------------------------------------------------

SECTION = "## How far its scores are probabilities"


def card_section(cal: ProbabilityCalibration) -> str:
    """CARD.md's section on the card's ``calibration``, for people."""
    mapped = cal.map is not None and cal.bins_after is not None
    lines = [
        SECTION,
        "",
        f"Measured on {cal.evaluated_on}.",
        "",
        f"- Expected calibration error (ECE, {len(cal.bins)} bins of equal count): "
        f"**{cal.ece_before:.4f}**; perfectly calibrated scores would show up to "
        f"{cal.ece_chance:.4f} by chance on as many windows. Brier score "
        f"{cal.brier_before:.4f}.",
    ]
    if mapped:
        assert cal.map is not None and cal.ece_after is not None
        lines.append(
            f"- The agent reads the scores through a monotone (isotonic) map, "
            f"`calibration.map` in `card.json` ({len(cal.map.x)} points, applied with "
            f"`numpy.interp`; `model.onnx` and its sha256 are unchanged): ECE "
            f"**{cal.ece_after:.4f}**, Brier {cal.brier_after:.4f}, on windows each "
            "fold's map was not fitted on.")
    verdict = ("calibrated" if cal.calibrated else "**not calibrated**")
    consequence = ("so the agent estimates the precision, recall and F1 of its alerts "
                   "from them in every health report (`agent.estimate`)" if cal.calibrated
                   else "so the agent reports that it cannot estimate its alerts' "
                   "precision and recall instead of estimating them")
    lines += [f"- Verdict: {verdict} (ECE tolerance {cal.tolerance:g}), {consequence}.",
              "", "| bin | mean score | share positive | windows |"
              + (" mapped: mean probability | share positive |" if mapped else ""),
              "|---|---|---|---|" + ("---|---|" if mapped else "")]
    after = cal.bins_after if mapped and cal.bins_after is not None else [None] * len(cal.bins)
    for k, (b, a) in enumerate(zip(cal.bins, after, strict=False), start=1):
        row = f"| {k} | {b.predicted:.4f} | {b.observed:.4f} | {b.n} |"
        if a is not None:
            row += f" {a.predicted:.4f} | {a.observed:.4f} |"
        lines.append(row)
    if mapped:
        lines += ["", "The mapped columns bin the windows again, by their mapped probability."]
    return "\n".join(lines)


def with_section(md: str, cal: ProbabilityCalibration) -> str:
    """CARD.md text ``md`` with its calibration section replaced, or inserted before
    "## How it was built" (where training writes it)."""
    section = card_section(cal) + "\n\n"
    start = md.find(SECTION + "\n")
    if start >= 0:
        end = md.find("\n## ", start + len(SECTION))
        return md[:start] + section + (md[end + 1:] if end >= 0 else "")
    at = md.find("## How it was built")
    return md + "\n" + section if at < 0 else md[:at] + section + md[at:]
