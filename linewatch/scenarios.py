"""Scenarios built from recorded C-MAPSS data: what a model must cope with on a real line.

The shipped data hold one operating regime and one fault mode, so the situations the
monitors exist for are built from them, openly, by changing the recorded values:

- ``regime``: another operating regime from the first cycle on. The three operational
  settings move (altitude, Mach number, throttle) and every sensor responds to them, each
  by a fixed fraction of its level (pressures most, temperatures less, speeds least, as a
  turbofan's gas path does), upwards (``direction=+1``) or downwards (``-1``).
- ``offset``: one sensor reads ``sigmas`` training standard deviations high from the middle
  of each chosen engine's record (a re-mounted or mis-calibrated transmitter).
- ``stuck``: one sensor repeats its mid-record value to the end (a frozen transmitter).
- ``fault``: a fault mode the training lacks: on the chosen engines, three sensors drift
  over the last ``cycles`` cycles to ``sigmas`` standard deviations *against* the direction
  they take when FD001 engines degrade, so the model reads "healthy" while the machine
  leaves everything it was trained on.

Each returns the changed recordings and, per engine, the cycle the change began (its
*onset*), so detection delays can be measured. :func:`write_cmapss` writes recordings back in
the C-MAPSS text format the agent replays.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agent.datasets import CMAPSS_CHANNELS, Recording

__all__ = [
    "REGIME_RESPONSE", "Scenario", "degradation_trend", "fault", "offset", "regime", "stuck",
    "write_cmapss",
]

# Fraction of its level each sensor moves by in the other regime: pressures follow the
# ambient pressure most, temperatures less, shaft speeds least.
REGIME_RESPONSE: dict[str, float] = {
    "sensor_2": 0.010, "sensor_3": 0.010, "sensor_4": 0.010,          # temperatures
    "sensor_7": 0.040, "sensor_11": 0.040,                            # pressures
    "sensor_8": 0.004, "sensor_9": 0.004, "sensor_13": 0.004, "sensor_14": 0.004,  # speeds
    "sensor_12": 0.030, "sensor_15": 0.020, "sensor_17": 0.010,        # ratios and flows
    "sensor_20": 0.030, "sensor_21": 0.030,                            # bleed flows
}
# The settings of the other regime (FD002-like: 10 kft, Mach 0.25, full throttle).
REGIME_SETTINGS = {"op_setting_1": 10.0, "op_setting_2": 0.25, "op_setting_3": 100.0}


@dataclass(frozen=True)
class Scenario:
    """Changed recordings, and the cycle each changed engine's change began."""

    name: str
    description: str
    recordings: list[Recording]
    onsets: dict[str, float]
    channels: tuple[str, ...]


def _col(rec: Recording, channel: str) -> int:
    return rec.channels.index(channel)


def _pick(recordings: Sequence[Recording], assets: Sequence[str] | None) -> set[str]:
    return {r.asset for r in recordings} if assets is None else set(assets)


def regime(recordings: Sequence[Recording], direction: int = 1) -> Scenario:
    """Every engine in another operating regime from its first cycle."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    out = []
    for rec in recordings:
        v = rec.values.copy()
        for channel, setting in REGIME_SETTINGS.items():
            j = _col(rec, channel)
            v[:, j] = v[:, j] - v[:, j].mean() + (setting if direction > 0 else -setting / 2)
        for channel, g in REGIME_RESPONSE.items():
            v[:, _col(rec, channel)] *= 1 + direction * g
        out.append(replace(rec, values=v))
    return Scenario(f"regime{'+' if direction > 0 else '-'}",
                    f"another operating regime, sensors {'up' if direction > 0 else 'down'}",
                    out, {r.asset: float(r.t[0]) for r in recordings},
                    tuple(REGIME_SETTINGS) + tuple(REGIME_RESPONSE))


def offset(recordings: Sequence[Recording], channel: str, sigma: float, *,
           sigmas: float = 3.0, assets: Sequence[str] | None = None) -> Scenario:
    """``channel`` reads ``sigmas * sigma`` high from mid-record on the chosen engines."""
    chosen, out, onsets = _pick(recordings, assets), [], {}
    for rec in recordings:
        if rec.asset in chosen:
            v, mid = rec.values.copy(), len(rec) // 2
            v[mid:, _col(rec, channel)] += sigmas * sigma
            onsets[rec.asset] = float(rec.t[mid])
            rec = replace(rec, values=v)
        out.append(rec)
    return Scenario("offset", f"{channel} offset by +{sigmas:g} sigma from mid-record", out,
                    onsets, (channel,))


def stuck(recordings: Sequence[Recording], channel: str, *,
          assets: Sequence[str] | None = None) -> Scenario:
    """``channel`` frozen at its mid-record value on the chosen engines."""
    chosen, out, onsets = _pick(recordings, assets), [], {}
    for rec in recordings:
        if rec.asset in chosen:
            v, mid, j = rec.values.copy(), len(rec) // 2, _col(rec, channel)
            v[mid:, j] = v[mid, j]
            onsets[rec.asset] = float(rec.t[mid])
            rec = replace(rec, values=v)
        out.append(rec)
    return Scenario("stuck", f"{channel} stuck from mid-record", out, onsets, (channel,))


def fault(recordings: Sequence[Recording], trend: dict[str, tuple[float, float]], *,
          assets: Sequence[str], cycles: int = 100, sigmas: float = 6.0) -> Scenario:
    """Three or more sensors drift against their degradation trend on the chosen engines.

    ``trend`` gives each sensor's (sign of its degradation trend, training std).
    """
    chosen, out, onsets = set(assets), [], {}
    for rec in recordings:
        if rec.asset in chosen:
            v = rec.values.copy()
            n = min(cycles, len(rec))
            ramp = np.linspace(0.0, 1.0, n)
            for channel, (sign, sd) in trend.items():
                v[-n:, _col(rec, channel)] -= sign * sigmas * sd * ramp
            onsets[rec.asset] = float(rec.t[-n])
            rec = replace(rec, values=v)
        out.append(rec)
    return Scenario("fault", f"{', '.join(trend)} drift against their degradation trend "
                    f"over the last {cycles} cycles", out, onsets, tuple(trend))


def degradation_trend(train: Sequence[Recording],
                      channels: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Each channel's (sign of its trend towards failure, training std), from run-to-failure
    recordings: what :func:`fault` drifts against."""
    out = {}
    for channel in channels:
        x = np.concatenate([r.values[:, _col(r, channel)] for r in train])
        rul = np.concatenate([r.labels["rul"] for r in train])
        out[channel] = (float(np.sign(np.corrcoef(x, -rul)[0, 1])), float(x.std()))
    return out


def write_cmapss(recordings: Sequence[Recording], path: Path) -> Path:
    """Write recordings as C-MAPSS text (unit, cycle, 3 settings, 21 sensors per line);
    assets must be named ``engine-NNN``. A ``.gz`` suffix compresses."""
    lines = []
    for rec in recordings:
        unit = int(rec.asset.rsplit("-", 1)[1])
        cols = [rec.channels.index(c) for c in CMAPSS_CHANNELS]
        for t, row in zip(rec.t, rec.values[:, cols], strict=True):
            lines.append(f"{unit} {int(t)} " + " ".join(f"{x:.6g}" for x in row) + "  ")
    text = "\n".join(lines) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)
    return path
