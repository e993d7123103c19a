"""The spec of a model trained elsewhere: what ``linewatch features`` and ``linewatch card``
need to know that neither the ONNX file nor the data say.

A small YAML file, in the model card's own words (``contract.card``), so what it says
reaches the card unchanged::

    name: engine_risk
    version: 1.0.0
    description: turbofan fails within 30 cycles
    input:
      time_unit: cycle
      table: {asset: engine, time: cycle, labels: {rul: RUL}}
      channels: [{name: T24, unit: degR}, {name: Ps30, unit: psia}]
    window: {size: 30, hop: 1}
    features:
      - {name: T24.mean, fn: mean, inputs: [T24]}
    output: {kind: probability, horizon: 30}
    truth: {life: rul}          # or {label: failure}: 1 = positive
    target_precision: 0.9       # or threshold: 0.5

Every problem is one line naming the file and the field (``spec.yaml: features[3].fn:
unknown function 'median' (known: ...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.features import check_spec
from contract.card import FeatureSpec, InputSpec, WindowSpec, one_line
from contract.errors import CardError

__all__ = ["CardSpec", "OutputPlan", "Truth", "load_spec"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutputPlan(_Spec):
    """The card's ``output``, with what can be read off the ONNX file left out: ``name``
    (default: the file's probabilities, or its only float output) and ``index`` (default:
    the positive class's column, 1 of two, or 0 of one)."""

    kind: str = Field("probability", description="probability or rul")
    name: str | None = None
    index: int | None = Field(None, ge=0)
    horizon: int | None = Field(None, ge=0, description="failure horizon in input.time_unit")
    unit: str = ""
    cap: float | None = Field(None, gt=0)
    meaning: str | None = None


class Truth(_Spec):
    """Which windows are positive: those whose newest sample has ``label`` 1, or a
    remaining ``life`` of at most ``output.horizon``. Names a label of the data (a key of
    ``input.table.labels``, or a shipped format's: ``rul``, ``failure``, ``degraded``)."""

    label: str | None = None
    life: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Truth:
        if (self.label is None) == (self.life is None):
            raise ValueError("give label (a 0/1 column) or life (a remaining-life column)")
        return self

    @property
    def column(self) -> str:
        return self.label or self.life or ""


class CardSpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    version: str = "1.0.0"
    description: str = ""
    input: InputSpec
    window: WindowSpec
    features: list[FeatureSpec] = Field(min_length=1)
    output: OutputPlan = Field(default_factory=OutputPlan)
    truth: Truth | None = None
    target_precision: float | None = Field(None, gt=0, le=1)
    threshold: float | None = Field(None, ge=0, le=1, description="a fixed alert threshold "
                                    "instead of one chosen for target_precision")

    @model_validator(mode="after")
    def _consistent(self) -> CardSpec:
        if self.output.kind not in ("probability", "rul"):
            raise ValueError(f"output.kind: {self.output.kind!r} is neither probability nor "
                             "rul")
        if self.output.kind == "rul" and (self.output.horizon is None or
                                          self.output.cap is None or not self.output.unit):
            raise ValueError("output: a rul output needs horizon (alert at a predicted life "
                             "this short), cap (the life read as score 0, above horizon) and "
                             "unit (cycles, hours)")
        if self.truth is not None and self.truth.life is not None and self.output.horizon \
                is None:
            raise ValueError("output.horizon: truth.life needs it (a window is positive when "
                             "its remaining life is at most the horizon)")
        if self.output.kind == "probability" and self.threshold is None and \
                self.target_precision is None:
            raise ValueError("target_precision: give it (the threshold is chosen for it on "
                             "held-out data), or a fixed threshold")
        if self.output.kind == "probability" and self.target_precision is not None and \
                self.truth is None:
            raise ValueError("truth: target_precision needs to know which windows are "
                             "positive: truth: {label: COLUMN} or {life: COLUMN}")
        return self


def load_spec(path: str | Path) -> CardSpec:
    """Read and check a spec file; every problem is a :class:`CardError` of one line."""
    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CardError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise CardError(f"{path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") \
            from None
    try:
        spec = CardSpec.model_validate(data)
    except ValidationError as exc:
        raise CardError(f"{path}: {one_line(exc)}") from None
    channels = [c.name for c in spec.input.channels]
    for j, f in enumerate(spec.features):
        problem = check_spec(f, channels)
        if problem is not None:
            raise CardError(f"{path}: features[{j}].{problem}")
    names = [f.name for f in spec.features]
    for j, n in enumerate(names):
        if n in names[:j]:
            raise CardError(f"{path}: features[{j}].name: {n!r} is taken by "
                            f"features[{names.index(n)}]")
    return spec
