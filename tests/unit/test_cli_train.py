"""``linewatch train``: writes where it is told, and never over a model without --overwrite.

Trains ``ims_bearing``, the fastest model (a second or two), with the recorded
hyper-parameters.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from contract.card import CARD_FILE, MODEL_FILE, ModelCard
from linewatch.cli import main
from linewatch.training import NAMES

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL_FILES = (MODEL_FILE, CARD_FILE, "CARD.md")


def _state(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root`` (data excepted) with its size, mtime and bytes: a rewrite
    with the same bytes still shows."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file() and "data" not in p.parts}


def test_train_writes_under_var_models_and_leaves_the_shipped_models_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _state(MODELS)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "ims_bearing", "--no-search"]) == 0
    assert _state(MODELS) == before
    out_dir = tmp_path / "var" / "models" / "ims_bearing"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(MODEL_FILES)
    ModelCard.load(out_dir).verify(out_dir)
    said = capsys.readouterr().out
    assert all(str(Path("var/models/ims_bearing") / f) in said for f in MODEL_FILES)


def test_the_shipped_models_are_not_replaced_without_overwrite(
    capsys: pytest.CaptureFixture[str]
) -> None:
    before = _state(MODELS)
    assert main(["train", "ims_bearing", "--out", str(MODELS), "--no-search"]) == 1
    assert main(["train", "all", "--out", str(MODELS), "--no-search"]) == 1
    assert _state(MODELS) == before
    assert "--overwrite" in capsys.readouterr().err


def test_an_existing_model_is_replaced_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(MODELS / "ims_bearing", out / "ims_bearing")
    before = _state(out)
    # "all" checks every target first: nothing is trained, not even the models not there.
    assert main(["train", "all", "--out", str(out), "--no-search"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["ims_bearing"]
    assert _state(out) == before

    capsys.readouterr()
    assert main(["train", "ims_bearing", "--out", str(out), "--no-search",
                 "--overwrite"]) == 0
    after = _state(out)
    assert after.keys() == before.keys()
    card = Path("ims_bearing") / CARD_FILE
    assert after[str(card)] != before[str(card)]
    # The new model is calibrated from its own training data, as the shipped one was.
    assert "with its monitor calibration" in capsys.readouterr().out
    fresh = ModelCard.load(out / "ims_bearing").reference.monitoring
    shipped = ModelCard.load(MODELS / "ims_bearing").reference.monitoring
    assert fresh is not None and shipped is not None
    assert (fresh.envelope.counts, fresh.envelope.lives) == (shipped.envelope.counts,
                                                            shipped.envelope.lives)


def test_help_lists_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in NAMES)
    with pytest.raises(SystemExit):
        main(["train", "no_such_model"])
