"""Turbofan fleet, C-MAPSS FD001: remaining useful life, as a card-compatible score.

Same windows, channels and features as ``cmapss_fd001`` (the classifier), so one agent
feeds both. A gradient-boosted regressor learns ``score = 1 - min(RUL, 125) / 125``: 0 for
an engine with 125 or more cycles left, 1 for one failing now. The card's [0, 1] score and
threshold then carry a RUL estimate (``RUL = 125 * (1 - score)``) and the alert threshold
``1 - 30 / 125`` means "predicted RUL at most 30 cycles", so the agent needs no special case.
The 125-cycle cap is the C-MAPSS convention (degradation is invisible early on). Reported
on ``test_FD001`` + ``RUL_FD001`` against the published 12-16 RMSE.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import GroupKFold

from agent.datasets import CMAPSS_CHANNELS, read_recordings
from contract.card import ChannelSpec, InputSpec, ModelCard, OutputSpec, ThresholdSpec, WindowSpec
from linewatch.training import cmapss_fd001 as clf
from linewatch.training import common as c
from linewatch.training.frames import featurize
from linewatch.training.metrics import report_metrics, rmse

__all__ = ["NAME", "fit", "make_estimator"]

logger = logging.getLogger(__name__)

NAME = "cmapss_fd001_rul"
VERSION = "1.0.0"
RUL_CAP = 125
FOLDS = 5
OUTPUT = c.REGRESSION_OUTPUT

CANDIDATES: tuple[dict[str, Any], ...] = (
    {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 15, "min_samples_leaf": 50,
     "l2_regularization": 1.0},
    {"learning_rate": 0.1, "max_iter": 200, "max_leaf_nodes": 31, "min_samples_leaf": 20,
     "l2_regularization": 0.0},
    {"learning_rate": 0.05, "max_iter": 500, "max_leaf_nodes": 7, "min_samples_leaf": 100,
     "l2_regularization": 1.0},
)


def make_estimator(hp: dict[str, Any]) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(early_stopping=False, random_state=c.SEED, **hp)


def _score(rul: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 - np.minimum(rul, RUL_CAP) / RUL_CAP, dtype=np.float64)


def fit(models_root: Path | None = None, *, search: bool = True) -> c.Trained:
    started = time.perf_counter()
    root = Path(models_root) if models_root is not None else c.default_models_root()
    data_root = c.data_root(root)
    train_recs = read_recordings(data_root / clf.TRAIN_FILE, "cmapss")
    test_recs = read_recordings(data_root / clf.TEST_FILE, "cmapss",
                                truth=data_root / clf.TRUTH_FILE)
    kept, dropped = clf.select_channels(train_recs)
    specs = clf.feature_specs(kept)
    tr = featurize(train_recs, specs, size=clf.WINDOW, hop=clf.HOP)
    te = featurize(test_recs, specs, size=clf.WINDOW, hop=clf.HOP)
    target = _score(tr.labels["rul"])
    folds = list(GroupKFold(n_splits=FOLDS).split(tr.X, target, groups=tr.asset))
    capped = np.minimum(tr.labels["rul"], RUL_CAP)

    def cv_rmse(hp: dict[str, Any]) -> tuple[float, np.ndarray]:
        oof = c.grouped_oof(lambda: make_estimator(hp), tr.X, target, folds, method="predict")
        return rmse(capped, RUL_CAP * (1 - oof)), oof

    results: Any
    if search:
        results = []
        for hp in CANDIDATES:
            err, _ = cv_rmse(hp)
            results.append({"hyperparameters": hp, "oof_rul_rmse": round(err, 4)})
            logger.info("%s: %s -> RMSE %.3f", NAME, hp, err)
        hp = dict(min(results, key=lambda r: float(r["oof_rul_rmse"]))["hyperparameters"])
    else:
        hp, results = c.recorded_search(NAME, default=dict(CANDIDATES[0]))
    oof_err, oof = cv_rmse(hp)
    threshold = float(np.float32(1.0 - clf.HORIZON / RUL_CAP))
    fitted = c.fit_export(partial(make_estimator, hp), tr.X, target, oof=oof,
                          threshold=threshold, classifier=False)
    p_test = fitted.scores(te.X)

    metrics = {f"test_{k}": v for k, v in report_metrics(
        "cmapss", te.labels, p_test, threshold=threshold, horizon=clf.HORIZON,
        asset=te.asset, end=te.end, last=te.last, rul_cap=RUL_CAP).items()}
    cv = report_metrics("cmapss", tr.labels, oof, threshold=threshold, horizon=clf.HORIZON,
                        asset=tr.asset, end=tr.end, last=tr.last, rul_cap=RUL_CAP)
    metrics |= {f"cv_{k}": v for k, v in cv.items() if k.startswith("window_")}
    card = c.make_card(
        fitted, tr.X, specs, started=started,
        name=NAME,
        version=VERSION,
        description=(
            f"Remaining useful life of a turbofan engine (C-MAPSS FD001), as the score "
            f"1 - min(RUL, {RUL_CAP}) / {RUL_CAP}, from the last {clf.WINDOW} cycles of "
            f"its sensors."
        ),
        input=InputSpec(
            format="cmapss",
            channels=[ChannelSpec(name=ch, unit=clf.SENSORS[ch][0],
                                  description=clf.SENSORS[ch][1]) for ch in CMAPSS_CHANNELS],
            rate_hz=None,
            time_unit="cycle",
        ),
        window=WindowSpec(size=clf.WINDOW, hop=clf.HOP),
        output=OutputSpec(
            name=fitted.output,
            index=fitted.index,
            meaning=f"1 - min(RUL, {RUL_CAP}) / {RUL_CAP}: 0 = {RUL_CAP} or more cycles "
                    f"left, 1 = failing now; predicted RUL = {RUL_CAP} * (1 - score) "
                    "cycles (a regression, not a probability; may stray slightly outside "
                    "[0, 1])",
            horizon=clf.HORIZON,
        ),
        threshold=ThresholdSpec(
            value=threshold,
            method=f"by definition: 1 - {clf.HORIZON}/{RUL_CAP}, i.e. alert when the "
                   f"predicted RUL is at most {clf.HORIZON} cycles; not tuned",
        ),
        data_sha256=c.data_sha256(data_root, [clf.TRAIN_FILE]),
        metrics=c.metrics_dict(metrics),
        training={
            "task": "rul",
            "rul_cap": RUL_CAP,
            "data": {"train": clf.TRAIN_FILE, "test": clf.TEST_FILE,
                     "test_truth": clf.TRUTH_FILE},
            "evaluation_data_sha256": c.data_sha256(data_root,
                                                    [clf.TEST_FILE, clf.TRUTH_FILE]),
            "target": f"1 - min(RUL, {RUL_CAP}) / {RUL_CAP} at each window's newest cycle",
            "dropped_channels": dropped,
            "windows": {"train": len(tr), "test": len(te)},
            "cv": {"folds": FOLDS, "grouped_by": "engine unit",
                   "splitter": "sklearn GroupKFold", "oof_rul_rmse": round(oof_err, 4)},
            "hyperparameters": hp,
            "search": results,
            "search_run": search,
        },
    )
    return c.save_model(root, card, fitted, _card_md, X_test=te.X, started=started)


def _card_md(card: ModelCard) -> str:
    m = card.metrics
    rmse_last = m["test_last_window_rul_rmse"]
    ci = rmse_last.ci95 or (float("nan"), float("nan"))
    summary = f"""
Every cycle, for every engine with at least {clf.WINDOW} cycles, the model estimates the
remaining useful life. It reads the same {len(card.features)} features as
`cmapss_fd001` and returns `score = 1 - min(RUL, {RUL_CAP}) / {RUL_CAP}`; the predicted
RUL is `{RUL_CAP} * (1 - score)` cycles. Learner: histogram gradient boosting regression,
hyper-parameters chosen by out-of-fold RMSE in {FOLDS}-fold cross-validation grouped by
engine unit. The {RUL_CAP}-cycle cap is the usual C-MAPSS convention: early in life the
sensors show no degradation, so "125 or more" is all that can be said.
"""
    performance = f"""
`test_last_window_rul_rmse` is the C-MAPSS benchmark number: the RMSE over the 100 test
engines' last observed cycle, true RUL capped at {RUL_CAP}. **We are at
{rmse_last.value:.2f} cycles (95 % CI {ci[0]:.1f}-{ci[1]:.1f}),
against the 12-16 published for strong models.** Against the uncapped truth the error is
{m["test_last_window_rul_rmse_uncapped"].value:.2f}, because a few test engines have
more than {RUL_CAP} cycles left. `test_window_rul_rmse` averages over every test window
(bootstrap by engine), `cv_window_rul_rmse` over the out-of-fold training windows.
The `*_f1`, `*_precision` and `*_recall` rows treat "predicted RUL <= {clf.HORIZON}" as an
alert, for comparison with the `cmapss_fd001` classifier.
"""
    limits = f"""
- **Long-lived engines.** Any engine with more than {RUL_CAP} cycles left is reported at
  about {RUL_CAP}; the model cannot tell 130 from 300.
- **Not a probability.** The score is a rescaled RUL. Do not average it with the
  classifier's probabilities or read 0.5 as "even odds".
- **Other engines, conditions or faults.** Same limits as `cmapss_fd001`: one simulated
  engine type, one operating condition, one fault mode.
- **Error grows with RUL.** Near failure the estimate is tight; at 100 cycles out it can
  be off by tens of cycles.
"""
    return c.render_card_md(card, summary=summary, performance=performance, limits=limits,
                            metric_names=[
                                "test_last_window_rul_rmse",
                                "test_last_window_rul_rmse_uncapped",
                                "test_window_rul_rmse", "cv_window_rul_rmse",
                                "test_window_roc_auc", "test_window_f1",
                                "test_last_window_precision", "test_last_window_recall",
                                "test_last_window_f1"])
