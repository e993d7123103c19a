"""High-rate signals (vibration at kHz) go through the agent as blocks: the quality checks,
the windows and the features are whole-array operations, and featurising blocks as a source
hands them over gives exactly what the reference (training's ``featurize``, and each feature
computed window by window) gives."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest

from agent.datasets import Recording
from agent.features import FeatureExtractor
from agent.monitors.quality import ChannelLimits, QualityMonitor
from agent.windows import Windower
from contract.card import ModelCard
from linewatch.training.frames import featurize

ROOT = Path(__file__).resolve().parents[2]
CARD = ModelCard.load(ROOT / "models" / "ims_bearing")
RATE = CARD.input.rate_hz


def _signal(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    x = 0.1 * np.sin(2 * np.pi * 1600 * t) + 0.05 * rng.standard_normal(n)
    x[rng.integers(0, n, 40)] += 0.8  # impacts, for crest and kurtosis
    return t, x[:, None]


def _per_window(x: np.ndarray, spec) -> float:
    """One feature of one window, written out plainly."""
    d = x - x.mean()
    var = np.mean(d * d)
    if spec.fn == "rms":
        return float(np.sqrt(np.mean(x * x)))
    if spec.fn == "peak":
        return float(np.max(np.abs(x)))
    if spec.fn == "crest":
        return float(np.max(np.abs(x)) / np.sqrt(np.mean(x * x)))
    if spec.fn == "skew":
        return float(np.mean(d ** 3) / var ** 1.5)
    if spec.fn == "kurtosis":
        return float(np.mean(d ** 4) / var ** 2 - 3)
    if spec.fn == "band_rms":
        spec_ = np.fft.fft(d)
        f = np.abs(np.fft.fftfreq(len(x), 1 / RATE))
        band = (f >= spec.params["lo_hz"]) & (f < spec.params["hi_hz"])
        return float(np.sqrt(np.sum(np.abs(spec_[band]) ** 2)) / len(x))
    raise AssertionError(spec.fn)


@pytest.mark.parametrize("block", [2048, 5000, 20_480])
def test_blocks_featurise_exactly_as_the_reference(block: int) -> None:
    t, x = _signal(1.2)
    size, hop = CARD.window.size, CARD.window.hop
    fx = FeatureExtractor(CARD.features, CARD.channel_names)
    quality = QualityMonitor(CARD.channel_names, {"accel": ChannelLimits(-5.0, 5.0)})
    windower = Windower(size, hop, 1)
    rows = []
    for lo in range(0, len(t), block):  # as a source hands them over
        tt, vv = quality.clean("b1", t[lo:lo + block], x[lo:lo + block])
        w = windower.update("b1", tt, vv)
        if w is not None:
            rows.append(fx.transform(w.values))
    got = np.concatenate(rows)
    ref = featurize([Recording("b1", ("accel",), t, x)], CARD.features, size=size, hop=hop)
    np.testing.assert_array_equal(got, ref.X)
    assert len(got) == len(t) // hop
    plain = np.array([[_per_window(x[s:s + size, 0], f) for f in CARD.features]
                      for s in range(0, len(t) - size + 1, hop)], dtype=np.float32)
    np.testing.assert_allclose(got, plain, rtol=2e-5, atol=1e-6)
    assert quality.rejected_readings == 0 and quality.events() == []


def _gaps_reference(monitor: QualityMonitor, asset: str, t: np.ndarray, state: dict):
    """The gap check as it was, one Python step per sample."""
    out = []
    last = state.get("last")
    steps = np.diff(np.r_[t[0] if last is None else last, t])
    recent = state.setdefault("recent", deque(maxlen=16))
    for i, dt in enumerate(steps.tolist()):
        if len(recent) >= 8 and dt > monitor.gap_factor * min(recent):
            usual = float(np.median(recent))
            if usual > 0 and dt > monitor.gap_factor * usual:
                out.append((float(t[i]), dt, usual))
        if dt > 0:
            recent.append(dt)
    state["last"] = float(t[-1])
    return out


@pytest.mark.parametrize("seed", range(4))
def test_gap_check_finds_what_the_per_sample_loop_found(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dt = rng.choice([1e-3, 1e-3, 1e-3, 1.1e-3, 0.0], size=6000)
    dt[rng.integers(0, 6000, 30)] = rng.uniform(2e-3, 2e-2, 30)  # gaps of several sizes
    t = np.cumsum(dt)
    monitor = QualityMonitor(["x"], {})
    state: dict = {}
    want, got = [], []
    for lo in range(0, len(t), int(rng.integers(1, 700))):
        block = t[lo:lo + 700] if lo + 700 < len(t) else t[lo:]
        want += _gaps_reference(monitor, "a", block, state)
        monitor.clean("a", block, np.zeros((len(block), 1)))
        got += [(e.at_s, e.value, float(e.detail.split("every ")[1].split(" s")[0]))
                for e in monitor.events() if e.detector == "gap"]
    assert len(want) > 10
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want]
    np.testing.assert_allclose([u for *_, u in got], [u for *_, u in want], rtol=1e-5)
