"""What an ONNX file exported elsewhere offers the agent, read with onnxruntime (the
gateway's own runtime): which input it takes, which output holds the score, and, for an
export the agent cannot use, exactly what to change.

Known exports and what they give:

- skl2onnx, default: ``output_label`` and ``output_probability``, a sequence of
  ``{class: probability}`` maps (ZipMap); with ``options={'zipmap': False}``:
  ``label`` and ``probabilities`` (n, 2). Both work; the tensor is faster.
- onnxmltools (LightGBM, XGBoost): ``label`` and ``probabilities``, ZipMap or tensor
  (``zipmap=False``); a regressor's ``variable`` (n, 1).
- torch.onnx.export: one float output (n, 1) or (n,) - a probability after a sigmoid, or a
  remaining life.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import CardError

__all__ = ["Export", "open_export"]

_BATCH = 65_536  # rows per onnxruntime call: bounded memory for a large training set
_PROBABILITY_NAMES = ("probabilities", "output_probability", "probability")


@dataclass(frozen=True)
class Export:
    """An ONNX file the agent can run: its input, the output chosen and how to read it."""

    path: Path
    input: str
    n_features: int | None
    output: str
    index: int
    zipmap: bool
    run: Callable[[np.ndarray], np.ndarray]


def open_export(path: str | Path, *, n_features: int, kind: str, output: str | None = None,
                index: int | None = None) -> Export:
    """Open ``path`` with onnxruntime and check it against what the agent feeds it
    (float32 rows of ``n_features``); choose the output (``kind``: probability or rul)
    unless ``output`` names one. Raises :class:`CardError`, one line saying what to change."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CardError("reading an ONNX export needs onnxruntime: pip install "
                        "'linewatch[agent]'") from None
    from agent.inference import output_column

    path = Path(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes, all at load
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CardError(f"{path}: onnxruntime {ort.__version__} cannot load it: {first[:200]}"
                        "; export with an opset it supports (e.g. target_opset 17)") from None
    name, width = _input(path, sess.get_inputs(), n_features)
    outputs = {o.name: o.type for o in sess.get_outputs()}
    chosen = output if output is not None else _choose(path, outputs, kind)
    if chosen not in outputs:
        raise CardError(f"{path}: output.name: no output {chosen!r}; it has "
                        f"{', '.join(f'{k} ({v})' for k, v in outputs.items())}")
    kind_of = outputs[chosen]
    zipmap = kind_of.startswith("seq(map(")
    if not zipmap and kind_of not in ("tensor(float)", "tensor(double)"):
        raise CardError(f"{path}: output {chosen!r} is {kind_of}, not scores: name the "
                        f"output holding them in output.name (outputs: {', '.join(outputs)})")
    probe = np.zeros((2, n_features), dtype=np.float32)
    try:
        (out,) = sess.run([chosen], {name: probe})
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise CardError(f"{path}: running it on 2 rows of {n_features} features fails: "
                        f"{first[:200]}; export with a dynamic batch dimension") from None
    columns = len(out[0]) if zipmap else int(np.asarray(out).reshape(2, -1).shape[1])
    if index is None:
        index = 1 if kind == "probability" and columns == 2 else 0
        if columns > 2 or (kind == "rul" and columns != 1):
            raise CardError(f"{path}: output {chosen!r} has {columns} columns: say which "
                            "one is the score in output.index")
    elif index >= columns:
        raise CardError(f"{path}: output.index {index}: output {chosen!r} has {columns} "
                        "column(s)")

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = [output_column(sess.run([chosen], {name: x[i:i + _BATCH]})[0], index,
                               len(x[i:i + _BATCH]), zipmap=zipmap)
                 for i in range(0, len(x), _BATCH)]
        return np.concatenate(parts) if parts else np.empty(0)

    return Export(path, name, width, chosen, index, zipmap, run)


def _input(path: Path, inputs: list[Any], n_features: int) -> tuple[str, int | None]:
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise CardError(f"{path} has {len(inputs)} inputs ({names}): the agent feeds one "
                        f"float32 (n, {n_features}) tensor of the features in card order; "
                        "export with one input (skl2onnx: one FloatTensorType for all "
                        "columns; torch: one tensor argument)")
    (i,) = inputs
    if i.type != "tensor(float)":
        raise CardError(f"{path}: input {i.name!r} is {i.type}: the agent feeds float32; "
                        "export with a float input (skl2onnx: FloatTensorType or "
                        "X.astype(np.float32); torch: model.float() and a float32 example)")
    shape = list(i.shape)
    if len(shape) != 2:
        raise CardError(f"{path}: input {i.name!r} has shape {shape}: the agent feeds "
                        f"(n, {n_features}) rows; export on the feature rows, batch first")
    width = shape[1] if isinstance(shape[1], int) else None
    if width is not None and width != n_features:
        raise CardError(f"{path}: input {i.name!r} takes {width} features, the spec lists "
                        f"{n_features}: list the features the model was trained on, in "
                        "its column order")
    if isinstance(shape[0], int):
        # A fixed batch of one is torch.onnx.export's default without dynamic_axes.
        raise CardError(f"{path}: input {i.name!r} takes exactly {shape[0]} row(s): export "
                        f"with a dynamic batch dimension (torch.onnx.export(..., "
                        f"dynamic_axes={{'{i.name}': {{0: 'n'}}}}))")
    return i.name, width


def _choose(path: Path, outputs: dict[str, str], kind: str) -> str:
    scores = [k for k, v in outputs.items()
              if v.startswith("seq(map(") or v in ("tensor(float)", "tensor(double)")]
    if kind == "probability":
        named = [k for k in scores if k in _PROBABILITY_NAMES]
        if named:
            return named[0]
    if len(scores) == 1:
        return scores[0]
    listed = ", ".join(f"{k} ({v})" for k, v in outputs.items())
    raise CardError(f"{path}: cannot tell which output holds the score ({listed}): name it "
                    "in output.name")
