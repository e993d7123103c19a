"""``linewatch calibrate``: the null that the agent's monitor thresholds are set against.

The agent's monitors judge each asset against the card's reference, and their thresholds
come from a false-alarm budget (``agent.monitors.budget``). What links the two is how the
detectors behave on data that is *in distribution but not the data the envelope was built
from*: new machines of the same kind, run the same way. This module measures that on the
training recordings:

1. **Envelope CUSUM, cross-fitted.** The assets are split into ``folds`` groups; for each
   group, the training range is taken from the *other* groups only and the group's assets
   are run through the feature-envelope CUSUM, whole lives, failures included. Every
   excursion's peak is kept.
2. **Step test.** Each life's raw channels go through the agent's step test (mean of the
   last ``w`` samples against the ``w`` before, in noise units); every excursion above
   ``u`` keeps its peak.
3. The peaks become a ``Tail`` per detector (counts per signal above ``u`` and an
   exponential rate for the excess, pooled, or per signal where it had enough peaks), from
   which the agent derives its thresholds for any budget, asset count and sample rate.

It also records each channel's noise and longest run of identical samples, the reference
alert rate and the mean length of an alert run. Recordings with fewer than ``folds`` assets
are cut into ``folds`` consecutive pieces, each standing in for a life.

**Probabilities** (:func:`probability_step`). For a classifier of the factory given its
own training data, ``linewatch calibrate`` also rebuilds the out-of-fold scores its
training validated on (recorded hyper-parameters, same folds: the numbers training wrote)
and measures how far they are probabilities (:mod:`linewatch.probabilities`), for the
card's ``calibration`` and its CARD.md section: how the cards shipped before training
measured it got theirs. The model file is never touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agent.datasets import Recording, read_recordings
from agent.features import FeatureExtractor
from agent.monitors.cusum import excursion_peaks
from agent.monitors.envelope import exceedance
from agent.windows import Windower
from contract.card import (
    CARD_FILE,
    MODEL_FILE,
    ChannelReference,
    ModelCard,
    Monitoring,
    ProbabilityCalibration,
    Tail,
    sha256_file,
)
from contract.wire import Thresholds

__all__ = [
    "ALLOWANCE", "STEP_U", "STEP_WINDOW", "calibrate", "calibrate_trained", "load_lives",
    "probability_step", "report", "run_calibration", "run_peaks", "step_statistic",
    "write_card",
]

ALLOWANCE = 0.5  # reference standard deviations beyond the training range, per window
STEP_WINDOW = 10
STEP_U = 4.0  # step statistic below this is noise; excursions above it are counted
_MIN_OWN_PEAKS = 10  # a signal with this many peaks gets a tail rate of its own
_SEED = 20260101


def step_statistic(x: np.ndarray, noise: np.ndarray, w: int) -> np.ndarray:
    """|mean of the last w samples - mean of the w before| in noise units, per sample from
    the 2w-th on (the agent's step test, over a whole record).

    >>> step_statistic(np.r_[np.zeros(4), np.ones(4)][:, None], np.array([0.5]), 2).ravel()
    array([0., 1., 2., 1., 0.])
    """
    c = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    end = np.arange(2 * w, len(x) + 1)
    diff = (c[end] - 2 * c[end - w] + c[end - 2 * w]) / w
    return np.asarray(np.abs(diff) / (noise * np.sqrt(2.0 / w)))


def run_peaks(z: np.ndarray, u: float) -> list[float]:
    """The maximum of every run of ``z`` above ``u`` (the agent's step test fires once per
    run and re-arms below ``u``).

    >>> run_peaks(np.array([1.0, 5.0, 7.0, 2.0, 6.0]), 4.0)
    [7.0, 6.0]
    """
    above = np.r_[False, z > u, False].astype(np.int8)
    edges = np.diff(above)
    return [float(z[a:b].max()) for a, b in zip(np.flatnonzero(edges == 1),
                                                 np.flatnonzero(edges == -1), strict=True)]


def _lives(recordings: Sequence[Recording], folds: int) -> list[Recording]:
    if len(recordings) >= folds:
        return list(recordings)
    out = []
    for r in recordings:
        for k, idx in enumerate(np.array_split(np.arange(len(r)), folds)):
            out.append(Recording(f"{r.asset}#{k}", r.channels, r.t[idx], r.values[idx],
                                 {n: v[idx] for n, v in r.labels.items()}))
    return out


def _features(card: ModelCard, life: Recording, fx: FeatureExtractor) -> np.ndarray:
    win = Windower(card.window.size, card.window.hop, len(card.channel_names))
    out = win.update(life.asset, life.t, life.values)
    return np.zeros((0, len(card.features))) if out is None else fx.transform(out.values)


def _tail(peaks: dict[str, list[float]], u: float, lives: int, windows: int,
          fallback_theta: float) -> Tail:
    excess = np.array([p - u for ps in peaks.values() for p in ps if p > u])
    theta = 1.0 / float(excess.mean()) if len(excess) >= 5 else fallback_theta
    thetas = {}
    for name, ps in peaks.items():
        own = np.array([p - u for p in ps if p > u])
        if len(own) >= _MIN_OWN_PEAKS:
            thetas[name] = round(1.0 / float(own.mean()), 6)
    return Tail(u=u, theta=round(theta, 6), thetas=thetas, lives=lives, windows=windows,
                counts={n: sum(p > u for p in ps) for n, ps in peaks.items()})


def _runs(x: np.ndarray) -> int:
    new = np.r_[True, x[1:] != x[:-1]]
    starts = np.flatnonzero(new)
    return int(np.diff(np.r_[starts, len(x)]).max()) if len(x) else 1


def _alert_runs(alerts: np.ndarray) -> list[int]:
    padded = np.r_[False, alerts, False].astype(np.int8)
    edges = np.diff(padded)
    return [int(n) for n in np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)]


def calibrate(
    card: ModelCard,
    recordings: Sequence[Recording],
    scores: Sequence[np.ndarray] | None = None,
    *,
    folds: int = 5,
) -> Monitoring:
    """The card's ``reference.monitoring`` from in-distribution ``recordings`` (training
    lives, in the card's channel order). ``scores``, if given, are the model's scores of each
    recording's windows (for the alert rate and run length; the card's cross-validated alert
    rate is preferred when it has one)."""
    channels = card.channel_names
    lives = _lives(recordings, folds)
    fx = FeatureExtractor(card.features, channels)
    X = [_features(card, life, fx).astype(np.float64) for life in lives]
    allx = np.vstack([x for x in X if len(x)])
    names = card.feature_names
    scale = np.array([max(float(allx[:, j].std()), 1e-9) for j in range(len(names))])
    order = np.random.default_rng(_SEED).permutation(len(lives))
    groups = np.array_split(order, folds)
    env_peaks: dict[str, list[float]] = {n: [] for n in names}
    for held in groups:
        rest = np.vstack([X[i] for i in range(len(lives)) if i not in set(held) and len(X[i])])
        low, high = rest.min(axis=0), rest.max(axis=0)
        for i in held:
            if len(X[i]):
                at, peaks = excursion_peaks(exceedance(X[i], low, high, scale), ALLOWANCE)
                for c, p in zip(at.tolist(), peaks.tolist(), strict=True):
                    env_peaks[names[c]].append(p)
    windows = sum(len(x) for x in X)
    envelope = _tail(env_peaks, 0.0, len(lives), windows, fallback_theta=1.0 / ALLOWANCE)

    used = [c for c in channels if any(c in f.inputs for f in card.features)]
    cols = [channels.index(c) for c in used]
    raw = np.vstack([life.values[:, cols] for life in lives])
    diffs = np.vstack([np.diff(life.values[:, cols], axis=0) for life in lives if len(life) > 1])
    med = np.median(diffs, axis=0)
    noise = np.median(np.abs(diffs - med), axis=0) * 1.4826 / np.sqrt(2.0)
    refs = {
        c: ChannelReference(
            mean=_r(raw[:, k].mean()), std=_r(raw[:, k].std()), min=_r(raw[:, k].min()),
            max=_r(raw[:, k].max()), noise=_r(noise[k]),
            longest_run=max(_runs(life.values[:, cols[k]]) for life in lives))
        for k, c in enumerate(used)
    }
    # Step and offset tests suit process values; a kHz vibration channel has neither.
    stepped = [k for k, c in enumerate(used) if noise[k] > 0 and card.input.rate_hz is None]
    step_peaks: dict[str, list[float]] = {used[k]: [] for k in stepped}
    samples = 0
    for life in lives:
        if len(life) < 2 * STEP_WINDOW or not stepped:
            continue
        z = step_statistic(life.values[:, [cols[k] for k in stepped]], noise[stepped],
                           STEP_WINDOW)
        samples += len(z)
        for j in range(z.shape[1]):
            step_peaks[used[stepped[j]]].extend(run_peaks(z[:, j], STEP_U))
    step = _tail(step_peaks, STEP_U, len(lives), max(samples, 1), fallback_theta=1.0)

    alert_rate, alert_run = _alerts(card, scores)
    return Monitoring(
        method=(f"held-out lives: {folds}-fold cross-fitted training range over "
                f"{len(lives)} lives ({windows} windows); step test over the same lives "
                f"(w={STEP_WINDOW}, u={STEP_U}); exponential tails beyond u"),
        envelope_allowance=ALLOWANCE, envelope=envelope, step_window=STEP_WINDOW, step=step,
        channels=refs, alert_rate=alert_rate, alert_run=alert_run,
        life_windows=round(windows / len(lives), 3))


def _alerts(card: ModelCard, scores: Sequence[np.ndarray] | None) -> tuple[float, float]:
    runs: list[int] = []
    rate = None
    if scores:
        alerts = [np.asarray(s) >= card.threshold.value for s in scores]
        runs = [r for a in alerts for r in _alert_runs(a)]
        total = sum(len(a) for a in alerts)
        rate = sum(int(a.sum()) for a in alerts) / total if total else None
    cv = card.metrics.get("cv_window_alert_rate")
    if cv is not None:
        rate = cv.value
    return _r(rate or 0.0), _r(float(np.mean(runs)) if runs else 1.0)


def _r(v: float) -> float:
    return float(f"{float(v):.8g}")


def write_card(model_dir: Path, monitoring: Monitoring,
               calibration: ProbabilityCalibration | None = None) -> ModelCard:
    """Put ``monitoring`` into the card's reference (and ``calibration``, when given, into
    its ``calibration``, and CARD.md's section on it) and rewrite ``card.json`` (same
    layout as training writes it; the model file and its checksum are untouched)."""
    card = ModelCard.load(model_dir)
    update: dict[str, object] = {"reference": card.reference.model_copy(
        update={"monitoring": monitoring})}
    if calibration is not None:
        update["calibration"] = calibration
    card = card.model_copy(update=update)
    (Path(model_dir) / CARD_FILE).write_text(card.to_json())
    md = Path(model_dir) / "CARD.md"
    if calibration is not None and md.is_file():
        from linewatch.probabilities import with_section

        md.write_text(with_section(md.read_text(), calibration))
    return card


def run_calibration(model_dir: Path, data: Path, *, write: bool = False) -> str:
    """``linewatch calibrate``: calibrate from ``data`` (scored by the model itself for the
    alert runs) and, when ``data`` is a factory classifier's training data, its
    probabilities (:func:`probability_step`); optionally write the card, and return a
    report for people."""
    from agent.inference import OnnxModel
    from agent.monitors.budget import calibrate as thresholds
    from contract.wire import Budget

    model = OnnxModel(model_dir)
    card = model.card
    lives = load_lives(card, data)
    fx = FeatureExtractor(card.features, card.channel_names)
    scores = [model.run(x) if len(x) else np.zeros(0)
              for x in (_features(card, life, fx) for life in lives)]
    monitoring = calibrate(card, lives, scores)
    probabilities, why_not = probability_step(card, data)
    if write:
        card = write_card(model_dir, monitoring, probabilities)
    else:
        update: dict[str, object] = {"reference": card.reference.model_copy(
            update={"monitoring": monitoring})}
        if probabilities is not None:
            update["calibration"] = probabilities
        card = card.model_copy(update=update)
    budget = Budget(alarms=1.0, per_days=90.0, windows_per_day=144.0)
    text = report(card, thresholds(card, budget, 25).report, written=write)
    return text + "\n" + _probability_report(card, probabilities, why_not, written=write)


def probability_step(card: ModelCard, data: Path) -> tuple[ProbabilityCalibration | None,
                                                            str]:
    """The card's ``calibration``, rebuilt from the out-of-fold scores of its training, or
    None and the reason it cannot be: not a factory classifier, ``data`` is not the
    training data the card names (or differs from it), or scikit-learn is missing."""
    from linewatch.training import NAMES

    if card.name not in NAMES:
        return None, ("not a model of linewatch's factory: measure held-out predictions with "
                      "linewatch.probabilities.measure and give them to build_card")
    try:
        module = importlib.import_module(f"linewatch.training.{card.name}")
        from threadpoolctl import threadpool_limits

        from linewatch.training.common import probability_calibration
    except ImportError as exc:
        return None, f"needs the train extra (pip install linewatch[train]): {exc}"
    if not hasattr(module, "out_of_fold"):
        return None, "a regressor: its score is not a probability"
    root = _training_root(card, data)
    if root is None:
        return None, (f"{data} is not the training data the card names "
                      f"({', '.join(sorted(card.sha256.data))[:120]})")
    changed = [f for f, digest in card.sha256.data.items()
               if not (root / f).is_file() or sha256_file(root / f) != digest]
    if changed:
        return None, f"the training data under {root} differ from the card's: {changed[0]}"
    with threadpool_limits(limits=1):  # as in training: the same sums, the same numbers
        return probability_calibration(module.out_of_fold(card, root)), ""


def _training_root(card: ModelCard, data: Path) -> Path | None:
    """The data root ``data`` sits in when it is the card's training data."""
    named = card.training.get("data", {})
    rel = next((named[k] for k in _DATA_KEYS if k in named), None)
    if not isinstance(rel, str):
        return None
    parts, want = Path(data).resolve().parts, Path(rel).parts
    if parts[-len(want):] != want:
        return None
    return Path(*parts[:-len(want)])


def _probability_report(card: ModelCard, cal: ProbabilityCalibration | None, why_not: str,
                        *, written: bool) -> str:
    if cal is None:
        return f"  probabilities: not measured ({why_not})"
    lines = [f"  probabilities: {cal.evaluated_on}", f"  {cal.note}",
             f"  ECE {cal.ece_before:.4f} (chance level {cal.ece_chance:.4f}), Brier "
             f"{cal.brier_before:.4f}"]
    if cal.map is not None:
        lines.append(f"  isotonic map ({len(cal.map.x)} points): ECE {cal.ece_after:.4f}, "
                     f"Brier {cal.brier_after:.4f} held out")
    lines.append(f"  {'calibrated' if cal.calibrated else 'NOT calibrated'} (ECE tolerance "
                 f"{cal.tolerance:g}): the agent "
                 + ("estimates its alerts' precision and recall" if cal.calibrated
                    else "makes no performance estimate"))
    if written:
        lines.append(f"  written to {card.name}/card.json (calibration) and CARD.md")
    return "\n".join(lines)


def report(card: ModelCard, t: Thresholds, *, written: bool = False) -> str:
    """The calibration and the thresholds it gives, in words."""
    mon = card.reference.monitoring
    b = t.budget
    lines = [f"{card.name} {card.version}: monitors "
             + ("calibrated" if t.calibrated else "NOT calibrated (fixed rules)")]
    if mon is not None:
        lines.append(f"  null: {mon.method}")
        lines.append(f"  reference alert rate {100 * mon.alert_rate:.1f} % of windows, alert "
                     f"runs {mon.alert_run:.1f} windows on average")
    lines.append(f"  budget: at most {b.alarms:g} false drift alarm(s) per agent per "
                 f"{b.per_days:g} days, {t.assets} assets, {b.windows_per_day:g} windows per "
                 f"asset per day, {t.signals} signals (Bonferroni)")
    for label, values in (("envelope CUSUM", t.envelope), ("step |z|", t.step),
                          ("stuck after (samples)", t.stuck_samples)):
        if values:
            lo, hi = min(values.values()), max(values.values())
            lines.append(f"  {label}: {lo:.4g} .. {hi:.4g} over {len(values)} signals")
    if t.alert_rate is not None:
        lines.append(f"  alert-rate CUSUM: {t.alert_rate:.4g}")
    if written:
        lines.append(f"  written to {card.name}/card.json (reference.monitoring)")
    return "\n".join(lines)


# Where each card says its training data is, in the order looked for.
_DATA_KEYS = ("train", "file", "raw_snapshots")


def calibrate_trained(model_dir: Path, data_root: Path) -> ModelCard:
    """Calibrate a model ``linewatch train`` just wrote, from the training data its card
    names (under ``data_root``), and write it into its card. Scores come from the ONNX
    reference evaluator, as in training: no onnxruntime needed."""
    from linewatch.cards import model_scores

    card = ModelCard.load(model_dir)
    data = card.training.get("data", {})
    key = next((k for k in _DATA_KEYS if k in data), None)
    if key is None:
        raise ValueError(f"{model_dir}: the card names no training data to calibrate from")
    lives = load_lives(card, data_root / data[key])
    fx = FeatureExtractor(card.features, card.channel_names)
    model = (Path(model_dir) / MODEL_FILE).read_bytes()
    scores = []
    for life in lives:
        x = _features(card, life, fx)
        scores.append(model_scores(model, x, card.output.name, card.output.index)
                      if len(x) else np.zeros(0))
    return write_card(model_dir, calibrate(card, lives, scores))


def load_lives(card: ModelCard, data: Path, fmt: str | None = None) -> list[Recording]:
    """Recordings of ``data`` with their channels in the card's order."""
    if fmt is None:
        from linewatch.tables import read_data

        return read_data(card.input, data)
    recs = read_recordings(data, fmt)  # type: ignore[arg-type]
    out = []
    for r in recs:
        idx = [r.channels.index(c) for c in card.channel_names]
        out.append(Recording(r.asset, tuple(card.channel_names), r.t, r.values[:, idx], r.labels))
    return out
