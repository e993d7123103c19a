"""Model card: everything the agent must know to serve a model exactly as it was trained.

``card.json`` sits beside ``model.onnx``. The agent takes the input channels, the window
size and hop, the feature names and order, the output to read, the alert threshold, the
self-test cases, the drift monitors' reference statistics and, for a classifier, how far
its scores can be read as probabilities (``calibration``) from it. Nothing about a model is
hard-coded in the agent.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    model_validator,
)

from contract.errors import CardError

__all__ = [
    "CARD_FILE",
    "MODEL_FILE",
    "CalibrationMap",
    "CardError",
    "ChannelReference",
    "ChannelSpec",
    "FeatureSpec",
    "InputSpec",
    "Metric",
    "ModelCard",
    "Monitoring",
    "OutputSpec",
    "ProbabilityCalibration",
    "Reference",
    "ReliabilityBin",
    "SelfTest",
    "Sha256Spec",
    "Stats",
    "TableSpec",
    "Tail",
    "ThresholdSpec",
    "WindowSpec",
    "field_path",
    "one_line",
    "sha256_file",
]

CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"


class _Card(BaseModel):
    # No NaN or infinity in a typed number: JSON has neither, so refuse them when a card is
    # built, not when a gateway reads it. Any that hide in ``training`` stay NaN when
    # dumped, for ``ModelCard.to_json`` to refuse too.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              ser_json_inf_nan="constants")


class ChannelSpec(_Card):
    name: str
    unit: str = ""
    description: str = ""


class TableSpec(_Card):
    """How recorded data of the model lie in a CSV or Parquet file: one row per sample,
    one column per channel. ``linewatch features``, ``card``, ``evaluate`` and
    ``calibrate`` read files through it; the agent reads what its ``source`` says."""

    asset: str | None = Field(None, description="column naming the asset of each row; "
                              "none: the whole file is one asset")
    time: str = Field(description="column of the sample time (a number in input.time_unit, "
                      "or an ISO 8601 time)")
    columns: dict[str, str] = Field(default_factory=dict, description="channel -> column, for "
                                    "channels whose column is named otherwise")
    labels: dict[str, str] = Field(default_factory=dict, description="label -> column, e.g. "
                                   "rul: RUL (remaining life at each row) or failure: Failed")

    def column(self, channel: str) -> str:
        return self.columns.get(channel, channel)


class InputSpec(_Card):
    format: Literal["cmapss", "ai4i", "ims"] | None = Field(
        None, description="file format of recorded data for replay and evaluation; none for "
        "a model whose data come as a table (``table``) or only from a live source"
    )
    table: TableSpec | None = Field(None, description="layout of recorded data in CSV or "
                                    "Parquet, when they are in no shipped format")
    channels: list[ChannelSpec] = Field(min_length=1, description="channels, in window order")
    rate_hz: float | None = Field(None, description="sampling rate of high-rate signals")
    time_unit: str = Field("sample", description="what one step between samples means")

    @model_validator(mode="after")
    def _one_layout(self) -> InputSpec:
        if self.format is not None and self.table is not None:
            raise ValueError("give format (a shipped layout) or table (your own), not both")
        return self


class WindowSpec(_Card):
    size: int = Field(ge=1, description="samples per window")
    hop: int = Field(ge=1, description="samples between window starts")


class FeatureSpec(_Card):
    name: str
    fn: str = Field(description="function name in agent.features")
    inputs: list[str] = Field(min_length=1)
    params: dict[str, float] = Field(default_factory=dict)
    unit: str = ""
    range: tuple[float, float] | None = Field(None, description="min and max seen in training")


class OutputSpec(_Card):
    """The ONNX output the agent reads, and what its values mean.

    ``kind`` ``probability``: column ``index`` of output ``name`` is the probability of a
    failure within ``horizon`` (or of the positive class); the alert is ``score >=
    threshold``. ``kind`` ``rul``: it is the remaining useful life in ``unit`` (cycles,
    hours); the alert is ``RUL <= horizon``. The wire carries a score in [0, 1] either way:
    for RUL ``score = 1 - min(max(RUL, 0), cap) / cap`` (0 = ``cap`` or more left, 1 =
    failing now), so the threshold is ``1 - horizon / cap`` and nothing downstream changes.
    """

    name: str = Field(description="ONNX output holding class probabilities (n, 2), a "
                      "probability or a remaining useful life (n, 1) or (n,), or a sequence "
                      "of maps (skl2onnx's ZipMap)")
    index: int = Field(1, ge=0, description="column of the positive class (0 for one column)")
    meaning: str
    horizon: int | None = Field(None, description="failure horizon, in input.time_unit")
    kind: Literal["probability", "rul"] = Field(
        "probability", description="probability: a probability of failure; rul: remaining "
        "useful life in ``unit``")
    unit: str = Field("", description="rul: what the model counts (cycles, hours)")
    cap: float | None = Field(None, gt=0, description="rul: the life at and beyond which the "
                              "score on the wire is 0")

    @model_validator(mode="after")
    def _rul_complete(self) -> OutputSpec:
        if self.kind != "rul":
            return self
        if self.horizon is None:
            raise ValueError("a rul output needs horizon: alert when the predicted life is "
                             "at most this much")
        if self.cap is None or not self.cap > self.horizon:
            raise ValueError("a rul output needs cap, a life longer than horizon: the score "
                             "is 1 - min(RUL, cap) / cap")
        if not self.unit:
            raise ValueError("a rul output needs unit: what the life is counted in (cycles, "
                             "hours)")
        return self

    def to_score(self, values: Any) -> Any:
        """The score on the wire for output values (numpy arrays): as they are for a
        probability, ``1 - min(max(RUL, 0), cap) / cap`` for a remaining life."""
        if self.kind != "rul" or self.cap is None:
            return values
        return 1.0 - (values.clip(0.0, self.cap) / self.cap)

    @property
    def rul_threshold(self) -> float | None:
        """The score threshold a rul output's horizon means (None for a probability)."""
        if self.kind != "rul" or self.cap is None or self.horizon is None:
            return None
        return 1.0 - self.horizon / self.cap


class ThresholdSpec(_Card):
    value: float = Field(ge=0.0, le=1.0)
    method: str = Field(description="how it was chosen, in words")


class Sha256Spec(_Card):
    model: str = Field(pattern=r"^[0-9a-f]{64}$")
    data: dict[str, str] = Field(description="training data file -> sha256")


class Metric(_Card):
    value: float
    ci95: tuple[float, float] | None = None
    n: int | None = None
    note: str = ""


class SelfTest(_Card):
    features: list[list[float]] = Field(min_length=1)
    expected: list[float]
    tolerance: float = 1e-5

    @model_validator(mode="after")
    def _same_length(self) -> SelfTest:
        if len(self.features) != len(self.expected):
            raise ValueError("self_test.features and self_test.expected differ in length")
        return self


class Stats(_Card):
    """Summary of one variable over the training data, for drift monitors to start from."""

    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[str, float] = Field(default_factory=dict, description="e.g. p01 .. p99")


class ChannelReference(_Card):
    """One raw input channel over the training data: its range, its sample-to-sample
    noise (what a step is measured against) and its longest run of identical samples
    (what a stuck sensor is measured against)."""

    mean: float
    std: float
    min: float
    max: float
    noise: float = Field(ge=0, description="robust std of one sample's noise, from first "
                         "differences (MAD / sqrt 2)")
    longest_run: int = Field(ge=1, description="most consecutive identical samples seen")


class Tail(_Card):
    """How a detector's statistic behaved on held-out in-distribution data: the null that
    thresholds are calibrated against.

    A detector is run over ``lives`` held-out asset lives (``windows`` updates in all); every
    excursion of its statistic above ``u`` ends in a peak. ``counts`` holds, per signal, the
    excursions whose peak passed ``u``; beyond ``u`` peaks are modelled as exponential with
    rate ``theta`` (``thetas`` per signal where it had enough peaks of its own, else the
    pooled ``theta``). The rate of excursions above ``h`` per life is then
    ``(count + 1) / lives * exp(-theta * (h - u))``: the +1 keeps a signal that never moved
    in the held-out data from getting a threshold of zero.
    """

    u: float
    theta: float = Field(gt=0)
    thetas: dict[str, float] = Field(default_factory=dict)
    lives: int = Field(ge=1)
    windows: int = Field(ge=1)
    counts: dict[str, int]


class Monitoring(_Card):
    """What the agent's monitors need to start from the training data and to set their
    thresholds for a false-alarm budget (``linewatch calibrate`` writes it)."""

    method: str = Field(description="how the tails were obtained, in words")
    envelope_allowance: float = Field(
        gt=0, description="CUSUM allowance k, in reference standard deviations beyond the "
        "training range, that in-distribution windows may exceed without accumulating")
    envelope: Tail = Field(description="CUSUM of features' excursions beyond the range")
    step_window: int = Field(ge=2, description="samples per side of the step test")
    step: Tail = Field(description="step test |z| per channel")
    channels: dict[str, ChannelReference]
    alert_rate: float = Field(ge=0, le=1, description="share of training windows at or "
                              "above the threshold (out-of-fold where available)")
    alert_run: float = Field(ge=1, description="mean length of a run of alerting windows")
    life_windows: float = Field(gt=0, description="mean windows per asset life in training")


class Reference(_Card):
    """What the agent's monitors start from. ``features``: the envelope monitor centres
    each feature on its mean and measures excursions beyond its range in its standard
    deviations (a feature without one is centred on the middle of its ``range``).
    ``monitoring``: the thresholds' calibration. ``score``: the scores over the training
    windows, for people and ``linewatch calibrate`` (no monitor reads it)."""

    features: dict[str, Stats] = Field(default_factory=dict)
    score: Stats | None = None
    monitoring: Monitoring | None = Field(
        None, description="calibration of the drift and data-quality monitors; cards "
        "without it run the monitors on fixed, documented rules and say so")


class ReliabilityBin(_Card):
    """One row of a reliability table: windows whose scores fell in one equal-mass bin."""

    predicted: float = Field(ge=0, le=1, description="mean score of the bin's windows")
    observed: float = Field(ge=0, le=1, description="share of them that were positive")
    n: int = Field(ge=1, description="windows in the bin")


class CalibrationMap(_Card):
    """A monotone map from the model's score to a calibrated probability, piecewise linear
    through the points (``x``, ``y``) and constant beyond the ends (``numpy.interp``)."""

    x: list[float] = Field(min_length=2, description="scores, strictly increasing")
    y: list[float] = Field(min_length=2, description="probabilities, non-decreasing")

    @model_validator(mode="after")
    def _monotone(self) -> CalibrationMap:
        if len(self.x) != len(self.y):
            raise ValueError("calibration map: x and y differ in length")
        if any(b <= a for a, b in pairwise(self.x)):
            raise ValueError("calibration map: x must be strictly increasing")
        if any(b < a for a, b in pairwise(self.y)):
            raise ValueError("calibration map: y must be non-decreasing (a monotone map)")
        if not all(0.0 <= v <= 1.0 for v in self.y):
            raise ValueError("calibration map: y must lie in [0, 1]")
        return self


class ProbabilityCalibration(_Card):
    """How far a classifier's scores can be read as probabilities, measured on held-out
    predictions (out-of-fold, or a split the model did not train on; ``evaluated_on``).

    ``ece_before``: expected calibration error of the scores over equal-mass bins
    (``bins``), ``ece_chance`` what perfectly calibrated scores would show by chance on as
    many windows (95th percentile). ``method`` ``isotonic``: the scores are read through
    ``map`` (the model file is unchanged); ``ece_after`` and ``bins_after`` are measured on
    windows the map was not fitted on. ``calibrated``: the probabilities the agent uses
    (mapped or not) have an ECE within ``tolerance``; an agent estimates its alerts'
    precision and recall from them only then (``linewatch.probabilities`` writes it).
    """

    method: Literal["none", "isotonic"]
    calibrated: bool
    tolerance: float = Field(gt=0, le=1, description="largest ECE still called calibrated")
    evaluated_on: str = Field(description="which predictions were measured, in words")
    note: str = Field("", description="why this method, in words")
    n: int = Field(ge=1, description="windows measured")
    ece_before: float = Field(ge=0, le=1)
    ece_chance: float = Field(ge=0, le=1)
    brier_before: float = Field(ge=0, le=1)
    bins: list[ReliabilityBin] = Field(min_length=1)
    map: CalibrationMap | None = None
    ece_after: float | None = Field(None, ge=0, le=1)
    brier_after: float | None = Field(None, ge=0, le=1)
    bins_after: list[ReliabilityBin] | None = None

    @model_validator(mode="after")
    def _map_with_method(self) -> ProbabilityCalibration:
        if (self.method == "isotonic") != (self.map is not None):
            raise ValueError("calibration: a map goes with method isotonic, and only with it")
        if self.map is not None and self.ece_after is None:
            raise ValueError("calibration: a map needs its held-out ece_after")
        return self


class ModelCard(_Card):
    name: str
    version: str
    created: datetime
    description: str
    input: InputSpec
    window: WindowSpec
    features: list[FeatureSpec] = Field(min_length=1)
    output: OutputSpec
    threshold: ThresholdSpec
    sha256: Sha256Spec
    metrics: dict[str, Metric] = Field(default_factory=dict)
    self_test: SelfTest
    reference: Reference = Field(default_factory=Reference)
    training: dict[str, Any] = Field(
        default_factory=dict, description="data, seeds, hyper-parameters"
    )
    calibration: ProbabilityCalibration | None = Field(
        None, description="a classifier's scores as probabilities; cards without it (and "
        "regressors) make no performance estimate")

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        channels = {c.name for c in self.input.channels}
        for j, f in enumerate(self.features):
            missing = [c for c in f.inputs if c not in channels]
            if missing:
                raise ValueError(f"features[{j}].inputs: no channel named "
                                 f"{', '.join(map(repr, missing))} (feature {f.name!r})")
        n = len(self.features)
        if any(len(row) != n for row in self.self_test.features):
            raise ValueError(f"self_test feature rows must have {n} values")
        unknown = set(self.reference.features) - set(self.feature_names)
        if unknown:
            raise ValueError(f"reference.features names no feature {sorted(unknown)}")
        if self.output.kind == "rul":
            if self.calibration is not None:
                raise ValueError("calibration: a rul output is no probability; leave it out")
            want = self.output.rul_threshold
            if want is not None and abs(self.threshold.value - want) > 1e-6:
                raise ValueError(f"threshold.value: a rul output with horizon "
                                 f"{self.output.horizon} and cap {self.output.cap:g} alerts "
                                 f"at score {want:.6g} (1 - horizon / cap), not "
                                 f"{self.threshold.value:.6g}")
        return self

    @field_serializer("created", when_used="json")
    def _created_iso(self, value: datetime) -> str:
        # isoformat (``+00:00``), as every card has always been written, not pydantic's ``Z``.
        return value.isoformat()

    def to_json(self) -> str:
        """The text of ``card.json``: sorted keys, indented, no NaN (a ``ValueError``).
        A card without ``calibration`` is written without the key, as before it existed."""
        data = self.model_dump(mode="json")
        if data.get("calibration", 0) is None:
            del data["calibration"]
        # Keys added after cards shipped are left out at their defaults, so a card written
        # before them is written again byte for byte.
        for section, key, default in _NEW_KEYS:
            if data[section].get(key, 0) == default:
                del data[section][key]
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.input.channels]

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelCard:
        """Read ``card.json`` from a model directory."""
        path = Path(model_dir) / CARD_FILE
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise CardError(f"cannot read {path}: {exc}") from exc
        except ValidationError as exc:
            # One line, naming the field: a hand-written card can fail on dozens at once.
            raise CardError(f"{path} is not a valid model card: {one_line(exc)}") from None
        except ValueError as exc:
            raise CardError(f"{path} is not a valid model card: {exc}") from None

    def verify(self, model_dir: str | Path) -> Path:
        """Return the model file's path after checking its sha256 against the card."""
        path = Path(model_dir) / MODEL_FILE
        actual = sha256_file(path)
        if actual != self.sha256.model:
            raise CardError(f"{path} has sha256 {actual}, the card says {self.sha256.model}")
        return path


_NEW_KEYS = (("input", "table", None), ("output", "kind", "probability"),
             ("output", "unit", ""), ("output", "cap", None))


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a card's reader writes it.

    >>> field_path(("features", 3, "fn"))
    'features[3].fn'
    >>> field_path(())
    '(top level)'
    """
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def one_line(exc: ValidationError) -> str:
    """The first problem of a validation error, naming its field, and how many more.

    >>> try:
    ...     WindowSpec.model_validate({"size": 0})
    ... except ValidationError as exc:
    ...     print(one_line(exc))
    size: Input should be greater than or equal to 1 (got 0);
    and 1 more problem (hop: Field required)
    """
    errors = exc.errors()
    first = errors[0]
    # Validators' messages arrive as "Value error, <what we wrote>".
    msg = str(first["msg"]).removeprefix("Value error, ")
    if not first["loc"]:  # a check across fields: its message names them
        text = msg
    else:
        got = "" if first["type"] == "missing" or "input" not in first else \
            f" (got {_short(first['input'])})"
        text = f"{field_path(first['loc'])}: {msg}{got}"
    rest = errors[1:]
    if rest:
        named = ", ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in rest[:3])
        more = ", ..." if len(rest) > 3 else ""
        text += f"; and {len(rest)} more problem{'s' * (len(rest) > 1)} ({named}{more})"
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
