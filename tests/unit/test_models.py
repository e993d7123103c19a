"""The shipped models: ONNX equals scikit-learn, self-tests pass, hashes match, training is
reproducible.

Each model is retrained once per run with ``search=False`` (the hyper-parameters the last
search recorded) into a scratch directory; that retrain is "training twice" against the
shipped card. The card it writes must be the shipped one up to float noise: on another CPU
or BLAS kernel the last digits of trained numbers move, so the comparison
(:func:`linewatch.cards.card_differences`) allows a relative 1e-4 on floats and nothing on
counts, texts and data sha256s; the tests after it show that it still catches a real change
of features, hyper-parameters or data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from agent.datasets import read_recordings
from agent.inference import OnnxModel
from contract.card import MODEL_FILE, ModelCard, sha256_file
from linewatch.cards import card_differences
from linewatch.training import NAMES, fit, ims_bearing
from linewatch.training import common as training_common
from linewatch.training.common import Trained, default_models_root

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


def test_retraining_reproduces_the_shipped_card(trained: Trained) -> None:
    shipped = ModelCard.load(MODELS / trained.card.name)
    assert card_differences(trained.card, shipped) == []
    # What was written is what was returned.
    assert ModelCard.load(trained.model_dir) == trained.card


def _drop_a_feature(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path | None:
    specs = ims_bearing.feature_specs
    monkeypatch.setattr(ims_bearing, "feature_specs", lambda: specs()[:-1])
    return None


def _change_a_hyperparameter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path | None:
    recorded = training_common.recorded_search

    def search(name: str, default: dict) -> tuple[dict, object]:
        hp, results = recorded(name, default)
        return {**hp, "C": hp["C"] * 10}, results

    monkeypatch.setattr(training_common, "recorded_search", search)
    return None


def _perturb_one_bearing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path | None:
    """Bearing 1's signal 10 % stronger in the first (healthy) snapshot of a data copy."""
    src = DATA / "ims_bearing_test2"
    dst = tmp_path / "data" / "ims_bearing_test2"
    shutil.copytree(src, dst)
    first = sorted((dst / "2nd_test").iterdir())[0]
    rows = [line.split("\t") for line in first.read_text().splitlines()]
    first.write_bytes("".join(
        "\t".join([f"{1.1 * float(r[0]):.3f}", *r[1:]]) + "\r\n" for r in rows).encode())
    return tmp_path


@pytest.mark.parametrize("change", [_drop_a_feature, _change_a_hyperparameter,
                                    _perturb_one_bearing], ids=lambda f: f.__name__[1:])
def test_the_reproducibility_check_catches_a_real_change(
    change, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """IMS, the fastest model to train, retrained with one real change: the comparison that
    passes the plain retrain above must fail, and on the model's numbers (scores,
    threshold, metrics or features), not only on what the training section records."""
    root = change(monkeypatch, tmp_path) or tmp_path
    changed = fit(ims_bearing.NAME, root, search=False).card
    diffs = card_differences(changed, ModelCard.load(MODELS / ims_bearing.NAME))
    on_the_model = [d for d in diffs
                    if d.startswith(("features", "reference", "threshold", "metrics"))]
    assert on_the_model, diffs


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
