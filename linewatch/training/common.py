"""What every model of the factory shares: paths, seeds, the hyper-parameter search, fitting
and ONNX export (:func:`fit_classifier`, :func:`fit_export`), scoring with the ONNX
reference evaluator, thresholds, the model card (:func:`make_card`, through
:func:`linewatch.cards.build_card`, the one path every card takes) and writing the model
directory (``model.onnx``, ``card.json``, ``CARD.md``).

Determinism: every learner gets ``random_state=SEED`` and runs single-threaded
(``linewatch.training.fit`` limits BLAS and OpenMP to one thread); metrics are
rounded to :data:`metrics.DIGITS` decimals and written with sorted keys, so training twice
on the same data on one machine writes the same bytes under ``metrics``. Another CPU or BLAS
kernel may move a float's last digits; :func:`linewatch.cards.card_differences` is the
comparison that holds across machines.

This module needs the ``train`` extra (scikit-learn, skl2onnx, onnx) and never imports
onnxruntime: the card's expected self-test outputs and its metrics come from
``onnx.reference.ReferenceEvaluator`` running the exported file itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.metrics import average_precision_score

from contract.card import (
    CARD_FILE,
    MODEL_FILE,
    CardError,
    FeatureSpec,
    InputSpec,
    Metric,
    ModelCard,
    OutputSpec,
    ProbabilityCalibration,
    ThresholdSpec,
    WindowSpec,
    sha256_file,
)
from linewatch.cards import INPUT_NAME, build_card, model_scores
from linewatch.probabilities import card_section, measure
from linewatch.training.metrics import MetricValue

__all__ = [
    "INPUT_NAME",
    "PROBA_OUTPUT",
    "REGRESSION_OUTPUT",
    "SEED",
    "TARGET_OPSET",
    "Fitted",
    "OutOfFold",
    "Trained",
    "choose_threshold",
    "data_root",
    "data_sha256",
    "default_models_root",
    "export_onnx",
    "fit_classifier",
    "fit_export",
    "grouped_oof",
    "make_card",
    "metrics_dict",
    "metrics_table",
    "package_versions",
    "probability_calibration",
    "recorded_search",
    "render_card_md",
    "save_model",
    "search_average_precision",
    "write_model",
]

logger = logging.getLogger(__name__)

SEED = 0
PROBA_OUTPUT = "probabilities"
REGRESSION_OUTPUT = "variable"  # skl2onnx's name for a regressor's output, shape (n, 1)
# Pinned so a newer skl2onnx does not silently raise the opset a gateway's onnxruntime needs.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def default_models_root() -> Path:
    """The repository's ``models/`` directory (this file is ``linewatch/training/common.py``)."""
    return Path(__file__).resolve().parents[2] / "models"


def data_root(models_root: Path | None = None) -> Path:
    """``<models_root>/data`` when it exists, else the repository's ``models/data``: a model
    can be trained into a scratch directory from the shipped data."""
    if models_root is not None and (Path(models_root) / "data").is_dir():
        return Path(models_root) / "data"
    return default_models_root() / "data"


def data_sha256(root: Path, files: Sequence[str]) -> dict[str, str]:
    """sha256 of each data file, keyed by its path under the data root."""
    return {f: sha256_file(root / f) for f in files}


def package_versions() -> dict[str, str]:
    import skl2onnx

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
    }


def recorded_search(name: str, default: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The hyper-parameters the last search chose and its results, from the shipped card;
    ``default`` and no results when there is no shipped card yet (a fresh factory)."""
    path = default_models_root() / name / CARD_FILE
    try:
        training = ModelCard.load(path.parent).training
        return dict(training["hyperparameters"]), training.get("search")
    except (CardError, KeyError, TypeError, ValueError):
        logger.warning("%s: no recorded hyper-parameters in %s; using defaults", name, path)
        return dict(default), "none recorded; defaults used"


# --- learners and scores -----------------------------------------------------------------


def grouped_oof(
    make: Callable[[], Any],
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    method: str = "predict_proba",
) -> np.ndarray:
    """Out-of-fold predictions: each row scored by a model that never saw its fold."""
    oof = np.full(len(y), np.nan)
    for fit_idx, val_idx in folds:
        model = make().fit(X[fit_idx], y[fit_idx])
        out = getattr(model, method)(X[val_idx])
        oof[val_idx] = out[:, 1] if out.ndim == 2 else out
    return oof


def search_average_precision(
    name: str,
    candidates: Sequence[dict[str, Any]],
    make: Callable[[dict[str, Any]], Any],
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The candidate hyper-parameters with the best out-of-fold average precision (the first
    of ties wins), and every candidate's result, as the card's ``training.search``."""
    results: list[dict[str, Any]] = []
    for hp in candidates:
        oof = grouped_oof(partial(make, hp), X, y, folds)
        ap = round(float(average_precision_score(y, oof)), 4)
        results.append({"hyperparameters": hp, "oof_average_precision": ap})
        logger.info("%s: %s -> AP %.4f", name, hp, ap)
    best = max(results, key=lambda r: float(r["oof_average_precision"]))
    return dict(best["hyperparameters"]), results


@dataclass(frozen=True)
class Fitted:
    """A learner fitted on every training row and exported, with what its card needs.

    ``oof``: the out-of-fold scores ``threshold`` was chosen on (``at_threshold``: what it
    achieved there, empty for a threshold set by definition). ``train_scores``: the
    learner's own scores on the training rows, or ``None`` when the card is to take them
    from the exported file (:func:`linewatch.cards.build_card`'s ``scores``).
    ``calibration``: how far a classifier's out-of-fold scores are probabilities (the
    card's ``calibration``; ``None`` for a regressor).
    """

    estimator: Any
    model: bytes
    output: str
    index: int
    threshold: float
    at_threshold: dict[str, Any]
    oof: np.ndarray
    train_scores: np.ndarray | None
    calibration: ProbabilityCalibration | None = None

    def scores(self, X: np.ndarray) -> np.ndarray:
        """The exported file's scores for rows ``X`` (ONNX reference evaluator)."""
        return model_scores(self.model, X, self.output, self.index)


def fit_export(
    make: Callable[[], Any],
    X: np.ndarray,
    y: np.ndarray,
    *,
    oof: np.ndarray,
    threshold: float,
    at_threshold: dict[str, Any] | None = None,
    classifier: bool = True,
    onnx_train_scores: bool = False,
) -> Fitted:
    """Fit ``make()`` on all of ``X`` and export it.

    The card's training scores come from scikit-learn (equal to the exported file's to
    1e-6, and much faster), or with ``onnx_train_scores`` from the exported file itself;
    the self-test's expected outputs always come from the exported file.
    """
    estimator = make().fit(X, y)
    model = export_onnx(estimator, X.shape[1], classifier=classifier)
    output, index = (PROBA_OUTPUT, 1) if classifier else (REGRESSION_OUTPUT, 0)
    train_scores = None
    if not onnx_train_scores:
        train_scores = (estimator.predict_proba(X)[:, 1] if classifier
                        else estimator.predict(X))
    return Fitted(estimator=estimator, model=model, output=output, index=index,
                  threshold=threshold, at_threshold=dict(at_threshold or {}), oof=oof,
                  train_scores=train_scores)


def fit_classifier(
    make: Callable[[], Any],
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    validation: str,
    target_precision: float | None = None,
    onnx_train_scores: bool = False,
) -> Fitted:
    """Grouped out-of-fold predictions, the alert threshold they give
    (:func:`choose_threshold`), how far they are probabilities
    (:func:`probability_calibration`; ``validation`` names the folds in words), then
    :func:`fit_export`."""
    oof = grouped_oof(make, X, y, folds)
    threshold, at_threshold = choose_threshold(y, oof, target_precision=target_precision)
    fitted = fit_export(make, X, y, oof=oof, threshold=threshold, at_threshold=at_threshold,
                        onnx_train_scores=onnx_train_scores)
    calibration = probability_calibration(OutOfFold(y, oof, list(folds), validation))
    return dataclasses.replace(fitted, calibration=calibration)


@dataclass(frozen=True)
class OutOfFold:
    """A classifier's out-of-fold scores ``oof`` of its training rows (labels ``y``), from
    the validation ``folds`` (train indices, held-out indices) named in words by
    ``validation``: what its threshold and its probability calibration are measured on.
    Each classifier's module rebuilds them for a shipped card with ``out_of_fold``."""

    y: np.ndarray
    oof: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    validation: str


def probability_calibration(oof: OutOfFold) -> ProbabilityCalibration:
    """The card's ``calibration`` from out-of-fold scores
    (:func:`linewatch.probabilities.measure`; a map is cross-fitted over the same folds)."""
    return measure(oof.y, oof.oof, oof.folds,
                   evaluated_on=f"out-of-fold predictions of {oof.validation} "
                                f"({len(oof.y)} windows)")


def export_onnx(estimator: Any, n_features: int, *, classifier: bool = True) -> bytes:
    """Serialise with skl2onnx: float32 input ``features`` (n, n_features); a classifier's
    probabilities come out as the plain (n, 2) float tensor ``probabilities`` (no ZipMap)."""
    options = {"zipmap": False} if classifier else None
    with _integer_missing_flags():
        onx = convert_sklearn(
            estimator,
            name="linewatch",
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=TARGET_OPSET,
            options={type(_final_step(estimator)): options} if options else None,
        )
    onx.doc_string = ""
    return bytes(onx.SerializeToString())


@contextmanager
def _integer_missing_flags() -> Iterator[None]:
    """Work around skl2onnx 1.20 with onnx >= 1.17: its HistGradientBoosting converter
    passes Python/numpy booleans as ``nodes_missing_value_tracks_true``, which onnx's
    ``make_attribute`` now rejects ("Expected an int, got a boolean"). Cast them to int for
    the duration of one conversion; harmless where the bug is fixed."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(
                kwargs["nodes_missing_value_tracks_true"])
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def choose_threshold(
    y: np.ndarray, p: np.ndarray, *, target_precision: float | None = None
) -> tuple[float, dict[str, Any]]:
    """An alert threshold from validation scores, and what it achieved there.

    With ``target_precision``: the lowest threshold whose precision reaches it (the most
    recall at that precision), falling back to the F1-best one if none does. Without: the
    F1-best threshold. The threshold sits halfway between the last score alerted and the
    next lower one, so float noise at export cannot flip a validation decision.

    >>> y = np.array([0, 0, 1, 0, 1, 1]); p = np.array([.1, .2, .3, .4, .8, .9])
    >>> choose_threshold(y, p)[0], choose_threshold(y, p, target_precision=1.0)[0]
    (0.25, 0.6)
    """
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    k = np.arange(1, len(ys) + 1)
    # Only cut between distinct scores: a threshold cannot split tied rows.
    distinct = np.r_[ps[1:] != ps[:-1], True]
    precision = tp / k
    recall = tp / max(1, ys.sum())
    f1 = 2 * tp / (k + ys.sum())
    ok = distinct & (precision >= target_precision) if target_precision is not None else None
    if ok is not None and ok.any():
        i = int(np.flatnonzero(ok)[-1])
        how = f"lowest threshold with validation precision >= {target_precision}"
    else:
        i = int(np.argmax(np.where(distinct, f1, -1)))
        how = "F1-best validation threshold"
        if target_precision is not None:
            how = f"no threshold reaches precision {target_precision}; " + how
    nxt = ps[i + 1] if i + 1 < len(ps) else ps[i] - 1e-3
    thr = float(np.float32(round((ps[i] + nxt) / 2.0, 6)))
    achieved = {
        "precision": round(float(precision[i]), 4),
        "recall": round(float(recall[i]), 4),
        "f1": round(float(f1[i]), 4),
        "rule": how,
    }
    return thr, achieved


# --- writing the model directory ----------------------------------------------------------


def make_card(
    fitted: Fitted,
    X: np.ndarray,
    features: Sequence[FeatureSpec],
    *,
    started: float,
    name: str,
    version: str,
    description: str,
    input: InputSpec,
    window: WindowSpec,
    output: OutputSpec,
    threshold: ThresholdSpec,
    data_sha256: dict[str, str],
    metrics: dict[str, Metric],
    training: dict[str, Any],
) -> ModelCard:
    """The card of a factory run, through :func:`linewatch.cards.build_card` like any other:
    ``fitted``'s exported model and training scores on the training rows ``X``, and under
    ``training`` the seed, the package versions and the duration since ``started`` (a
    ``time.perf_counter()``) added to what the script records."""
    return build_card(
        fitted.model, name=name, version=version, description=description, input=input,
        window=window, features=features, output=output, threshold=threshold, X=X,
        scores=fitted.train_scores, data_sha256=data_sha256, metrics=metrics,
        calibration=fitted.calibration,
        training={**training, "seed": SEED, "packages": package_versions(),
                  "duration_s": round(time.perf_counter() - started, 1)},
    )


def metrics_dict(metrics: dict[str, MetricValue]) -> dict[str, Metric]:
    """Card form: metrics without a value are left out (JSON has no NaN), an interval
    with an undefined bound is none."""
    out = {}
    for name, m in sorted(metrics.items()):
        if not np.isfinite(m.value):
            continue
        ci = m.ci95 if m.ci95 is not None and all(np.isfinite(m.ci95)) else None
        out[name] = Metric(value=m.value, ci95=ci, n=m.n, note=m.note)
    return out


def metrics_table(metrics: dict[str, Metric], names: Sequence[str]) -> str:
    """A Markdown table of the named card metrics."""
    rows = ["| metric | value | 95 % CI | n | how |", "|---|---|---|---|---|"]
    for name in names:
        m = metrics.get(name)
        if m is None:
            continue
        ci = "-" if m.ci95 is None else f"{m.ci95[0]:.3f} - {m.ci95[1]:.3f}"
        rows.append(f"| `{name}` | {m.value:.3f} | {ci} | {m.n} | {m.note} |")
    return "\n".join(rows)


def write_model(
    model_dir: Path,
    model: bytes,
    card: ModelCard,
    card_md: Callable[[ModelCard], str],
) -> None:
    """Write ``model.onnx``, ``card.json`` and ``CARD.md`` (``card_md(card)``) into
    ``model_dir``; refuse, before writing anything, a card that is not ``model``'s."""
    digest = hashlib.sha256(model).hexdigest()
    if digest != card.sha256.model:
        raise CardError(f"card {card.name!r} is for model {card.sha256.model}, not {digest}")
    text, md = card.to_json(), card_md(card)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MODEL_FILE).write_bytes(model)
    (model_dir / CARD_FILE).write_text(text)
    (model_dir / "CARD.md").write_text(md)


def save_model(
    root: Path,
    card: ModelCard,
    fitted: Fitted,
    card_md: Callable[[ModelCard], str],
    *,
    X_test: np.ndarray,
    started: float,
) -> Trained:
    """Finish a run: write ``<root>/<name>/`` (:func:`write_model`) and return the run's
    artefacts; ``started`` (a ``time.perf_counter()``) times the log line."""
    write_model(root / card.name, fitted.model, card, card_md)
    logger.info("%s: wrote %s in %.1f s", card.name, root / card.name,
                time.perf_counter() - started)
    return Trained(model_dir=root / card.name, estimator=fitted.estimator, X_test=X_test,
                   card=card)


@dataclass(frozen=True)
class Trained:
    """What a training run leaves behind, for tests: the fitted scikit-learn estimator, the
    feature rows of the test data it was scored on, and the card as written."""

    model_dir: Path
    estimator: Any
    X_test: np.ndarray
    card: ModelCard


def render_card_md(card: ModelCard, *, summary: str, performance: str, limits: str,
                   metric_names: Sequence[str], extra: str = "") -> str:
    """CARD.md: the card in words, for people. The numbers all come from ``card``."""
    t = card.training
    feats = card.features
    fnames = ", ".join(f"`{f.name}`" for f in feats[:12])
    if len(feats) > 12:
        fnames += f" and {len(feats) - 12} more (all listed in `card.json`)"
    window = card.window
    unit = card.input.time_unit
    parts = [
        f"# {card.name} {card.version}",
        "",
        card.description,
        "",
        "## What it predicts",
        "",
        summary.strip(),
        "",
        f"- Output: `{card.output.name}[:, {card.output.index}]`, "
        f"{card.output.meaning}.",
        f"- Window: {window.size} samples, a new score every {window.hop} "
        f"(one sample = one {unit}).",
        f"- Inputs: {len(card.input.channels)} channel(s) in the order of "
        f"`card.json` `input.channels`; {len(feats)} features: {fnames}.",
        f"- Alert threshold: **{card.threshold.value:.4f}**, {card.threshold.method}.",
        "",
        "## How good it is",
        "",
        metrics_table(card.metrics, metric_names),
        "",
        performance.strip(),
        "",
        "## Where it must not be trusted",
        "",
        limits.strip(),
        "",
    ]
    if extra:
        parts += [extra.strip(), ""]
    if card.calibration is not None:
        parts += [card_section(card.calibration), ""]
    parts += [
        "## How it was built",
        "",
        f"- Hyper-parameters: `{json.dumps(t['hyperparameters'], sort_keys=True)}` "
        f"(seed {t['seed']}).",
        "- Data (sha256 in `card.json`): "
        + ", ".join(f"`models/data/{f}`" for f in card.sha256.data) + ".",
        f"- Packages: {', '.join(f'{k} {v}' for k, v in t['packages'].items())}.",
        f"- Model file sha256: `{card.sha256.model}`.",
        f"- Rebuild: `linewatch train {card.name}` (or `python models/train.py "
        f"{card.name}`); check: `linewatch evaluate models/{card.name} <data file>`.",
        "",
    ]
    return "\n".join(parts)
