"""Building model cards, and telling whether two cards describe the same trained model.

:func:`build_card` turns an exported ONNX model and the rows it was trained on into a
validated :class:`contract.card.ModelCard`: the sha256 of the file, each feature's
training range, the reference statistics the drift monitors start from and a self-test
computed by running the file itself. Every model the factory trains
(``linewatch.training``) gets its card from it, and it is the path for bringing a model
trained elsewhere: the card is built from the same pydantic models the agent reads, so a
field cannot be written under one name and read under another.

:func:`card_differences` compares two cards of one model up to what another CPU or BLAS
kernel changes in the last digits of a float; it is what "retraining reproduces the
shipped model" means in the tests.

numpy and pydantic, plus ``onnx`` (the ``train`` extra) to run the model file with its
reference evaluator; never onnxruntime, the gateway's runtime.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from contract.card import (
    CardError,
    FeatureSpec,
    InputSpec,
    Metric,
    ModelCard,
    Monitoring,
    OutputSpec,
    ProbabilityCalibration,
    Reference,
    SelfTest,
    Sha256Spec,
    Stats,
    ThresholdSpec,
    WindowSpec,
)

__all__ = [
    "ABS_TOLERANCE",
    "INPUT_NAME",
    "MAP_TOLERANCE",
    "NOT_COMPARED",
    "REL_TOLERANCE",
    "SCORE_TOLERANCE",
    "SELF_TEST_ROWS",
    "build_card",
    "card_differences",
    "map_distance",
    "model_scores",
    "select_self_test",
    "stats",
    "value_differences",
]

INPUT_NAME = "features"  # the ONNX input every linewatch model reads, float32 (n, features)
SELF_TEST_ROWS = 8
# Scores given with the training rows may differ from the file's own by float32 inference
# noise (about 1e-7); ten times the agent's self-test tolerance means they are another model's.
SCORE_TOLERANCE = 1e-4
_QUANTILES = {"p01": 1, "p05": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95, "p99": 99}

# A float computed by training may move in its last digits on another CPU or BLAS kernel:
# relative 1e-4 absorbs that many times over; a number rounded to 4 decimals (metrics) may
# then round the other way, one unit of 1e-4 (the half is room for the subtraction's error).
REL_TOLERANCE = 1e-4
ABS_TOLERANCE = 1.5e-4
# A calibration map is an isotonic fit through data points: float noise can move a knot, or
# merge two, so maps are compared as functions (mean absolute difference over [0, 1]).
MAP_TOLERANCE = 1e-3
# Fields that say when and where a card was made, or that come after training, not what
# training made of the data: left out of :func:`card_differences` by default.
# ``sha256.model`` follows the weights' last bits; which rows the self-test picks is a
# tie-break on scores (the agent checks the self-test against the file);
# ``reference.monitoring`` is added after training, by ``linewatch calibrate``. The
# probabilities' ``calibration`` is compared: training measures it (``linewatch
# calibrate`` rebuilds the same numbers for cards made before it existed).
NOT_COMPARED = ("created", "sha256.model", "self_test", "reference.monitoring",
                "training.duration_s", "training.packages", "training.search_run")


def build_card(
    model: bytes | str | Path,
    *,
    name: str,
    version: str,
    description: str,
    input: InputSpec,
    window: WindowSpec,
    features: Sequence[FeatureSpec],
    output: OutputSpec,
    threshold: ThresholdSpec,
    X: np.ndarray,
    scores: np.ndarray | None = None,
    data_sha256: Mapping[str, str],
    metrics: Mapping[str, Metric] | None = None,
    training: Mapping[str, Any] | None = None,
    monitoring: Monitoring | None = None,
    calibration: ProbabilityCalibration | None = None,
    created: datetime | None = None,
    self_test_rows: int = SELF_TEST_ROWS,
    scorer: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ModelCard:
    """A validated model card for the ONNX model ``model`` (its bytes or its file).

    This is the path for bringing your own model: train it anywhere, export it to ONNX with
    one float32 input ``features`` of shape (n, len(features)) and an output holding the
    score in column ``output.index``, describe its channels, window and features with the
    ``contract.card`` models, and give the feature rows it was trained on (``X``, in the
    order of ``features``). The factory's own models come through here too.

    Derived here, not given: ``sha256.model``; each feature's ``range`` (min and max of its
    column of ``X``); ``reference`` (statistics of each feature and of the scores over
    ``X``); ``self_test`` (up to ``self_test_rows`` rows of ``X`` whose scores spread from
    the lowest to the highest, with the file's outputs on them).

    ``scores`` are the model's scores on ``X`` as the training library computed them
    (faster than running the file on every row); they must agree with the file's outputs
    on the self-test rows to :data:`SCORE_TOLERANCE`. Without them the file scores every
    row. ``data_sha256``: training data file -> sha256. ``metrics``, ``training``,
    ``monitoring`` (the monitors' calibration, ``reference.monitoring``; usually added later
    by ``linewatch calibrate``) and ``calibration`` (a classifier's scores as probabilities,
    measured on held-out predictions: :func:`linewatch.probabilities.measure`) go into the
    card as given; ``created`` defaults to now (UTC, whole seconds). ``scorer`` computes
    the output's values for float32 rows (default: the ONNX reference evaluator; ``linewatch
    card`` passes onnxruntime, which also runs what the reference evaluator cannot, such as
    ZipMap). The self-test holds the output's own values; ``scores`` and ``reference.score``
    are scores (a remaining life read through ``output.to_score``).

    Raises :class:`contract.card.CardError` when the parts do not fit together (and
    pydantic's ``ValidationError``, a ``ValueError``, for an invalid part).
    """
    blob = Path(model).read_bytes() if isinstance(model, str | Path) else bytes(model)
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(features) or len(X) == 0:
        raise CardError(f"training rows must have shape (n > 0, {len(features)}), "
                        f"one column per feature; got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise CardError("training rows contain NaN or infinity")
    def run(rows: np.ndarray) -> np.ndarray:
        if scorer is not None:
            return np.asarray(scorer(rows), dtype=np.float64)
        return model_scores(blob, rows, output.name, output.index)

    if scores is None:
        raw = run(X)
        scores = np.asarray(output.to_score(raw), dtype=np.float64)
        picks = select_self_test(scores, self_test_rows)
        expected = raw[picks]
    else:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(X),) or not np.all(np.isfinite(scores)):
            raise CardError(f"scores must be {len(X)} finite numbers, one per training row")
        picks = select_self_test(scores, self_test_rows)
        expected = run(X[picks])
        worst = float(np.max(np.abs(output.to_score(expected) - scores[picks])))
        if worst > SCORE_TOLERANCE:
            raise CardError(f"the scores given differ from the model file's own by {worst:.3g} "
                            f"on the self-test rows: they are not this model's scores")
    return ModelCard(
        name=name,
        version=version,
        created=created or datetime.now(UTC).replace(microsecond=0),
        description=description,
        input=input,
        window=window,
        features=[
            FeatureSpec.model_validate({**s.model_dump(),
                                        "range": (float(X[:, j].min()), float(X[:, j].max()))})
            for j, s in enumerate(features)
        ],
        output=output,
        threshold=threshold,
        sha256=Sha256Spec(model=hashlib.sha256(blob).hexdigest(), data=dict(data_sha256)),
        metrics=dict(metrics or {}),
        # float32 noise scales with the output: a life of 120 cycles is off by 1e-5 sooner
        # than a probability is.
        self_test=SelfTest(features=[[float(v) for v in X[i]] for i in picks],
                           expected=[float(v) for v in expected],
                           tolerance=1e-5 * max(1.0, float(np.max(np.abs(expected))))),
        reference=Reference(features={s.name: stats(X[:, j]) for j, s in enumerate(features)},
                            score=stats(scores), monitoring=monitoring),
        training=dict(training or {}),
        calibration=calibration,
    )


def model_scores(model: bytes, X: np.ndarray, output: str, index: int) -> np.ndarray:
    """Column ``index`` of ONNX output ``output`` for float32 rows ``X``, computed by the
    ONNX reference evaluator (onnxruntime is the gateway's runtime, not training's)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    sess = ReferenceEvaluator(onnx.load_from_string(model))
    (out,) = sess.run([output], {sess.input_names[0]: np.ascontiguousarray(X, dtype=np.float32)})
    out = np.asarray(out, dtype=np.float64)
    return out.reshape(len(X), -1)[:, index]


def stats(x: np.ndarray) -> Stats:
    """Reference statistics of one variable over training windows.

    >>> stats(np.arange(101.0)).quantiles["p25"]
    25.0
    """
    x = np.asarray(x, dtype=np.float64)
    q = np.percentile(x, list(_QUANTILES.values()))
    return Stats(mean=_r(x.mean()), std=_r(x.std()), min=_r(x.min()), max=_r(x.max()),
                 quantiles={k: _r(v) for k, v in zip(_QUANTILES, q, strict=True)})


def _r(v: float) -> float:
    """8 significant digits: plenty for drift monitors, stable across runs."""
    return float(f"{float(v):.8g}")


def select_self_test(p: np.ndarray, k: int = SELF_TEST_ROWS) -> np.ndarray:
    """Indices of up to ``k`` real rows whose scores spread evenly from the lowest to the
    highest, so the self-test covers quiet, borderline and alarming inputs alike.

    >>> select_self_test(np.array([0.0, 0.01, 0.02, 0.5, 0.97, 1.0]), k=3).tolist()
    [0, 3, 5]
    """
    picks: list[int] = []
    for target in np.linspace(p.min(), p.max(), k):
        dist = np.abs(p - target)
        dist[picks] = np.inf
        picks.append(int(np.argmin(dist)))
    return np.array(sorted(set(picks), key=lambda i: (p[i], i)))


# --- comparing cards ------------------------------------------------------------------------


def card_differences(a: ModelCard, b: ModelCard, *, skip: Sequence[str] = NOT_COMPARED,
                     rel: float = REL_TOLERANCE, abs_: float = ABS_TOLERANCE) -> list[str]:
    """Where cards ``a`` and ``b`` differ by more than float noise, one line per place
    (``[]``: the same model). Fields in ``skip`` (dotted paths) are left out; the
    calibration maps are compared by :func:`map_distance` (up to :data:`MAP_TOLERANCE`),
    the rest by :func:`value_differences`."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    for path in skip:
        for d in (da, db):
            *parents, leaf = path.split(".")
            for key in parents:
                d = d.get(key) or {}
            d.pop(leaf, None)
    out = []
    ma, mb = _pop_map(da), _pop_map(db)
    if (ma is None) != (mb is None):
        out.append(f"calibration.map: only in the {'first' if mb is None else 'second'}")
    elif ma is not None and mb is not None:
        distance = map_distance(ma, mb)
        if distance > MAP_TOLERANCE:
            out.append(f"calibration.map: mean |difference| {distance:.3g} over [0, 1]")
    return out + value_differences(da, db, rel=rel, abs_=abs_)


def _pop_map(card: dict[str, Any]) -> dict[str, list[float]] | None:
    cal = card.get("calibration")
    return cal.pop("map", None) if isinstance(cal, dict) else None


def map_distance(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]]) -> float:
    """Mean absolute difference over scores 0 to 1 of two calibration maps (``x``, ``y``
    points, read as ``numpy.interp`` reads them).

    >>> map_distance({"x": [0, 1], "y": [0, 1]}, {"x": [0, 0.5, 1], "y": [0, 0.5, 1]})
    0.0
    >>> map_distance({"x": [0, 1], "y": [0, 1]}, {"x": [0, 1], "y": [0.1, 1.1]})
    0.1
    """
    x = np.unique(np.concatenate([[0.0, 1.0], a["x"], b["x"]]).clip(0.0, 1.0))
    gap = np.abs(np.interp(x, a["x"], a["y"]) - np.interp(x, b["x"], b["y"]))
    return round(float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(x))), 12)


# A number standing on its own in a text: not part of a name ("sensor_2") or a hex digest,
# not a piece of a dotted version ("1.26.4"); those are compared as text, exactly.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w]|\.\d)")


def value_differences(a: Any, b: Any, path: str = "", *, rel: float = REL_TOLERANCE,
                      abs_: float = ABS_TOLERANCE) -> list[str]:
    """Differences between two JSON values, beyond float noise.

    Keys, list lengths, strings, booleans and integers must be equal: integers are counts
    (windows, alerts right, positives caught), which float noise does not move. Floats
    must agree to ``rel`` or ``abs_``. In strings, the numbers written into the text are
    compared the same way (an integer exactly), the words around them exactly; a number
    inside a word (a name, a sha256) is part of the word.

    >>> value_differences({"p": 0.37468600273132324, "n": "at 0.3747; 5 of 6 right"},
    ...                   {"p": 0.37468698620796204, "n": "at 0.3748; 5 of 6 right"})
    []
    >>> value_differences({"p": 0.3747, "n": "5 of 6"}, {"p": 0.3757, "n": "4 of 6"})
    ['n: 5 != 4 in text', 'p: 0.3747 != 0.3757']
    >>> value_differences("sha 12e3", "sha 12000"), value_differences("ab12e3", "ab12000")
    ([], ["(top): 'ab12e3' != 'ab12000'"])
    """
    where = path or "(top)"
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path + '.' if path else ''}{k}: only in the first" for k in sorted(a.keys() - b)]
        out += [f"{path + '.' if path else ''}{k}: only in the second"
                for k in sorted(b.keys() - a)]
        for k in sorted(a.keys() & b.keys()):
            out += value_differences(a[k], b[k], f"{path}.{k}" if path else k, rel=rel,
                                     abs_=abs_)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += value_differences(x, y, f"{path}[{i}]", rel=rel, abs_=abs_)
        return out
    if isinstance(a, str) and isinstance(b, str):
        return _text_differences(a, b, where, rel=rel, abs_=abs_)
    if _is_number(a) and _is_number(b):
        if isinstance(a, int) and isinstance(b, int):
            return [] if a == b else [f"{where}: {a} != {b}"]
        close = math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
        return [] if close else [f"{where}: {a} != {b}"]
    return [] if a == b and type(a) is type(b) else [f"{where}: {a!r} != {b!r}"]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _text_differences(a: str, b: str, where: str, *, rel: float, abs_: float) -> list[str]:
    if a == b:
        return []
    if _NUMBER.split(a) != _NUMBER.split(b):
        return [f"{where}: {a!r} != {b!r}"]
    out = []
    for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b), strict=True):
        if _is_int_text(x) and _is_int_text(y):
            same = int(x) == int(y)
        else:
            same = math.isclose(float(x), float(y), rel_tol=rel, abs_tol=abs_)
        if not same:
            out.append(f"{where}: {x} != {y} in text")
    return out


def _is_int_text(s: str) -> bool:
    return not any(ch in s for ch in ".eE")
