"""The model factory: ``linewatch train <name>`` rebuilds a model directory from the data.

One module per model (``cmapss_fd001``, ``ai4i2020``, ``ims_bearing``, ``cmapss_fd001_rul``)
plus ``common``.
The modules import scikit-learn and skl2onnx (the ``train`` extra), so they load only when
a model is trained; ``frames`` and ``metrics`` are numpy-only and shared with
``linewatch.evaluate``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from linewatch.training.common import Trained

__all__ = ["NAMES", "fit", "train"]

NAMES: tuple[str, ...] = ("cmapss_fd001", "ai4i2020", "ims_bearing", "cmapss_fd001_rul")


def fit(name: str, models_root: Path | None = None, *, search: bool = True) -> Trained:
    """Train model ``name`` into ``<models_root>/<name>/`` and return the run's artefacts."""
    if name not in NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(NAMES)}")
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    module = importlib.import_module(f"linewatch.training.{name}")
    # One BLAS/OpenMP thread: reproducible sums, and no fight over a small build machine.
    with threadpool_limits(limits=1):
        return module.fit(models_root, search=search)  # type: ignore[no-any-return]


def train(name: str, models_root: Path | None = None, *, search: bool = True) -> Path:
    """Rebuild model ``name`` deterministically; return its directory.

    ``models_root`` defaults to the repository's ``models/``. ``search=False`` skips the
    hyper-parameter search and reuses the values the last search recorded in the shipped
    card (same model, much faster: what the tests do).
    """
    return fit(name, models_root, search=search).model_dir
