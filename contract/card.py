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

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

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
    "Tail",
    "ThresholdSpec",
    "WindowSpec",
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


class InputSpec(_Card):
    format: Literal["cmapss", "ai4i", "ims"] = Field(
        description="file format of recorded data for replay and evaluation"
    )
    channels: list[ChannelSpec] = Field(min_length=1, description="channels, in window order")
    rate_hz: float | None = Field(None, description="sampling rate of high-rate signals")
    time_unit: str = Field("sample", description="what one step between samples means")


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
    name: str = Field(description="ONNX output holding class probabilities (n, 2)")
    index: int = Field(1, description="column of the positive class")
    meaning: str
    horizon: int | None = Field(None, description="failure horizon, in input.time_unit")


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
    features: dict[str, Stats]
    score: Stats
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
    reference: Reference
    training: dict[str, Any] = Field(
        default_factory=dict, description="data, seeds, hyper-parameters"
    )
    calibration: ProbabilityCalibration | None = Field(
        None, description="a classifier's scores as probabilities; cards without it (and "
        "regressors) make no performance estimate")

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        channels = {c.name for c in self.input.channels}
        for f in self.features:
            missing = set(f.inputs) - channels
            if missing:
                raise ValueError(f"feature {f.name!r} reads unknown channels {sorted(missing)}")
        n = len(self.features)
        if any(len(row) != n for row in self.self_test.features):
            raise ValueError(f"self_test feature rows must have {n} values")
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
        except ValueError as exc:
            raise CardError(f"{path} is not a valid model card: {exc}") from exc

    def verify(self, model_dir: str | Path) -> Path:
        """Return the model file's path after checking its sha256 against the card."""
        path = Path(model_dir) / MODEL_FILE
        actual = sha256_file(path)
        if actual != self.sha256.model:
            raise CardError(f"{path} has sha256 {actual}, the card says {self.sha256.model}")
        return path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
