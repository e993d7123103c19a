from __future__ import annotations

import numpy as np
import pytest

from agent.windows import Windower


def _reference(values: np.ndarray, size: int, hop: int) -> list[np.ndarray]:
    return [values[s:s + size] for s in range(0, len(values) - size + 1, hop)]


@pytest.mark.parametrize(("size", "hop"), [(1, 1), (5, 1), (5, 2), (4, 4), (3, 5), (30, 1)])
@pytest.mark.parametrize("block", [1, 3, 64])
def test_windows_do_not_depend_on_how_samples_arrive(size: int, hop: int, block: int) -> None:
    rng = np.random.default_rng(size * 100 + hop)
    values = rng.normal(size=(97, 2))
    t = np.arange(97, dtype=float)
    w = Windower(size, hop, n_channels=2)
    got, ends = [], []
    for lo in range(0, 97, block):
        out = w.update("a", t[lo:lo + block], values[lo:lo + block])
        if out is not None:
            got.extend(out.values)
            ends.extend(out.end)
    want = _reference(values, size, hop)
    assert len(got) == len(want)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, r)
    assert ends == [float(s + size - 1) for s in range(0, 97 - size + 1, hop)]


def test_assets_are_windowed_independently() -> None:
    w = Windower(2, 1, n_channels=1)
    assert w.update("a", np.array([0.0]), np.array([[1.0]])) is None
    assert w.update("b", np.array([0.0]), np.array([[5.0]])) is None
    out = w.update("a", np.array([1.0]), np.array([[2.0]]))
    assert out.asset == "a" and out.values[:, :, 0].tolist() == [[1.0, 2.0]]
    assert w.pending("b") == 1


def test_forget_drops_the_buffer() -> None:
    w = Windower(3, 1, n_channels=1)
    w.update("a", np.arange(2.0), np.ones((2, 1)))
    w.forget("a")
    assert w.pending("a") == 0
    assert w.update("a", np.arange(2.0), np.ones((2, 1))) is None


@pytest.mark.parametrize("kwargs", [dict(size=0, hop=1, n_channels=1),
                                    dict(size=1, hop=0, n_channels=1),
                                    dict(size=1, hop=1, n_channels=0)])
def test_bad_parameters_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        Windower(**kwargs)


def test_shape_mismatch_is_refused() -> None:
    w = Windower(2, 1, n_channels=2)
    with pytest.raises(ValueError, match="expected"):
        w.update("a", np.arange(3.0), np.ones((3, 1)))
