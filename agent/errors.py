"""Exceptions raised by the agent.

::

    AgentError
    ├── ConfigError        bad or missing configuration (exit code 2 from the CLI)
    ├── SourceError        a data source that cannot be opened or read
    └── OutboxError        the on-disk outbox cannot be opened or written

A card that cannot be read, or a model that does not match it, raises
``contract.errors.CardError`` (``inference.SelfTestError`` derives from it): the card is
part of the shared contract.

Bad *readings* (NaN, out of range) are not exceptions: they are counted, reported as
data-quality events and skipped, and the agent keeps running.
"""

from __future__ import annotations

__all__ = ["AgentError", "ConfigError", "OutboxError", "SourceError"]


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """Configuration that does not validate; ``errors`` lists (key path, value, message)."""

    def __init__(self, message: str, errors: list[tuple[str, object, str]] | None = None):
        super().__init__(message)
        self.errors = errors or []


class SourceError(AgentError):
    """A data source that cannot be opened or read."""


class OutboxError(AgentError):
    """The outbox database cannot be opened or written."""
