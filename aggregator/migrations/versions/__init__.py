"""Alembic revision files, oldest first: ``NNNN_slug.py``, each ``revision`` = its ``NNNN``.

A package only so that the exported-members test walks into it (and holds each revision
to its ``__all__``); alembic itself skips this file.
"""

from __future__ import annotations

__all__: list[str] = []
