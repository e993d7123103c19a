"""Turbofan fleet, C-MAPSS FD001: probability that an engine fails within the next H cycles.

Windows of the last 30 cycles of each engine, hop 1 (a score every cycle once an engine has
30 cycles); per kept sensor the window's mean, newest value and slope. Sensors that carry
no information in the training file are dropped, by rules recorded in the card. The
learner and its hyper-parameters are chosen by 5-fold cross-validation grouped by engine
unit (an engine's windows never sit on both sides of a split); the alert threshold is the
lowest one whose out-of-fold precision reaches 0.9. ``test_FD001`` with ``RUL_FD001`` is
used for reporting only, never for a choice.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from agent.datasets import CMAPSS_CHANNELS, Recording, read_recordings
from contract.card import (
    ChannelSpec,
    FeatureSpec,
    InputSpec,
    ModelCard,
    OutputSpec,
    ThresholdSpec,
    WindowSpec,
)
from linewatch.training import common as c
from linewatch.training.frames import Frames, featurize
from linewatch.training.metrics import MetricValue, binary_metrics, report_metrics

__all__ = ["NAME", "feature_specs", "fit", "make_estimator", "out_of_fold", "select_channels"]

NAME = "cmapss_fd001"
VERSION = "1.0.0"
TRAIN_FILE = "cmapss_fd001/train_FD001.txt.gz"
TEST_FILE = "cmapss_fd001/test_FD001.txt.gz"
TRUTH_FILE = "cmapss_fd001/RUL_FD001.txt"
HORIZON = 30  # cycles: "fails within the next 30 cycles"
WINDOW = 30  # the shortest test engine has 31 cycles, so every one gets scored
HOP = 1
FEATURE_FNS = ("mean", "last", "slope")
FOLDS = 5
TARGET_PRECISION = 0.9
RUL_CAP = 125  # the usual C-MAPSS convention, only for the correlation rule below
MIN_DISTINCT = 3  # fewer distinct values = constant or flickering in the last digit
MIN_ABS_CORR = 0.05  # |corr(channel, capped RUL)| below this = noise
VALIDATION = f"{FOLDS}-fold cross-validation grouped by engine unit on train_FD001"

CANDIDATES: tuple[dict[str, Any], ...] = (
    {"learner": "logreg", "C": 0.01},
    {"learner": "logreg", "C": 0.1},
    {"learner": "logreg", "C": 1.0},
    {"learner": "hgb", "learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 15,
     "min_samples_leaf": 50, "l2_regularization": 1.0},
    {"learner": "hgb", "learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31,
     "min_samples_leaf": 20, "l2_regularization": 0.0},
)

# Paper table 2 (Saxena et al. 2008), mapped by position as is conventional.
SENSORS: dict[str, tuple[str, str]] = {
    "sensor_1": ("°R", "T2 total temperature at fan inlet"),
    "sensor_2": ("°R", "T24 total temperature at LPC outlet"),
    "sensor_3": ("°R", "T30 total temperature at HPC outlet"),
    "sensor_4": ("°R", "T50 total temperature at LPT outlet"),
    "sensor_5": ("psia", "P2 pressure at fan inlet"),
    "sensor_6": ("psia", "P15 total pressure in bypass duct"),
    "sensor_7": ("psia", "P30 total pressure at HPC outlet"),
    "sensor_8": ("rpm", "Nf physical fan speed"),
    "sensor_9": ("rpm", "Nc physical core speed"),
    "sensor_10": ("-", "epr engine pressure ratio (P50/P2)"),
    "sensor_11": ("psia", "Ps30 static pressure at HPC outlet"),
    "sensor_12": ("pps/psi", "phi ratio of fuel flow to Ps30"),
    "sensor_13": ("rpm", "NRf corrected fan speed"),
    "sensor_14": ("rpm", "NRc corrected core speed"),
    "sensor_15": ("-", "BPR bypass ratio"),
    "sensor_16": ("-", "farB burner fuel-air ratio"),
    "sensor_17": ("-", "htBleed bleed enthalpy"),
    "sensor_18": ("rpm", "Nf_dmd demanded fan speed"),
    "sensor_19": ("rpm", "PCNfR_dmd demanded corrected fan speed"),
    "sensor_20": ("lbm/s", "W31 HPT coolant bleed"),
    "sensor_21": ("lbm/s", "W32 LPT coolant bleed"),
    "op_setting_1": ("-", "operational setting 1 (altitude-like)"),
    "op_setting_2": ("-", "operational setting 2 (Mach-like)"),
    "op_setting_3": ("-", "operational setting 3 (throttle resolver angle-like)"),
}


def select_channels(recordings: list[Recording]) -> tuple[list[str], dict[str, str]]:
    """Channels worth feeding the model, and the reason each other one is dropped.

    Decided on the training file only: a channel with fewer than 3 distinct values is
    constant (or flickers in its last printed digit); one whose correlation with the capped
    RUL is below 0.05 in magnitude is noise around a single operating point.
    """
    values = np.concatenate([r.values for r in recordings])
    rul = np.minimum(np.concatenate([r.labels["rul"] for r in recordings]), RUL_CAP)
    kept, dropped = [], {}
    for j, name in enumerate(CMAPSS_CHANNELS):
        x = values[:, j]
        distinct = len(np.unique(x))
        if distinct < MIN_DISTINCT:
            dropped[name] = (f"{distinct} distinct value(s) in training: constant, or "
                             "flickering in its last printed digit")
            continue
        corr = float(np.corrcoef(x, rul)[0, 1])
        if abs(corr) < MIN_ABS_CORR:
            dropped[name] = f"|corr with capped RUL| = {abs(corr):.3f} < {MIN_ABS_CORR}: noise"
            continue
        kept.append(name)
    return kept, dropped


def feature_specs(kept: list[str]) -> list[FeatureSpec]:
    specs = []
    for ch in kept:
        unit = SENSORS[ch][0]
        for fn in FEATURE_FNS:
            specs.append(FeatureSpec(name=f"{ch}.{fn}", fn=fn, inputs=[ch],
                                     unit=f"{unit}/cycle" if fn == "slope" else unit))
    return specs


def make_estimator(hp: dict[str, Any]) -> Any:
    if hp["learner"] == "logreg":
        return Pipeline([
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=hp["C"], max_iter=5000, random_state=c.SEED)),
        ])
    if hp["learner"] == "hgb":
        kw = {k: v for k, v in hp.items() if k != "learner"}
        return HistGradientBoostingClassifier(early_stopping=False, random_state=c.SEED, **kw)
    raise ValueError(f"unknown learner {hp['learner']!r}")


def _training_set(data_root: Path) -> tuple[list[FeatureSpec], dict[str, str], Frames,
                                             np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Features, dropped channels, training windows, labels and validation folds."""
    train_recs = read_recordings(data_root / TRAIN_FILE, "cmapss")
    kept, dropped = select_channels(train_recs)
    specs = feature_specs(kept)
    tr = featurize(train_recs, specs, size=WINDOW, hop=HOP)
    y = (tr.labels["rul"] <= HORIZON).astype(np.int64)
    folds = list(GroupKFold(n_splits=FOLDS).split(tr.X, y, groups=tr.asset))
    return specs, dropped, tr, y, folds


def out_of_fold(card: ModelCard, data_root: Path) -> c.OutOfFold:
    """The out-of-fold scores ``fit`` computed for ``card`` (its recorded hyper-parameters,
    the same folds), rebuilt from the training data under ``data_root``."""
    specs, _, tr, y, folds = _training_set(data_root)
    if [s.name for s in specs] != card.feature_names:
        raise ValueError(f"{card.name}: the training data give other features than the card")
    make = partial(make_estimator, card.training["hyperparameters"])
    return c.OutOfFold(y, c.grouped_oof(make, tr.X, y, folds), folds, VALIDATION)


def fit(models_root: Path | None = None, *, search: bool = True) -> c.Trained:
    started = time.perf_counter()
    root = Path(models_root) if models_root is not None else c.default_models_root()
    data_root = c.data_root(root)
    test_recs = read_recordings(data_root / TEST_FILE, "cmapss", truth=data_root / TRUTH_FILE)
    specs, dropped, tr, y, folds = _training_set(data_root)
    te = featurize(test_recs, specs, size=WINDOW, hop=HOP)

    search_results: Any
    if search:
        hp, search_results = c.search_average_precision(NAME, CANDIDATES, make_estimator,
                                                        tr.X, y, folds)
    else:
        hp, search_results = c.recorded_search(NAME, default=dict(CANDIDATES[1]))
    fitted = c.fit_classifier(partial(make_estimator, hp), tr.X, y, folds,
                              validation=VALIDATION, target_precision=TARGET_PRECISION)
    threshold, at_threshold, oof = fitted.threshold, fitted.at_threshold, fitted.oof
    # Test metrics from the exported file itself (what `linewatch evaluate` runs).
    p_test = fitted.scores(te.X)

    metrics = {f"test_{k}": v for k, v in _test_metrics(te, p_test, threshold).items()}
    metrics |= binary_metrics(y, oof, threshold, groups=tr.asset, prefix="cv_window_",
                              group_name="engines")
    card = c.make_card(
        fitted, tr.X, specs, started=started,
        name=NAME,
        version=VERSION,
        description=(
            f"Probability that a turbofan engine (C-MAPSS FD001: one operating condition, "
            f"HPC degradation) fails within the next {HORIZON} cycles, from the last "
            f"{WINDOW} cycles of its sensors."
        ),
        input=InputSpec(
            format="cmapss",
            channels=[ChannelSpec(name=ch, unit=SENSORS[ch][0], description=SENSORS[ch][1])
                      for ch in CMAPSS_CHANNELS],
            rate_hz=None,
            time_unit="cycle",
        ),
        window=WindowSpec(size=WINDOW, hop=HOP),
        output=OutputSpec(
            name=fitted.output,
            index=fitted.index,
            meaning=f"probability that the engine fails within the next {HORIZON} cycles",
            horizon=HORIZON,
        ),
        threshold=ThresholdSpec(
            value=threshold,
            method=(
                f"lowest threshold whose precision on out-of-fold predictions of "
                f"{FOLDS}-fold cross-validation grouped by engine unit reaches "
                f"{TARGET_PRECISION} (out-of-fold precision {at_threshold['precision']}, "
                f"recall {at_threshold['recall']}); halfway to the next lower score"
            ),
        ),
        data_sha256=c.data_sha256(data_root, [TRAIN_FILE]),
        metrics=c.metrics_dict(metrics),
        training={
            "data": {"train": TRAIN_FILE, "test": TEST_FILE, "test_truth": TRUTH_FILE},
            "evaluation_data_sha256": c.data_sha256(data_root, [TEST_FILE, TRUTH_FILE]),
            "label": f"window positive when the RUL at its newest cycle is <= {HORIZON} "
                     "(train: RUL = last cycle - cycle; test: from RUL_FD001)",
            "dropped_channels": dropped,
            "channel_rules": f"drop < {MIN_DISTINCT} distinct values; drop |corr with "
                             f"min(RUL, {RUL_CAP})| < {MIN_ABS_CORR}",
            "windows": {"train": len(tr), "test": len(te),
                        "train_positive": int(y.sum()),
                        "test_positive": int((te.labels["rul"] <= HORIZON).sum())},
            "cv": {"folds": FOLDS, "grouped_by": "engine unit",
                   "splitter": "sklearn GroupKFold"},
            "hyperparameters": hp,
            "search": search_results,
            "search_run": search,
            "threshold_selection": {"target_precision": TARGET_PRECISION, **at_threshold},
            "oof_first_alert": _first_alerts(tr, oof, threshold),
            "test_false_alerts": _false_alerts(te, p_test, threshold),
        },
    )
    return c.save_model(root, card, fitted, _card_md, X_test=te.X, started=started)


def _first_alerts(tr: Frames, oof: np.ndarray, threshold: float) -> dict[str, Any]:
    """When each training engine's first out-of-fold alert came, in cycles before failure:
    the lead time a maintenance planner would have had, and how many alerts came too
    early (more than twice the horizon before failure)."""
    lead = []
    for unit in np.unique(tr.asset):
        m = tr.asset == unit
        hit = np.flatnonzero(oof[m] >= threshold)
        lead.append(float(tr.labels["rul"][m][hit[0]]) if len(hit) else -1.0)
    lead_a = np.array(lead)
    alerted = lead_a[lead_a >= 0]
    return {
        "units": len(lead_a),
        "units_never_alerted": int(np.sum(lead_a < 0)),
        "lead_cycles_median": float(np.median(alerted)) if len(alerted) else None,
        "lead_cycles_p10_p90": [round(float(v), 1) for v in np.percentile(alerted, [10, 90])]
        if len(alerted) else None,
        "units_alerted_early": int(np.sum(alerted > 2 * HORIZON)),
        "early_means": f"first alert more than {2 * HORIZON} cycles before failure",
    }


def _false_alerts(te: Frames, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """How far from failure the test windows were that alerted too early."""
    rul = te.labels["rul"][(p >= threshold) & (te.labels["rul"] > HORIZON)]
    return {
        "false_alerts": len(rul),
        "within_2h": int(np.sum(rul <= 2 * HORIZON)),
        "median_rul": float(np.median(rul)) if len(rul) else None,
        "max_rul": float(rul.max()) if len(rul) else None,
    }


def _test_metrics(te: Frames, p: np.ndarray, threshold: float) -> dict[str, MetricValue]:
    return report_metrics("cmapss", te.labels, p, threshold=threshold, horizon=HORIZON,
                          asset=te.asset, end=te.end, last=te.last)


def _card_md(card: ModelCard) -> str:
    m, t = card.metrics, card.training
    fa = t["oof_first_alert"]
    fa_test = t["test_false_alerts"]
    kept = sorted({f.inputs[0] for f in card.features},
                  key=lambda ch: CMAPSS_CHANNELS.index(ch))
    summary = f"""
Every cycle, for every engine that has run at least {WINDOW} cycles, the model scores the
last {WINDOW} cycles and gives the probability that the engine fails within the next
{HORIZON} cycles. It uses {len(kept)} of the 24 channels ({", ".join(kept)}); for each it
takes the window's mean, newest value and least-squares slope. The other channels are
dropped by rules applied to the training file (reasons in `training.dropped_channels`):
constant or flickering in the last digit (fewer than {MIN_DISTINCT} distinct values):
{", ".join(k for k, v in t["dropped_channels"].items() if "distinct" in v)}; noise around
the single operating point (|correlation with capped RUL| < {MIN_ABS_CORR}):
{", ".join(k for k, v in t["dropped_channels"].items() if "corr" in v)}.
Learner: `{t["hyperparameters"]["learner"]}` ({"standardised features, logistic regression"
if t["hyperparameters"]["learner"] == "logreg" else "histogram gradient boosting"}), chosen
with the other candidates in `training.search` by out-of-fold average precision in
{FOLDS}-fold cross-validation grouped by engine unit.
"""
    performance = f"""
`test_*` rows: `test_FD001` scored window by window with `RUL_FD001` as truth (a window is
positive when the engine's true RUL at its newest cycle is at most {HORIZON}); the window
intervals resample whole engines, because the windows of one engine are far from
independent. `test_last_window_*` rows score only each test engine's newest window, the
point the C-MAPSS benchmark evaluates. `cv_*` rows are the out-of-fold predictions on
`train_FD001` that chose the threshold.

Reading the numbers. Ranking is nearly perfect (window ROC AUC
{m["test_window_roc_auc"].value:.3f}): the model orders engines by closeness to failure
very well. Precision and recall at the threshold are lower window by window
(F1 {m["test_window_f1"].value:.3f}) than on each engine's newest window
(F1 {m["test_last_window_f1"].value:.3f}) because the windows near the {HORIZON}-cycle
boundary are the hard ones: an engine at RUL 31-40 looks like one
at RUL 25-30, and the label flips at a sharp line the sensors do not draw. Of the
{fa_test["false_alerts"]} test windows alerted with a true RUL above {HORIZON},
{fa_test["within_2h"]} had at most {2 * HORIZON} cycles left (median true RUL
{fa_test["median_rul"]}): near misses, not alarms on healthy engines. Precision on the test windows
({m["test_window_precision"].value:.3f}) is below the {TARGET_PRECISION} targeted out of
fold ({m["cv_window_precision"].value:.3f}): plan on the test figure, not the target.

Lead time, out of fold on the training engines: the first alert came a median of
{fa["lead_cycles_median"]} cycles before failure (10-90 % range {fa["lead_cycles_p10_p90"]}),
{fa["units_alerted_early"]} of {fa["units"]} engines alerted more than {2 * HORIZON}
cycles early and {fa["units_never_alerted"]} never alerted.

Published comparisons: the usual FD001 benchmark is RUL regression (RMSE 12-16 for strong
models, RUL capped at 125); this model does not predict RUL, its sibling
`cmapss_fd001_rul` does, on the same windows and features (see its CARD.md). We know of no
verified
published figure for this exact window-level "fails within {HORIZON} cycles" task, so the
test intervals above are the honest reference.
"""
    limits = f"""
- **Other engines, operating conditions or faults.** FD001 is one simulated engine type
  at one operating condition (sea level) with one fault mode (HPC degradation). The model
  has not seen FD002-FD004 (six conditions, fan faults) or any real engine. Features
  outside their training range (`features[].range`) mean the model is extrapolating; the
  agent's quality monitor flags them.
- **Young engines.** No score before an engine has {WINDOW} cycles.
- **The horizon edge.** Near RUL {HORIZON} the label is a convention, not physics; treat
  scores between about 0.2 and 0.8 as "approaching", not as a yes/no.
- **Precision in the field.** Precision depends on how often engines are near failure.
  FD001 test engines spend {100 * t["windows"]["test_positive"] / t["windows"]["test"]:.1f} %
  of their windows in the last {HORIZON} cycles; a fleet that is rarely near failure will
  see a lower share of right alerts at the same threshold.
- **Simulation.** C-MAPSS sensors carry simulated noise; real sensor faults (drop-outs,
  stuck values, recalibrations) are not in the training data.
"""
    return c.render_card_md(card, summary=summary, performance=performance, limits=limits,
                            metric_names=[
                                "test_window_roc_auc", "test_window_precision",
                                "test_window_recall", "test_window_f1",
                                "test_last_window_roc_auc", "test_last_window_precision",
                                "test_last_window_recall", "test_last_window_f1",
                                "cv_window_roc_auc", "cv_window_precision",
                                "cv_window_recall", "cv_window_f1"])
