"""Exceptions raised by the agent.

::

    AgentError
    ├── ConfigError        bad or missing configuration (exit code 2 from the CLI)
    ├── card.CardError     unreadable card, model file that does not match it
    │   └── inference.SelfTestError
    ├── SourceError        a data source that cannot be opened or read
    └── OutboxError        the on-disk outbox cannot be opened or written

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
