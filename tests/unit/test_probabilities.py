"""A classifier's scores as probabilities: what the card records (``calibration``), how the
recalibration map is fitted and judged, and how ``linewatch calibrate`` writes it for the
shipped cards without touching the model file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.estimate import apply_map
from contract.card import CARD_FILE, MODEL_FILE, CalibrationMap, ModelCard, sha256_file
from linewatch.calibration import probability_step, run_calibration
from linewatch.cards import MAP_TOLERANCE, card_differences
from linewatch.probabilities import (
    TOLERANCE,
    card_section,
    ece,
    fit_map,
    measure,
    reliability,
    with_section,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DATA = MODELS / "data"
CLASSIFIERS = ("cmapss_fd001", "ai4i2020", "ims_bearing")


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities sigmoid(z) and scores sigmoid(3 z): right
    order, far too sure of themselves."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return y, 1 / (1 + np.exp(-3 * z))


def _folds(n: int, k: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    idx = np.arange(n)
    return [(np.setdiff1d(idx, part), part) for part in np.array_split(idx, k)]


def test_the_recalibration_map_is_monotone_and_improves_ece_on_held_out_data() -> None:
    y, p = _overconfident(4000, seed=1)
    fit_y, fit_p, held_y, held_p = y[:2000], p[:2000], y[2000:], p[2000:]
    m = fit_map(fit_y, fit_p)
    assert all(b > a for a, b in zip(m.x, m.x[1:], strict=False))
    assert all(b >= a for a, b in zip(m.y, m.y[1:], strict=False))
    mapped = apply_map(m, held_p)
    # Monotone: the map never reorders two windows (so the ROC curve is the model's).
    order = np.argsort(held_p, kind="stable")
    assert np.all(np.diff(mapped[order]) >= 0)
    before, after = ece(held_y, held_p), ece(held_y, mapped)
    assert before > 0.08 and after < before / 2, (before, after)


def test_measure_fits_a_map_only_beyond_chance_and_judges_it_held_out() -> None:
    y, p = _overconfident(4000, seed=2)
    cal = measure(y, p, _folds(len(y)), evaluated_on="synthetic")
    assert cal.method == "isotonic" and cal.map is not None
    assert cal.ece_before > cal.ece_chance
    assert cal.ece_after is not None and cal.ece_after < cal.ece_before
    assert cal.calibrated and cal.ece_after <= TOLERANCE
    assert cal.brier_after is not None and cal.brier_after < cal.brier_before
    assert sum(b.n for b in cal.bins) == len(y) == cal.n

    # Calibrated by construction: labels drawn from the scores themselves.
    rng = np.random.default_rng(3)
    q = rng.beta(0.5, 2.0, size=4000)
    yq = (rng.random(len(q)) < q).astype(float)
    fine = measure(yq, q, _folds(len(q)), evaluated_on="synthetic")
    assert fine.method == "none" and fine.map is None and fine.ece_after is None
    assert fine.calibrated and fine.ece_before <= fine.ece_chance

    strict = measure(y, p, _folds(len(y)), evaluated_on="synthetic", tolerance=1e-6)
    assert not strict.calibrated


def test_reliability_bins_have_equal_mass() -> None:
    y, p = _overconfident(1003, seed=4)
    bins = reliability(y, p)
    assert [b.n for b in bins] == [101, 101, 101] + [100] * 7
    assert [b.predicted for b in bins] == sorted(b.predicted for b in bins)


def test_a_map_must_be_monotone() -> None:
    with pytest.raises(ValidationError, match="non-decreasing"):
        CalibrationMap(x=[0.1, 0.5, 0.9], y=[0.0, 0.6, 0.4])
    with pytest.raises(ValidationError, match="strictly increasing"):
        CalibrationMap(x=[0.1, 0.1], y=[0.0, 0.5])


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_shipped_classifier_records_its_calibration(name: str) -> None:
    card = ModelCard.load(MODELS / name)
    cal = card.calibration
    assert cal is not None and cal.calibrated
    assert "out-of-fold" in cal.evaluated_on
    assert cal.method == "isotonic" and cal.map is not None and cal.ece_after is not None
    assert cal.ece_after < cal.ece_before
    assert all(b >= a for a, b in zip(cal.map.y, cal.map.y[1:], strict=False))
    assert card_section(cal) in (MODELS / name / "CARD.md").read_text()


def test_the_regressor_has_no_calibration() -> None:
    card = ModelCard.load(MODELS / "cmapss_fd001_rul")
    assert card.calibration is None
    assert probability_step(card, DATA / "cmapss_fd001" / "train_FD001.txt.gz") == (
        None, "a regressor: its score is not a probability")


def test_the_command_rebuilds_the_shipped_calibration_from_the_out_of_fold_scores() -> None:
    """IMS, the quickest to rebuild: what ``linewatch calibrate`` computes is what the card
    holds (training computed it the same way: test_models compares a retrained card)."""
    card = ModelCard.load(MODELS / "ims_bearing")
    fresh, why_not = probability_step(card, DATA / "ims_bearing_test2" / "2nd_test")
    assert why_not == "" and fresh is not None
    assert card.calibration is not None
    assert card_differences(card.model_copy(update={"calibration": fresh}), card) == []


def test_the_command_writes_the_card_and_card_md_but_not_the_model(tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(MODELS / "ims_bearing", tmp_path / "ims_bearing"))
    shipped_md = (model_dir / "CARD.md").read_text()
    data = json.loads((model_dir / CARD_FILE).read_text())
    del data["calibration"]  # as the card was before calibrations existed
    (model_dir / CARD_FILE).write_text(json.dumps(data))
    start = shipped_md.index("## How far its scores")
    end = shipped_md.index("## How it was built")
    (model_dir / "CARD.md").write_text(shipped_md[:start] + shipped_md[end:])
    onnx_sha = sha256_file(model_dir / MODEL_FILE)

    text = run_calibration(model_dir, DATA / "ims_bearing_test2" / "2nd_test", write=True)
    assert "isotonic map" in text and "written to ims_bearing/card.json (calibration)" in text
    assert sha256_file(model_dir / MODEL_FILE) == onnx_sha
    assert ModelCard.load(model_dir).verify(model_dir)
    assert (model_dir / "CARD.md").read_text() == shipped_md
    # The shipped card, up to the float noise of another run (BLAS kernels, threads).
    written = ModelCard.load(model_dir)
    assert card_differences(written, ModelCard.load(MODELS / "ims_bearing")) == []
    assert written.calibration is not None and written.calibration.method == "isotonic"
    # Again: the section is replaced, not added twice.
    run_calibration(model_dir, DATA / "ims_bearing_test2" / "2nd_test", write=True)
    assert (model_dir / "CARD.md").read_text() == shipped_md


def test_other_data_or_another_model_gets_no_calibration_and_a_reason(tmp_path: Path) -> None:
    card = ModelCard.load(MODELS / "cmapss_fd001")
    test_file = DATA / "cmapss_fd001" / "test_FD001.txt.gz"
    cal, why = probability_step(card, test_file)
    assert cal is None and "is not the training data the card names" in why
    other = card.model_copy(update={"name": "press_vibration"})
    cal, why = probability_step(other, test_file)
    assert cal is None and "not a model of linewatch's factory" in why
    copy = tmp_path / "cmapss_fd001" / "train_FD001.txt.gz"
    copy.parent.mkdir()
    copy.write_bytes(b"1 1 " + b"0 " * 24 + b"\n")
    cal, why = probability_step(card, copy)
    assert cal is None and "differ from the card's" in why


def test_a_card_without_calibration_loads_and_is_written_back_unchanged() -> None:
    data = json.loads((MODELS / "cmapss_fd001" / CARD_FILE).read_text())
    del data["calibration"]
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    card = ModelCard.model_validate_json(text)
    assert card.calibration is None
    assert card.to_json() == text


def test_card_md_section_is_replaced_in_place() -> None:
    card = ModelCard.load(MODELS / "cmapss_fd001")
    assert card.calibration is not None
    md = (MODELS / "cmapss_fd001" / "CARD.md").read_text()
    assert with_section(md, card.calibration) == md


def test_float_noise_in_a_map_is_not_a_difference_but_a_moved_map_is() -> None:
    shipped = ModelCard.load(MODELS / "cmapss_fd001")
    data = json.loads((MODELS / "cmapss_fd001" / CARD_FILE).read_text())
    m = data["calibration"]["map"]
    # Another machine: knots moved in their last digits, and one flat knot merged away.
    m["x"] = [v * (1 + 1e-7) if 0 < i < len(m["x"]) - 1 else v for i, v in enumerate(m["x"])]
    flat = next(i for i in range(1, len(m["y"]) - 1) if m["y"][i] == m["y"][i + 1])
    del m["x"][flat], m["y"][flat]
    assert card_differences(ModelCard.model_validate(data), shipped) == []
    data["calibration"]["map"]["y"] = [min(1.0, v + 0.05) for v in m["y"]]
    diffs = card_differences(ModelCard.model_validate(data), shipped)
    assert len(diffs) == 1 and diffs[0].startswith("calibration.map: mean |difference|")
    assert float(diffs[0].split()[-4]) > MAP_TOLERANCE
