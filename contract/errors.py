"""Errors of the shared contract.

::

    ContractError
    ├── WireError      a payload or topic that does not follow the wire contract
    └── CardError      an unreadable model card, or a model file that does not match it

Both are also ``ValueError``: they describe bad input, not a broken program.
"""

from __future__ import annotations

__all__ = ["CardError", "ContractError", "WireError"]


class ContractError(Exception):
    """Root of every error raised by ``contract``."""


class WireError(ContractError, ValueError):
    """A payload or topic that does not follow the contract.

    ``reason`` is a short stable code used for counting rejections:
    ``too_large``, ``malformed``, ``unknown_schema``, ``invalid`` or ``bad_topic``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class CardError(ContractError, ValueError):
    """A card that cannot be read, or a model file that does not match its card."""
