"""The installed release of linewatch, as every command's ``--version`` prints it."""

from __future__ import annotations

import importlib.metadata

__all__ = ["installed_version"]


def installed_version() -> str:
    """The distribution's version, or a plain word when run from a checkout not installed."""
    try:
        return importlib.metadata.version("linewatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"
