"""The shipped models: ONNX equals scikit-learn, self-tests pass, hashes match, training is
reproducible.

Each model is retrained once per run with ``search=False`` (the hyper-parameters the last
search recorded) into a scratch directory; that retrain is "training twice" against the
shipped card, whose metrics must come out byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from agent.datasets import read_recordings
from agent.inference import OnnxModel
from contract.card import MODEL_FILE, ModelCard, sha256_file
from linewatch.training import NAMES, fit
from linewatch.training.common import Trained, default_models_root, metrics_json

MODELS = default_models_root()
DATA = MODELS / "data"


@pytest.fixture(scope="module", params=NAMES)
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return fit(request.param, tmp_path_factory.mktemp(request.param), search=False)


def _ort(path: Path, X: np.ndarray, output: str) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run([output], {sess.get_inputs()[0].name: X})
    return np.asarray(out, dtype=np.float64)


def test_onnx_equals_training_library(trained: Trained) -> None:
    card = ModelCard.load(trained.model_dir)
    got = _ort(trained.model_dir / MODEL_FILE, trained.X_test, card.output.name)
    got = got.reshape(len(trained.X_test), -1)[:, card.output.index]
    est = trained.estimator
    want = (est.predict_proba(trained.X_test)[:, 1] if hasattr(est, "predict_proba")
            else est.predict(trained.X_test))
    assert len(want) > 50
    assert np.max(np.abs(got - want)) < 1e-5


def test_retraining_gives_identical_metrics(trained: Trained) -> None:
    shipped = json.loads((MODELS / trained.card["name"] / "card.json").read_text())
    assert metrics_json(trained.card) == metrics_json(shipped)
    assert trained.card["threshold"] == shipped["threshold"]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_passes_its_self_test(name: str) -> None:
    model = OnnxModel(MODELS / name)  # raises on a sha256 or self-test mismatch
    st = model.card.self_test
    assert 5 <= len(st.expected) <= 10
    assert min(st.expected) < model.card.threshold.value <= max(st.expected)


@pytest.mark.parametrize("name", NAMES)
def test_reference_evaluator_agrees_with_onnxruntime(name: str) -> None:
    card = ModelCard.load(MODELS / name)
    path = MODELS / name / MODEL_FILE
    X = np.array(card.self_test.features, dtype=np.float32)
    (ref,) = ReferenceEvaluator(onnx.load(path)).run([card.output.name], {"features": X})
    got = _ort(path, X, card.output.name)
    assert np.max(np.abs(np.asarray(ref, dtype=np.float64) - got)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_shipped_card_hashes_match_files(name: str) -> None:
    card = ModelCard.load(MODELS / name)
    assert sha256_file(MODELS / name / MODEL_FILE) == card.sha256.model
    assert card.sha256.data
    extra = card.training.get("evaluation_data_sha256", {})
    for rel, digest in {**card.sha256.data, **extra}.items():
        assert sha256_file(DATA / rel) == digest, rel


@pytest.mark.parametrize("name", NAMES)
def test_card_matches_the_data_format(name: str) -> None:
    card = ModelCard.load(MODELS / name)
    rel = next(iter(card.sha256.data))
    path = DATA / rel
    if card.input.format == "ims":
        path = path.parent
    rec = read_recordings(path, card.input.format)[0]
    assert card.channel_names == list(rec.channels)
    assert set(card.reference.features) == set(card.feature_names)
    for f in card.features:
        assert f.range is not None and f.range[0] <= f.range[1]
    assert (MODELS / name / "CARD.md").read_text().startswith(f"# {name} ")


def test_training_never_imports_onnxruntime() -> None:
    import subprocess
    import sys

    code = ("import sys, linewatch.training.common, linewatch.training.cmapss_fd001; "
            "sys.exit('onnxruntime' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
