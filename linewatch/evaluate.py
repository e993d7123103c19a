"""``linewatch evaluate``: score a recorded data file with a shipped ONNX model, the way the
gateway would, and report metrics with 95 % confidence intervals.

The path is the agent's own: :func:`agent.datasets.read_recordings` ->
:class:`agent.windows.Windower` -> :class:`agent.features.FeatureExtractor` ->
:class:`agent.inference.OnnxModel` (which checks the model's sha256 and runs its self-test).
The metrics are those of the model card (:func:`linewatch.training.metrics.report_metrics`),
so evaluating a card's test file reproduces the card's ``test_*`` metrics.

Truth: a C-MAPSS run-to-failure (train-format) file carries its own; a C-MAPSS test file
takes its ``RUL_*.txt`` as ``truth``; an AI4I file carries ``Machine failure``; IMS test-2
snapshots get the derived ``degraded`` label. Without truth, only counts and score
summaries are reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from contract.card import ModelCard, sha256_file
from linewatch.tables import read_data
from linewatch.training.frames import Frames, featurize
from linewatch.training.metrics import MetricValue, report_metrics

__all__ = ["evaluate", "format_report"]

_PER_ASSET_MAX = 12  # list per-asset scores only for files with few assets (IMS, AI4I)


def evaluate(
    model_dir: str | Path,
    data_file: str | Path,
    *,
    truth: str | Path | None = None,
    budget: tuple[float, float] = (1.0, 90.0),
    windows_per_day: float = 144.0,
    assets: int | None = None,
) -> dict[str, Any]:
    """Score every complete window of ``data_file`` with the model in ``model_dir``.

    Returns a JSON-ready dict: ``model``, ``data``, ``counts``, ``scores`` (summary),
    ``metrics`` (name -> value, ci95, n, note; empty without truth) and, when the file is
    the one the card held out part of (AI4I's later rows), ``holdout`` with the metrics of
    just that part. ``monitoring`` holds the thresholds the agent's monitors would use for
    ``budget`` (false drift alarms, per days) at ``windows_per_day`` over ``assets`` assets
    (default: the file's), as the agent reports them in its health messages.
    """
    # onnxruntime is the agent's runtime, not a dependency of the package core.
    from agent.inference import OnnxModel
    from agent.monitors.budget import calibrate
    from contract.wire import Budget

    model = OnnxModel(model_dir)
    card = model.card
    if truth is not None and card.output.horizon is None and card.input.format == "cmapss":
        raise ValueError(f"--truth: the card in {model_dir} has no output.horizon, so no "
                         "window can be called positive: add \"horizon\": N (the "
                         f"{card.input.time_unit}s within which a failure counts as "
                         "predicted) to its output")
    data_file = Path(data_file)
    recs = read_data(card.input, data_file, truth=truth)
    frames = featurize(recs, card.features, size=card.window.size, hop=card.window.hop)
    p = model.run(frames.X)
    thr = card.threshold.value
    result: dict[str, Any] = {
        "model": {"name": card.name, "version": card.version, "dir": str(model_dir),
                  "sha256": card.sha256.model, "threshold": thr},
        "data": {"file": str(data_file), "format": card.input.format or "table",
                 "sha256": sha256_file(data_file) if data_file.is_file() else None,
                 "truth": None if truth is None else str(truth),
                 "labels": sorted(frames.labels)},
        "counts": {"assets": len(recs), "assets_scored": int(len(np.unique(frames.asset))),
                   "windows": len(frames), "alerts": int(np.sum(p >= thr))},
        "scores": _score_summary(p),
        "metrics": _metrics(card, frames, p),
        "monitoring": calibrate(card, Budget(alarms=budget[0], per_days=budget[1],
                                             windows_per_day=windows_per_day),
                                assets or len(recs)).report.model_dump(mode="json"),
    }
    if len(recs) <= _PER_ASSET_MAX:
        result["per_asset"] = {
            a: {"windows": int(np.sum(frames.asset == a)),
                "score_mean": _round(p[frames.asset == a].mean()),
                "score_max": _round(p[frames.asset == a].max()),
                "alerts": int(np.sum(p[frames.asset == a] >= thr))}
            for a in np.unique(frames.asset).tolist()
        }
    holdout = _holdout(card, result["data"]["sha256"], frames)
    if holdout is not None:
        mask, how = holdout
        result["holdout"] = {"selection": how, "windows": int(mask.sum()),
                             "metrics": _metrics(card, frames.select(mask), p[mask])}
    return result


def _metrics(card: ModelCard, frames: Frames, p: np.ndarray) -> dict[str, Any]:
    labels = frames.labels
    truth = card.training.get("truth")
    if card.input.table is not None and isinstance(truth, dict):
        # A card from `linewatch card` says which of the table's labels is the truth.
        named = truth.get("life") or truth.get("label")
        labels = {("rul" if "life" in truth else "failure"): labels[named]} \
            if named in labels else {}
    cap = card.output.cap if card.output.kind == "rul" else card.training.get("rul_cap")
    found = report_metrics(card.input.format or "table", labels, p,
                           threshold=card.threshold.value, horizon=card.output.horizon,
                           asset=frames.asset, end=frames.end, last=frames.last,
                           rul_cap=cap)
    return {k: _clean(v) for k, v in sorted(found.items())}


def _clean(m: MetricValue) -> dict[str, Any]:
    """JSON has no NaN: undefined values and bounds become null."""
    d = m.as_dict()
    d["value"] = None if not math.isfinite(m.value) else m.value
    if m.ci95 is None or not all(math.isfinite(b) for b in m.ci95):
        d["ci95"] = None
    return d


def _holdout(card: ModelCard, sha: str | None, frames: Frames) -> tuple[np.ndarray, str] | None:
    """The card's held-out rows, when this is the file they were held out of."""
    spec = card.training.get("holdout")
    if not isinstance(spec, dict) or sha is None or spec.get("sha256") != sha:
        return None
    t_from = float(spec["t_from"])
    return frames.end >= t_from, f"windows ending at t >= {t_from:g} ({spec.get('what', '')})"


def _score_summary(p: np.ndarray) -> dict[str, float | None]:
    if len(p) == 0:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    q50, q95 = np.percentile(p, [50, 95])
    return {"mean": _round(p.mean()), "p50": _round(q50), "p95": _round(q95),
            "max": _round(p.max())}


def _round(v: float) -> float:
    return float(round(float(v), 4))


def format_report(result: dict[str, Any]) -> str:
    """The result of :func:`evaluate` in words, for a terminal."""
    m, d, n = result["model"], result["data"], result["counts"]
    lines = [
        f"model   {m['name']} {m['version']} (threshold {m['threshold']:.4f})",
        f"data    {d['file']} ({d['format']})" + (f", truth {d['truth']}" if d["truth"] else ""),
        f"scored  {n['windows']} windows of {n['assets_scored']}/{n['assets']} assets; "
        f"{n['alerts']} at or above the threshold",
        "scores  " + ", ".join(f"{k} {v}" for k, v in result["scores"].items()),
    ]
    lines += _metric_lines("metrics", result["metrics"])
    if "holdout" in result:
        h = result["holdout"]
        lines += _metric_lines(f"held-out part: {h['selection']}, {h['windows']} windows",
                               h["metrics"])
    if "per_asset" in result:
        lines.append("per asset")
        for a, s in result["per_asset"].items():
            lines.append(f"  {a:<12} {s['windows']:>6} windows  mean {s['score_mean']:.4f}  "
                         f"max {s['score_max']:.4f}  alerts {s['alerts']}")
    lines += _monitoring_lines(result["monitoring"])
    return "\n".join(lines)


def _monitoring_lines(t: dict[str, Any]) -> list[str]:
    b = t["budget"]
    lines = [f"monitors {'calibrated' if t['calibrated'] else 'NOT calibrated (fixed rules)'} "
             f"for at most {b['alarms']:g} false drift alarm(s) per agent per "
             f"{b['per_days']:g} days: {t['assets']} assets, {b['windows_per_day']:g} windows "
             f"per asset per day, {t['signals']} signals"]
    for label, values in (("envelope CUSUM", t["envelope"]), ("step |z|", t["step"]),
                          ("stuck after", t["stuck_samples"])):
        if values:
            shown = ", ".join(f"{k} {v:g}" for k, v in sorted(values.items())[:6])
            more = f", ... ({len(values)} in all)" if len(values) > 6 else ""
            lines.append(f"  {label}: {shown}{more}")
    if t["alert_rate"] is not None:
        lines.append(f"  alert-rate CUSUM: {t['alert_rate']:g}")
    return lines


def _metric_lines(title: str, metrics: dict[str, Any]) -> list[str]:
    if not metrics:
        return [f"{title}: none (the data carry no truth the card can read: C-MAPSS test "
                "files take --truth; a table needs the label the card's training.truth names)"]
    out = [title]
    for name, mv in metrics.items():
        value = "n/a" if mv["value"] is None else f"{mv['value']:.4f}"
        ci = "" if mv["ci95"] is None else f"  [{mv['ci95'][0]:.4f}, {mv['ci95'][1]:.4f}]"
        out.append(f"  {name:<28} {value:>7}{ci}  n={mv['n']}  {mv['note']}")
    return out
