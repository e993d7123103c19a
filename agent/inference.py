"""Run a carded ONNX model with onnxruntime.

One session per model, one thread, no spinning: a gateway shares its cores with the
publisher and the monitors, and an idle spinning thread would burn them between ticks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.card import CardError, ModelCard

__all__ = ["OnnxModel", "SelfTestError"]

logger = logging.getLogger(__name__)


class SelfTestError(CardError):
    """The model's outputs on the card's self-test inputs differ from the card's."""


class OnnxModel:
    """A model directory (``model.onnx`` + ``card.json``) loaded and self-tested.

    ``run(features)`` takes float32 (n, n_features) in card order and returns the
    positive-class probability for each row.
    """

    def __init__(self, model_dir: str | Path, *, self_test: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.card = ModelCard.load(self.model_dir)
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
        names = [o.name for o in self._session.get_outputs()]
        if self._output not in names:
            raise CardError(f"card output {self._output!r} not among model outputs {names}")
        if self.card.output.index < 0:
            raise CardError("output.index must be >= 0")
        if self_test:
            self.self_test()

    @property
    def n_features(self) -> int:
        return len(self.card.features)

    def run(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {x.shape}")
        if len(x) == 0:
            return np.empty(0, dtype=np.float64)
        (probs,) = self._session.run([self._output], {self._input: x})
        return np.asarray(probs, dtype=np.float64)[:, self.card.output.index]

    def self_test(self) -> None:
        """Score the card's self-test inputs; raise SelfTestError on any mismatch."""
        st = self.card.self_test
        got = self.run(np.array(st.features, dtype=np.float32))
        want = np.array(st.expected, dtype=np.float64)
        worst = float(np.max(np.abs(got - want)))
        if worst > st.tolerance:
            raise SelfTestError(
                f"{self.model_dir}: self-test off by {worst:.3g} (tolerance {st.tolerance})"
            )
        logger.info("model %s %s passed its self-test (%d cases)", self.card.name,
                    self.card.version, len(want))
