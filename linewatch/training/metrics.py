"""Metrics with 95 % confidence intervals, shared by model cards and ``linewatch evaluate``.

numpy only: ``linewatch evaluate`` runs where scikit-learn is not installed, and a card's
metrics must be reproducible by evaluate to the last printed digit, so both call
:func:`report_metrics` on the same windows.

Intervals:

- rows that are independent (one AI4I process per row): Wilson score intervals for
  proportions (precision, recall), percentile bootstrap for ROC AUC, F1 and RMSE;
- windows that are not (sliding windows of one engine, windows of one snapshot): a
  percentile bootstrap that resamples whole *groups* (units, snapshots), because windows of
  one unit are strongly correlated and resampling them one by one would give intervals far
  too narrow.

All bootstraps use a fixed seed, so the same inputs give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "DIGITS",
    "SEED",
    "MetricValue",
    "binary_metrics",
    "bootstrap_ci",
    "f1_at",
    "report_metrics",
    "rmse",
    "roc_auc",
    "wilson_ci",
]

SEED = 20240501
BOOTSTRAP_RESAMPLES = 1000
DIGITS = 4  # every metric and bound is rounded to this many decimals


@dataclass(frozen=True)
class MetricValue:
    """A metric as stored in a card (``contract.card.Metric`` fields)."""

    value: float
    ci95: tuple[float, float] | None
    n: int
    note: str

    def as_dict(self) -> dict[str, object]:
        return {
            "value": self.value,
            "ci95": None if self.ci95 is None else list(self.ci95),
            "n": self.n,
            "note": self.note,
        }


def _round(x: float) -> float:
    return float(round(float(x), DIGITS)) if math.isfinite(x) else float("nan")


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN with one class.

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> roc_auc(np.array([0, 1]), np.array([0.5, 0.5]))
    0.5
    """
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    # Average rank of each distinct score (1-based), so tied scores share their rank.
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _counts(y: np.ndarray, alert: np.ndarray) -> tuple[int, int, int]:
    tp = int(np.sum(alert & y))
    return tp, int(np.sum(alert & ~y)), int(np.sum(~alert & y))


def f1_at(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    """F1 of ``p >= threshold`` (0 when nothing is predicted or present).

    >>> f1_at(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]), 0.5)
    0.6666666666666666
    """
    tp, fp, fn = _counts(np.asarray(y, dtype=bool), np.asarray(p) >= threshold)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    """>>> rmse(np.array([0.0, 0.0]), np.array([3.0, 4.0])).__round__(4)
    3.5355
    """
    d = np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return float(np.sqrt(np.mean(d * d))) if len(d) else float("nan")


def wilson_ci(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n.

    >>> [round(v, 4) for v in wilson_ci(9, 10)]
    [0.5958, 0.9821]
    """
    if n == 0:
        return (float("nan"), float("nan"))
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    n: int,
    groups: np.ndarray | None = None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile 95 % interval of ``stat(indices)`` over resamples of rows or of groups.

    ``stat`` gets an index array into the data (rows repeat when resampled twice); resamples
    where it is NaN (e.g. one class only) are skipped.

    >>> x = np.arange(100.0)
    >>> lo, hi = bootstrap_ci(lambda i: float(x[i].mean()), 100)
    >>> 40 < lo < 49.5 < hi < 60
    True
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        members = None
        n_units = n
    else:
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))
        members = np.split(order, bounds[:-1])
        n_units = len(members)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, n_units, n_units)
        idx = pick if members is None else np.concatenate([members[g] for g in pick])
        v = stat(idx)
        if math.isfinite(v):
            values.append(v)
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(np.array(values), [2.5, 97.5])
    return (float(lo), float(hi))


def binary_metrics(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    *,
    groups: np.ndarray | None = None,
    prefix: str = "",
    what: str = "windows",
    group_name: str = "groups",
) -> dict[str, MetricValue]:
    """ROC AUC, precision, recall and F1 at ``threshold``, and the alert rate, with CIs.

    ``groups`` (one id per row) switches every interval to a bootstrap over groups.

    >>> y = np.array([0, 0, 0, 1, 1, 1]); p = np.array([.1, .2, .6, .4, .7, .9])
    >>> m = binary_metrics(y, p, 0.5)
    >>> m["f1"].value, m["precision"].value, m["roc_auc"].value
    (0.6667, 0.6667, 0.8889)
    """
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=np.float64)
    alert = p >= threshold
    tp, fp, fn = _counts(y, alert)
    n = len(y)
    how = f"bootstrap over {len(np.unique(groups))} {group_name}" if groups is not None else ""

    def boot(stat: Callable[[np.ndarray], float]) -> tuple[float, float]:
        return bootstrap_ci(stat, n, groups)

    def prec(i: np.ndarray) -> float:
        a, t = alert[i], y[i]
        return float(np.sum(a & t) / np.sum(a)) if np.any(a) else float("nan")

    def rec(i: np.ndarray) -> float:
        a, t = alert[i], y[i]
        return float(np.sum(a & t) / np.sum(t)) if np.any(t) else float("nan")

    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    if groups is None:
        ci_p, ci_r = wilson_ci(tp, tp + fp), wilson_ci(tp, tp + fn)
        how_pr = "Wilson"
    else:
        ci_p, ci_r = boot(prec), boot(rec)
        how_pr = how
    how_b = how or f"bootstrap over {n} {what}"
    thr = f"at threshold {threshold:.4f}"
    out = {
        "roc_auc": (roc_auc(y, p), boot(lambda i: roc_auc(y[i], p[i])), how_b),
        "precision": (precision, ci_p, f"{thr}; {tp} of {tp + fp} alerts right; CI {how_pr}"),
        "recall": (recall, ci_r, f"{thr}; {tp} of {tp + fn} positives caught; CI {how_pr}"),
        "f1": (f1_at(y, p, threshold), boot(lambda i: f1_at(y[i], p[i], threshold)),
               f"{thr}; CI {how_b}"),
        "alert_rate": (float(alert.mean()) if n else float("nan"),
                       wilson_ci(int(alert.sum()), n) if groups is None
                       else boot(lambda i: float(alert[i].mean())),
                       f"share of {what} {thr}"),
    }
    return {
        prefix + k: MetricValue(_round(v), (_round(ci[0]), _round(ci[1])), n, note)
        for k, (v, ci, note) in out.items()
    }


def _rmse_at(truth: np.ndarray, pred: np.ndarray, i: np.ndarray) -> float:
    return rmse(truth[i], pred[i])


def _rul_metrics(rul: np.ndarray, p: np.ndarray, cap: float, *, asset: np.ndarray,
                 last: np.ndarray) -> dict[str, MetricValue]:
    pred = cap * (1.0 - p)
    capped = np.minimum(rul, cap)
    out = {}
    for name, truth, mask, groups, how in (
        ("window_rul_rmse", capped, np.ones(len(p), bool), asset, "engines"),
        ("last_window_rul_rmse", capped, last, None, "units' newest windows"),
        ("last_window_rul_rmse_uncapped", rul, last, None, "units' newest windows"),
    ):
        t, e = truth[mask], pred[mask]
        g = None if groups is None else groups[mask]
        n_units = len(t) if g is None else len(np.unique(g))
        ci = bootstrap_ci(partial(_rmse_at, t, e), len(t), g)
        note = (f"cycles; predicted RUL = {cap:g} * (1 - score) vs true RUL"
                f"{'' if name.endswith('uncapped') else f' capped at {cap:g}'}; "
                f"CI bootstrap over {n_units} {how}")
        out[name] = MetricValue(_round(rmse(t, e)), (_round(ci[0]), _round(ci[1])), len(t), note)
    return out


def report_metrics(
    fmt: str,
    labels: dict[str, np.ndarray],
    p: np.ndarray,
    *,
    threshold: float,
    horizon: float | None,
    asset: np.ndarray,
    end: np.ndarray,
    last: np.ndarray,
    rul_cap: float | None = None,
) -> dict[str, MetricValue]:
    """The metrics a card reports for windows of format ``fmt``, given the labels at each
    window's newest sample; empty when the data carry no truth.

    - ``cmapss`` (needs ``rul`` and ``horizon``): windows positive when ``rul <= horizon``;
      all windows (``window_*``, bootstrap by unit) and each unit's newest window
      (``last_window_*``, the usual C-MAPSS test point). With ``rul_cap`` the score is a
      RUL estimate, ``score = 1 - min(RUL, rul_cap) / rul_cap``, and RMSE in cycles is added
      (``*_rul_rmse`` against the true RUL capped the same way, the usual benchmark, and
      ``last_window_rul_rmse_uncapped``).
    - ``ai4i`` (needs ``failure``): one window per row, rows independent; plus the share
      of rows of each failure mode that were alerted (``mode_recall_*``).
    - ``ims`` (needs ``degraded``; NaN = unknown and left out): windows, bootstrap by
      bearing-snapshot.
    - ``table`` (a plant's own data, ``linewatch card``): with ``rul`` and ``horizon``, as
      ``cmapss``; with ``failure`` (1 = positive, NaN = unknown), windows with a bootstrap
      by asset and each asset's newest window.
    """
    if fmt == "table" and "failure" in labels:
        known = ~np.isnan(labels["failure"])
        y, pk, a = labels["failure"][known] == 1, p[known], asset[known]
        out = binary_metrics(y, pk, threshold, groups=a, prefix="window_", group_name="assets")
        lk = last[known]
        out |= binary_metrics(y[lk], pk[lk], threshold, prefix="last_window_",
                              what="assets' newest windows")
        return out
    if fmt == "table":
        fmt = "cmapss"  # a remaining life per window: scored as C-MAPSS's
    if fmt == "cmapss" and "rul" in labels and horizon is not None:
        y = labels["rul"] <= horizon
        out = binary_metrics(y, p, threshold, groups=asset, prefix="window_",
                             group_name="engines")
        out |= binary_metrics(y[last], p[last], threshold, prefix="last_window_",
                              what="units' newest windows")
        if rul_cap is not None:
            out |= _rul_metrics(labels["rul"], p, rul_cap, asset=asset, last=last)
        return out
    if fmt == "ai4i" and "failure" in labels:
        out = binary_metrics(labels["failure"], p, threshold, what="rows")
        alert = p >= threshold
        for mode in ("twf", "hdf", "pwf", "osf", "rnf"):
            rows = labels.get(mode, np.zeros(len(p))) == 1
            k, n = int(np.sum(alert & rows)), int(rows.sum())
            if n:
                out[f"mode_recall_{mode}"] = MetricValue(
                    _round(k / n), tuple(_round(b) for b in wilson_ci(k, n)), n,  # type: ignore[arg-type]
                    f"{k} of {n} rows with mode {mode.upper()} alerted; CI Wilson")
        return out
    if fmt == "ims" and "degraded" in labels:
        known = ~np.isnan(labels["degraded"])
        # Windows of one 1-second snapshot of one bearing share everything but noise.
        minute = np.floor(end / 60.0).astype(np.int64).astype(str)
        snapshot = np.char.add(np.char.add(asset.astype(str), "@"), minute)
        return binary_metrics(labels["degraded"][known], p[known], threshold,
                              groups=snapshot[known], prefix="window_",
                              group_name="bearing snapshots")
    return {}
