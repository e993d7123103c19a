"""Bringing your own model: ``linewatch features`` and ``linewatch card``.

:func:`feature_table` turns a data file into the rows the agent will feed the model: the
agent's own :class:`agent.windows.Windower` and :class:`agent.features.FeatureExtractor`
(through :func:`linewatch.training.frames.featurize`), so a model trained anywhere on those
rows sees at training time what it sees on the gateway.

:func:`card_for_export` writes the complete card for an ONNX file trained elsewhere on such
rows: sha256 of the file and the data, each feature's training range and reference
statistics (the envelope monitor's centre and scale), the alert threshold (chosen for a
target precision on held-out data, or ``1 - horizon / cap`` for a remaining life), the
probabilities' calibration on the held-out data, the monitors' calibration (``linewatch
calibrate``'s), metrics on the held-out data and self-test rows scored by onnxruntime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from contract.card import (
    MODEL_FILE,
    Metric,
    ModelCard,
    OutputSpec,
    ProbabilityCalibration,
    ThresholdSpec,
    sha256_file,
)
from contract.errors import CardError
from linewatch.exports import open_export
from linewatch.spec import CardSpec, Truth
from linewatch.tables import read_data
from linewatch.training.frames import Frames, featurize

__all__ = ["card_for_export", "feature_table", "frames_of", "positives", "write_model_dir"]

logger = logging.getLogger(__name__)

_FOLDS = 5


def frames_of(spec: CardSpec, data: str | Path) -> Frames:
    """Every complete window of ``data`` as feature rows, in the spec's feature order."""
    recs = read_data(spec.input, data)
    return featurize(recs, spec.features, size=spec.window.size, hop=spec.window.hop)


def feature_table(spec: CardSpec, data: str | Path) -> dict[str, np.ndarray]:
    """Columns ``asset``, ``window_end`` (in the data's time unit), one float32 column per
    feature in card order, and each label of the data at the window's newest sample."""
    fr = frames_of(spec, data)
    cols: dict[str, np.ndarray] = {"asset": fr.asset.astype(str), "window_end": fr.end}
    for j, f in enumerate(spec.features):
        cols[f.name] = fr.X[:, j]
    for k, v in fr.labels.items():
        if k not in cols:
            cols[k] = v
    return cols


def positives(truth: Truth, labels: dict[str, np.ndarray], horizon: int | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Which windows are positive, and which have a known truth at all (NaN: unknown)."""
    if truth.column not in labels:
        raise CardError(f"truth: the data have no label {truth.column!r} (labels: "
                        f"{', '.join(sorted(labels)) or 'none'}; a table names them in "
                        "input.table.labels)")
    v = labels[truth.column]
    known = ~np.isnan(v)
    y = (v <= (horizon or 0)) if truth.life is not None else (v == 1)
    return y & known, known


def card_for_export(model: str | Path, spec: CardSpec, data: str | Path,
                    holdout: str | Path | None = None) -> tuple[ModelCard, list[str]]:
    """The card for ONNX file ``model``, trained on the windows of ``data``; ``holdout``:
    data the model did not train on, for the threshold, the calibration and the metrics.
    Returns the card and what was done, in words, for the person running the command."""
    from linewatch.calibration import calibrate
    from linewatch.cards import build_card
    from linewatch.training.metrics import report_metrics

    said: list[str] = []
    model, data = Path(model), Path(data)
    ex = open_export(model, n_features=len(spec.features), kind=spec.output.kind,
                     output=spec.output.name, index=spec.output.index)
    said.append(f"model   {model.name}: input {ex.input!r}, score from output {ex.output!r} "
                f"column {ex.index}" + (" (ZipMap)" if ex.zipmap else ""))
    train = frames_of(spec, data)
    output = _output(spec, ex.output, ex.index)
    raw = ex.run(train.X)
    _check_values(model, ex.output, output, raw)
    scores = np.asarray(output.to_score(raw), dtype=np.float64)
    said.append(f"train   {data.name}: {len(train)} windows of {len(np.unique(train.asset))} "
                "assets")

    held = None if holdout is None else frames_of(spec, holdout)
    p_held = None if held is None else np.asarray(output.to_score(ex.run(held.X)))
    threshold, chosen = _threshold(spec, output, held, p_held)
    said.append(f"alert   score >= {threshold.value:.6g}: {threshold.method}")
    calibration = _calibration(spec, output, held, p_held, holdout)
    if calibration is not None:
        said.append(f"probabilities: {calibration.note}; "
                    + ("calibrated" if calibration.calibrated else "NOT calibrated: the agent "
                       "will make no performance estimate"))
    elif output.kind == "rul":
        said.append("probabilities: none (a remaining life); the agent's estimate says "
                    "uncalibrated")

    fmt = spec.input.format or "table"
    metrics: dict[str, Metric] = {}
    if held is not None and p_held is not None:
        labels = _truth_labels(spec, held.labels)
        found = report_metrics(fmt, labels, p_held, threshold=threshold.value,
                               horizon=output.horizon, asset=held.asset, end=held.end,
                               last=held.last,
                               rul_cap=output.cap if output.kind == "rul" else None)
        metrics = {f"holdout_{k}": Metric(value=v.value, ci95=v.ci95, n=v.n, note=v.note)
                   for k, v in found.items() if np.isfinite(v.value)
                   and (v.ci95 is None or np.all(np.isfinite(v.ci95)))}
        if found:
            said.append("metrics on the held-out data: " + ", ".join(
                f"{k} {v.value:.4f}" for k, v in sorted(found.items())
                if k.endswith(("f1", "precision", "recall", "rmse"))))
    files = [data] + ([Path(holdout)] if holdout is not None else [])
    card = build_card(
        model, name=spec.name, version=spec.version,
        description=spec.description or output.meaning, input=spec.input,
        window=spec.window, features=spec.features, output=output, threshold=threshold,
        X=train.X, scores=scores, scorer=ex.run,
        data_sha256={f.name: sha256_file(f) for f in files},
        metrics=metrics,
        training={"made_by": "linewatch card", "data": {"train": data.name, **(
            {"holdout": Path(holdout).name} if holdout is not None else {})},
            "truth": None if spec.truth is None else spec.truth.model_dump(exclude_none=True),
            "threshold_selection": chosen, "windows": len(train)},
        calibration=calibration,
    )
    lives = read_data(spec.input, data)
    per_life = [scores[train.asset == r.asset] for r in lives]
    card = card.model_copy(update={"reference": card.reference.model_copy(
        update={"monitoring": calibrate(card, lives, per_life)})})
    said.append(f"monitors calibrated on {len(lives)} assets of {data.name}")
    return ModelCard.model_validate(card.model_dump()), said


def _output(spec: CardSpec, name: str, index: int) -> OutputSpec:
    o = spec.output
    if o.meaning:
        meaning = o.meaning
    elif o.kind == "rul":
        meaning = (f"remaining useful life in {o.unit or '?'}; score = 1 - min(RUL, "
                   f"{o.cap:g}) / {o.cap:g}" if o.cap else "remaining useful life")
    else:
        within = f" within {o.horizon} {spec.input.time_unit}s" if o.horizon else ""
        meaning = f"probability of a failure{within}"
    out: OutputSpec = _validated(OutputSpec, "output", name=name, index=index,
                                 meaning=meaning, horizon=o.horizon, kind=o.kind, unit=o.unit,
                                 cap=o.cap)
    return out


def _validated(cls: Any, where: str, **fields: Any) -> Any:
    from pydantic import ValidationError

    from contract.card import one_line

    try:
        return cls(**fields)
    except ValidationError as exc:
        raise CardError(f"spec: {where}.{one_line(exc)}") from None


def _check_values(model: Path, name: str, output: OutputSpec, raw: np.ndarray) -> None:
    if not np.all(np.isfinite(raw)):
        raise CardError(f"{model}: output {name!r} gives NaN or infinity on training rows")
    lo, hi = float(raw.min()), float(raw.max())
    if output.kind == "probability" and (lo < -1e-6 or hi > 1 + 1e-6):
        raise CardError(f"{model}: output {name!r} ranges from {lo:.4g} to {hi:.4g}, no "
                        "probability: add a sigmoid (or softmax) at the end of the exported "
                        "graph, or set output.kind: rul with unit, horizon and cap for a "
                        "remaining life")


def _truth_labels(spec: CardSpec, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The data's labels under the names ``report_metrics`` reads for a table."""
    if spec.truth is None or spec.truth.column not in labels:
        return {}
    v = labels[spec.truth.column]
    return {"rul": v} if spec.truth.life is not None else {"failure": v}


def _threshold(spec: CardSpec, output: OutputSpec, held: Frames | None,
               p: np.ndarray | None) -> tuple[ThresholdSpec, dict[str, Any]]:
    if output.kind == "rul":
        value = output.rul_threshold or 0.0
        return ThresholdSpec(value=value, method=(
            f"by definition: alert when the predicted life is at most {output.horizon} "
            f"{output.unit} (score 1 - {output.horizon} / {output.cap:g})")), {}
    if spec.threshold is not None:
        return ThresholdSpec(value=spec.threshold, method="fixed in the spec"), {}
    if held is None or p is None or spec.truth is None:
        raise CardError("threshold: target_precision is met on held-out data: give "
                        "--holdout FILE (windows the model did not train on), or set "
                        "threshold in the spec")
    from linewatch.training.common import choose_threshold

    y, known = positives(spec.truth, held.labels, output.horizon)
    if not y.any() or y[known].all():
        raise CardError(f"threshold: the held-out data have {int(y.sum())} positive and "
                        f"{int((~y & known).sum())} negative windows; they need both")
    value, achieved = choose_threshold(y[known], p[known],
                                       target_precision=spec.target_precision)
    return ThresholdSpec(value=value, method=(
        f"{achieved['rule']} on {int(known.sum())} held-out windows (precision "
        f"{achieved['precision']}, recall {achieved['recall']})")), achieved


def _calibration(spec: CardSpec, output: OutputSpec, held: Frames | None,
                 p: np.ndarray | None, holdout: str | Path | None
                 ) -> ProbabilityCalibration | None:
    if output.kind != "probability" or held is None or p is None or spec.truth is None:
        return None
    from linewatch.probabilities import measure

    y, known = positives(spec.truth, held.labels, output.horizon)
    assets = held.asset[known]
    groups = np.array_split(np.unique(assets), min(_FOLDS, len(np.unique(assets))))
    if len(groups) < 2:  # one asset: contiguous blocks of its windows stand in for assets
        idx = np.array_split(np.arange(len(assets)), _FOLDS)
        folds = [(np.setdiff1d(np.arange(len(assets)), i), i) for i in idx]
    else:
        folds = [(np.flatnonzero(~np.isin(assets, g)), np.flatnonzero(np.isin(assets, g)))
                 for g in groups]
    return measure(y[known].astype(np.float64), p[known], folds,
                   evaluated_on=f"held-out data {Path(str(holdout)).name}: "
                   f"{int(known.sum())} windows of {len(np.unique(assets))} assets")


def write_model_dir(out: str | Path, model: str | Path, card: ModelCard) -> Path:
    """``out/model.onnx`` (a copy) and ``out/card.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(Path(model).read_bytes())
    (out / "card.json").write_text(card.to_json())
    return out
