"""``linewatch card`` on the usual exports of a model trained elsewhere, a remaining-life
output, and every refusal in one line naming the field. Small synthetic tables: two
channels, 12 assets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.estimate import PerformanceEstimator
from agent.inference import OnnxModel
from contract.card import CardError
from linewatch.cli import main
from linewatch.ownmodel import card_for_export, frames_of, write_model_dir
from linewatch.spec import load_spec

SPEC = """
name: toy
input:
  time_unit: hour
  table: {asset: machine, time: t, columns: {temp: Temp}, labels: {life: hours_left}}
  channels: [{name: temp, unit: degC}, {name: vib, unit: mm/s}]
window: {size: 4, hop: 2}
features:
  - {name: temp.mean, fn: mean, inputs: [temp]}
  - {name: vib.rms, fn: rms, inputs: [vib]}
  - {name: vib.slope, fn: slope, inputs: [vib]}
"""
PROBABILITY = SPEC + """
output: {horizon: 10}
truth: {life: life}
target_precision: 0.8
"""
RUL = SPEC + """
output: {kind: rul, unit: hours, horizon: 10, cap: 50}
truth: {life: life}
"""


def _table(path: Path, assets: range, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["machine,t,Temp,vib,hours_left"]
    for a in assets:
        life = 40 + 5 * (a % 4)
        for t in range(life):
            left = life - 1 - t
            wear = max(0.0, 1 - left / 20)
            lines.append(f"m{a},{t},{60 + 8 * wear + rng.normal(0, .5):.4f},"
                         f"{1 + 3 * wear + rng.normal(0, .2):.4f},{left}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("own")
    (d / "probability.yaml").write_text(PROBABILITY)
    (d / "rul.yaml").write_text(RUL)
    return {"dir": d, "train": _table(d / "train.csv", range(12), 1),
            "holdout": _table(d / "holdout.csv", range(12, 20), 2)}


@pytest.fixture(scope="module")
def rows(data: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    fr = frames_of(load_spec(data["dir"] / "probability.yaml"), data["train"])
    return fr.X, fr.labels["life"]


def _sklearn(X: np.ndarray, y: np.ndarray, zipmap: bool) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(max_iter=500).fit(X, y)
    return to_onnx(m, X[:1], options={"zipmap": zipmap},
                   target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()


def _lightgbm(X: np.ndarray, y: np.ndarray, zipmap: bool) -> bytes:
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    m = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1, random_state=0).fit(X, y)
    return convert_lightgbm(m, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                            zipmap=zipmap, target_opset=15).SerializeToString()


def _xgboost(X: np.ndarray, y: np.ndarray, zipmap: bool) -> bytes:
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    m = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(X, y)
    return convert_xgboost(m, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                           target_opset=15).SerializeToString()


def _torch_like(X: np.ndarray, y: np.ndarray, zipmap: bool, *, sigmoid: bool = True,
                batch: str | int = "n", dtype: int = TensorProto.FLOAT) -> bytes:
    """What torch.onnx.export makes of Linear -> Sigmoid: one float input, one (n, 1) float
    output, weights fitted here by least squares on the standardised rows."""
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-9
    A = np.c_[(X - mu) / sd, np.ones(len(X))]
    w = np.linalg.lstsq(A, 8.0 * (y - 0.5), rcond=None)[0]
    W = (w[:-1] / sd).astype(np.float32).reshape(-1, 1)
    b = np.array([w[-1] - float((w[:-1] / sd) @ mu)], dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["input", "W"], ["z0"]),
             helper.make_node("Add", ["z0", "b"], ["logit" if sigmoid else "output"])]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logit"], ["output"]))
    if dtype == TensorProto.DOUBLE:  # a model exported in float64 throughout
        W, b = W.astype(np.float64), b.astype(np.float64)
    graph = helper.make_graph(
        nodes, "torch_jit",
        [helper.make_tensor_value_info("input", dtype, [batch, X.shape[1]])],
        [helper.make_tensor_value_info("output", dtype, [batch, 1])],
        [onnx.numpy_helper.from_array(W, "W"), onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


EXPORTS = {
    "skl2onnx-zipmap": (_sklearn, True, "output_probability"),
    "skl2onnx": (_sklearn, False, "probabilities"),
    "lightgbm-zipmap": (_lightgbm, True, "probabilities"),
    "xgboost": (_xgboost, False, "probabilities"),
    "torch": (_torch_like, False, "output"),
}


@pytest.mark.parametrize("export", list(EXPORTS))
def test_a_card_for_each_usual_export_passes_the_agents_self_test(
    tmp_path: Path, data: dict[str, Path], rows: tuple[np.ndarray, np.ndarray], export: str
) -> None:
    make, zipmap, output = EXPORTS[export]
    X, life = rows
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(make(X, (life <= 10).astype(int), zipmap))
    card, _ = card_for_export(onnx_file, load_spec(data["dir"] / "probability.yaml"),
                              data["train"], data["holdout"])
    assert card.output.name == output
    assert card.reference.monitoring is not None and card.calibration is not None
    model = OnnxModel(write_model_dir(tmp_path / "dir", onnx_file, card))  # self-test runs
    scores = model.run(np.array(card.self_test.features, dtype=np.float32))
    assert np.all((scores >= 0) & (scores <= 1))
    # The threshold was chosen for precision 0.8 on the held-out machines.
    assert card.metrics["holdout_window_precision"].value >= 0.8 - 1e-9


def test_a_remaining_life_output_alerts_at_the_horizon_and_says_uncalibrated(
    tmp_path: Path, data: dict[str, Path], rows: tuple[np.ndarray, np.ndarray]
) -> None:
    X, life = rows
    A = np.c_[X, np.ones(len(X))]
    w = np.linalg.lstsq(A, np.minimum(life, 50), rcond=None)[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Add", ["z", "b"],
                                                                          ["rul"])],
        "rul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("rul", TensorProto.FLOAT, ["n"])],
        [onnx.numpy_helper.from_array(w[:-1].astype(np.float32), "W"),
         onnx.numpy_helper.from_array(np.float32(w[-1]), "b")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx_file = tmp_path / "rul.onnx"
    onnx_file.write_bytes(m.SerializeToString())
    card, said = card_for_export(onnx_file, load_spec(data["dir"] / "rul.yaml"), data["train"],
                                 data["holdout"])
    assert card.output.kind == "rul" and card.calibration is None
    assert card.threshold.value == pytest.approx(1 - 10 / 50)
    assert "holdout_window_rul_rmse" in card.metrics
    model = OnnxModel(write_model_dir(tmp_path / "dir", onnx_file, card))
    lives = model.predict(X)
    alerts = model.run(X) >= card.threshold.value
    np.testing.assert_array_equal(alerts, lives <= 10)
    est = PerformanceEstimator(card, window=100, draws=20)
    est.update(model.run(X[:50]))
    assert est.estimate().calibrated is False
    assert any("uncalibrated" in line for line in said)


@pytest.mark.parametrize(("change", "needle"), [
    ({"sigmoid": False}, "no probability: add a sigmoid"),
    ({"batch": 1}, "export with a dynamic batch dimension"),
    ({"dtype": TensorProto.DOUBLE}, "the agent feeds float32"),
])
def test_an_export_the_agent_cannot_run_is_refused_in_one_line_saying_what_to_change(
    tmp_path: Path, data: dict[str, Path], rows: tuple[np.ndarray, np.ndarray],
    change: dict[str, object], needle: str
) -> None:
    X, life = rows
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(_torch_like(X, (life <= 10).astype(int), False, **change))  # type: ignore[arg-type]
    with pytest.raises(CardError) as err:
        card_for_export(onnx_file, load_spec(data["dir"] / "probability.yaml"),
                        data["train"], data["holdout"])
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda c: c["features"][1].update(fn="median"),
     "card.json: features[1].fn: unknown function 'median' (known: band_rms, crest,"),
    (lambda c: c["features"][0].update(inputs=["nope"]), "features[0].inputs: no channel"),
    (lambda c: c.pop("self_test") and c["output"].pop("meaning"),
     "is not a valid model card: output.meaning: Field required; and 1 more problem"),
])
def test_a_bad_card_is_one_line_naming_the_field(
    tmp_path: Path, data: dict[str, Path], rows: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str], edit: object, needle: str
) -> None:
    X, life = rows
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(_sklearn(X, (life <= 10).astype(int), False))
    card, _ = card_for_export(onnx_file, load_spec(data["dir"] / "probability.yaml"),
                              data["train"], data["holdout"])
    d = write_model_dir(tmp_path / "dir", onnx_file, card)
    raw = json.loads((d / "card.json").read_text())
    edit(raw)  # type: ignore[operator]
    (d / "card.json").write_text(json.dumps(raw))
    assert main(["evaluate", str(d), str(data["holdout"])]) == 3
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_truth_without_a_horizon_says_what_to_add(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "models" / "cmapss_fd001", tmp_path / "m")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    del card["output"]["horizon"]
    (tmp_path / "m" / "card.json").write_text(json.dumps(card))
    data = root / "models" / "data" / "cmapss_fd001"
    code = main(["evaluate", str(tmp_path / "m"), str(data / "test_FD001.txt.gz"),
                 "--truth", str(data / "RUL_FD001.txt")])
    assert code == 2
    assert 'has no output.horizon' in capsys.readouterr().err


def test_a_spec_error_names_the_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SPEC + "output: {kind: rul, unit: h, cap: 5}\n")
    with pytest.raises(CardError, match=r"s.yaml: output: a rul output needs horizon"):
        load_spec(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(SPEC.replace("fn: rms", "fn: median") + "threshold: 1\n")
    with pytest.raises(CardError, match=r"s.yaml: features\[1\].fn: unknown function 'median'"):
        load_spec(tmp_path / "s.yaml")


def test_features_as_parquet_hold_what_the_csv_holds(tmp_path: Path,
                                                     data: dict[str, Path]) -> None:
    import pyarrow.parquet as pq

    spec = str(data["dir"] / "probability.yaml")
    assert main(["features", spec, str(data["train"]), "-o", str(tmp_path / "f.csv")]) == 0
    assert main(["features", spec, str(data["train"]), "-o", str(tmp_path / "f.parquet")]) == 0
    table = pq.read_table(tmp_path / "f.parquet").to_pydict()
    lines = (tmp_path / "f.csv").read_text().splitlines()
    assert lines[0].split(",") == list(table)
    assert list(table)[:3] == ["asset", "window_end", "temp.mean"]
    first = lines[1].split(",")
    assert first[0] == table["asset"][0]
    assert np.float32(first[2]) == np.float32(table["temp.mean"][0])
