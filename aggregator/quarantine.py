"""Quarantine: rejected messages kept with their raw bytes, and logged once per reason.

A message that breaks the contract is an *event*, not an error: it is counted, kept for
inspection (payload truncated to ``QUARANTINE_MAX_BYTES``, its length kept), and logged at
WARNING the first time its reason is seen, at DEBUG after that, so a flood of garbage
cannot flood the log.
"""

from __future__ import annotations

import logging
from datetime import datetime

from aggregator.db import QUARANTINE_MAX_BYTES, QuarantinedMessage
from aggregator.validate import Rejected

__all__ = ["LOG_PAYLOAD_BYTES", "RejectionLog", "quarantine_row"]

logger = logging.getLogger(__name__)

LOG_PAYLOAD_BYTES = 200


def quarantine_row(item: Rejected, now: datetime) -> QuarantinedMessage:
    """The row that keeps a rejected message for inspection."""
    payload = bytes(item.message.payload)
    return QuarantinedMessage(
        received_at=now, topic=item.message.topic, reason=item.error.reason,
        error=item.error.message, payload=payload[:QUARANTINE_MAX_BYTES], payload_len=len(payload),
    )


class RejectionLog:
    """Logs a rejection at WARNING the first time its reason is seen, then at DEBUG."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def log(self, item: Rejected) -> None:
        reason = item.error.reason
        first = reason not in self._warned
        self._warned.add(reason)
        payload = item.message.payload
        shown = payload[:LOG_PAYLOAD_BYTES]
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "rejected message on %r: %s; payload (%d bytes) %r%s%s",
            item.message.topic,
            item.error,
            len(payload),
            shown,
            "..." if len(payload) > len(shown) else "",
            f" (further {reason!r} rejections are logged at DEBUG)" if first else "",
        )
