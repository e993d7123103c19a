"""Run a carded ONNX model with onnxruntime.

One session per model, one thread, no spinning: a gateway shares its cores with the
publisher and the monitors, and an idle spinning thread would burn them between ticks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.features import check_spec
from contract.card import CARD_FILE, CardError, ModelCard

__all__ = ["OnnxModel", "SelfTestError", "output_column"]

logger = logging.getLogger(__name__)


class SelfTestError(CardError):
    """The model's outputs on the card's self-test inputs differ from the card's."""


class OnnxModel:
    """A model directory (``model.onnx`` + ``card.json``) loaded and self-tested.

    ``run(features)`` takes float32 (n, n_features) in card order and returns each row's
    score in [0, 1] (the positive-class probability, or a remaining life read as the card's
    ``output`` says); ``predict(features)`` returns the output's own values.
    """

    def __init__(self, model_dir: str | Path, *, self_test: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.card = ModelCard.load(self.model_dir)
        for j, spec in enumerate(self.card.features):
            problem = check_spec(spec, self.card.channel_names)
            if problem is not None:
                raise CardError(f"{self.model_dir / CARD_FILE}: features[{j}].{problem}")
        path = self.card.verify(self.model_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self.card.output.name
        outputs = {o.name: o for o in self._session.get_outputs()}
        if self._output not in outputs:
            raise CardError(f"card output {self._output!r} not among model outputs "
                            f"{list(outputs)}")
        # skl2onnx's and onnxmltools' ZipMap: one {class: probability} dict per row.
        self._zipmap = outputs[self._output].type.startswith("seq(map(")
        if self_test:
            self.self_test()

    @property
    def n_features(self) -> int:
        return len(self.card.features)

    def run(self, features: np.ndarray) -> np.ndarray:
        """Scores in [0, 1] (a probability as it is; a remaining life through the card's
        ``output.cap``)."""
        return np.asarray(self.card.output.to_score(self.predict(features)))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Column ``output.index`` of the card's output, as the model computes it."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {x.shape}")
        if len(x) == 0:
            return np.empty(0, dtype=np.float64)
        (out,) = self._session.run([self._output], {self._input: x})
        return output_column(out, self.card.output.index, len(x), zipmap=self._zipmap)

    def self_test(self) -> None:
        """Score the card's self-test inputs; raise SelfTestError on any mismatch."""
        st = self.card.self_test
        got = self.predict(np.array(st.features, dtype=np.float32))
        want = np.array(st.expected, dtype=np.float64)
        worst = float(np.max(np.abs(got - want)))
        if worst > st.tolerance:
            raise SelfTestError(
                f"{self.model_dir}: self-test off by {worst:.3g} (tolerance {st.tolerance})"
            )
        logger.info("model %s %s passed its self-test (%d cases)", self.card.name,
                    self.card.version, len(want))


def output_column(out: object, index: int, n: int, *, zipmap: bool = False) -> np.ndarray:
    """Column ``index`` of one ONNX output for ``n`` rows, float64: a (n, k) or (n,)
    tensor, or a ZipMap's list of ``{class: probability}`` (``index``: the class's place
    among the sorted classes, as in the tensor a ZipMap is made from).

    >>> output_column(np.array([[0.2, 0.8]], dtype=np.float32), 1, 1).round(4)
    array([0.8])
    >>> output_column([{0: 0.25, 1: 0.75}], 1, 1, zipmap=True)
    array([0.75])
    >>> output_column(np.array([7.0, 9.0]), 0, 2)
    array([7., 9.])
    """
    if zipmap:
        rows = list(out)  # type: ignore[call-overload]
        keys = sorted(rows[0]) if rows else []
        if index >= len(keys):
            raise CardError(f"output.index {index}: the model has {len(keys)} classes")
        key = keys[index]
        return np.fromiter((row[key] for row in rows), dtype=np.float64, count=len(rows))
    arr = np.asarray(out, dtype=np.float64).reshape(n, -1)
    if index >= arr.shape[1]:
        raise CardError(f"output.index {index}: the output has {arr.shape[1]} column(s)")
    return arr[:, index]
