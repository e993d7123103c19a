"""linewatch.evaluate on the real files: the agent's path reproduces the cards' metrics.

The card's numbers come from the ONNX reference evaluator on the machine that trained the
model, evaluate's from onnxruntime on this one: they agree to float noise (a rounded metric
may tip at its 4th decimal), and exactly on counts (alerts right, positives caught), so
they are compared with :func:`linewatch.cards.value_differences`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from linewatch.cards import value_differences
from linewatch.evaluate import evaluate, format_report

MODELS = Path(__file__).resolve().parents[2] / "models"
DATA = MODELS / "data"


def _card(name: str) -> dict:
    return json.loads((MODELS / name / "card.json").read_text())


def test_fd001_test_with_truth_reproduces_the_card() -> None:
    result = evaluate(MODELS / "cmapss_fd001", DATA / "cmapss_fd001/test_FD001.txt.gz",
                      truth=DATA / "cmapss_fd001/RUL_FD001.txt")
    card = _card("cmapss_fd001")
    assert result["counts"]["assets"] == 100 and result["counts"]["windows"] > 10_000
    assert result["metrics"]
    for name, metric in result["metrics"].items():
        assert value_differences(card["metrics"][f"test_{name}"], metric) == [], name
    assert result["metrics"]["window_roc_auc"]["value"] > 0.95
    json.dumps(result, allow_nan=False)
    text = format_report(result)
    assert "window_f1" in text and "cmapss_fd001" in text


def test_fd001_run_to_failure_file_carries_its_own_truth() -> None:
    result = evaluate(MODELS / "cmapss_fd001", DATA / "cmapss_fd001/train_FD001.txt.gz")
    m = result["metrics"]
    assert m["last_window_recall"]["value"] > 0.9  # every engine's last window is positive
    assert m["window_roc_auc"]["ci95"][0] <= m["window_roc_auc"]["value"]


def test_fd001_test_without_truth_reports_scores_only() -> None:
    result = evaluate(MODELS / "cmapss_fd001", DATA / "cmapss_fd001/test_FD001.txt.gz")
    assert result["metrics"] == {} and result["counts"]["alerts"] > 0
    assert "--truth" in format_report(result)


def test_ai4i_held_out_rows_reproduce_the_card() -> None:
    result = evaluate(MODELS / "ai4i2020", DATA / "ai4i2020/ai4i2020.csv")
    card = _card("ai4i2020")
    assert result["counts"]["windows"] == 10_000
    held = result["holdout"]
    assert held["windows"] == 2000
    for name, metric in held["metrics"].items():
        assert value_differences(card["metrics"][f"test_{name}"], metric) == [], name
    assert held["metrics"]["f1"]["value"] > 0.7


def test_ims_snapshots_reproduce_the_in_sample_card_metrics() -> None:
    result = evaluate(MODELS / "ims_bearing", DATA / "ims_bearing_test2/2nd_test")
    card = _card("ims_bearing")
    assert result["counts"]["windows"] == 4 * 13 * 10
    assert result["metrics"]
    for name, metric in result["metrics"].items():
        assert value_differences(card["metrics"][f"insample_{name}"], metric) == [], name
    per = result["per_asset"]
    assert per["bearing-1"]["score_mean"] > per["bearing-4"]["score_mean"]


def test_wrong_format_file_fails_loudly() -> None:
    from agent.datasets import DatasetError

    with pytest.raises(DatasetError):
        evaluate(MODELS / "cmapss_fd001", DATA / "ai4i2020/ai4i2020.csv")


def test_fd001_rul_model_reproduces_its_rmse() -> None:
    result = evaluate(MODELS / "cmapss_fd001_rul", DATA / "cmapss_fd001/test_FD001.txt.gz",
                      truth=DATA / "cmapss_fd001/RUL_FD001.txt")
    card = _card("cmapss_fd001_rul")
    assert "last_window_rul_rmse" in result["metrics"]
    for name, metric in result["metrics"].items():
        assert value_differences(card["metrics"][f"test_{name}"], metric) == [], name
    assert result["metrics"]["last_window_rul_rmse"]["value"] < 16
