"""A gateway must refuse a model that is not the one its card describes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from agent.exits import EXIT_START
from agent.inference import OnnxModel, SelfTestError
from contract.card import CardError
from linewatch.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(ROOT / "models" / "cmapss_fd001", tmp_path / "model"))


def test_shipped_model_loads_and_passes_its_self_test(model_dir: Path) -> None:
    assert OnnxModel(model_dir).n_features == 42


def test_tampered_model_file_is_refused(model_dir: Path) -> None:
    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (model_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CardError, match="sha256"):
        OnnxModel(model_dir)


def test_wrong_self_test_expectation_is_refused(model_dir: Path) -> None:
    card = json.loads((model_dir / "card.json").read_text())
    card["self_test"]["expected"][0] += 0.01
    (model_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(SelfTestError, match="self-test off by"):
        OnnxModel(model_dir)


def test_agent_command_exits_3_with_the_reason(model_dir: Path, tmp_path: Path, capsys) -> None:
    (model_dir / "card.json").write_text("{not json")
    cfg = yaml.safe_load((ROOT / "configs" / "agent.example.yaml").read_text())
    cfg["model"]["dir"] = str(model_dir)
    cfg["source"]["path"] = str(ROOT / cfg["source"]["path"])
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["agent", "-c", str(path)]) == EXIT_START  # could not start
    assert "not a valid model card" in capsys.readouterr().err
