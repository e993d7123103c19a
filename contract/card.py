"""Model card: everything the agent must know to serve a model exactly as it was trained.

``card.json`` sits beside ``model.onnx``. The agent takes the input channels, the window
size and hop, the feature names and order, the output to read, the alert threshold, the
self-test cases and the drift monitors' reference statistics from it. Nothing about a
model is hard-coded in the agent.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.errors import CardError

__all__ = [
    "CARD_FILE",
    "MODEL_FILE",
    "CardError",
    "ChannelReference",
    "ChannelSpec",
    "FeatureSpec",
    "InputSpec",
    "Metric",
    "ModelCard",
    "Monitoring",
    "OutputSpec",
    "Reference",
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
    model_config = ConfigDict(extra="forbid", frozen=True)


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
