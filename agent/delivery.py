"""End-to-end acknowledgement: what the aggregator says it stored, and what to send again.

The aggregator publishes a retained :class:`contract.wire.Delivery` on the agent's own
command topic. :class:`Tracker` applies each one to the outbox (release every row up to
``stored_through``, resend the ``missing`` spans, resend everything held once per new
``resend`` id, record seqs asked for but no longer held as ``gone``) and resends rows the
aggregator leaves unconfirmed for too long. It only decides; the publisher's drain thread
calls it and hands the seqs it returns to paho, so it needs no lock and no network.

The wait for a confirmation starts when the broker acknowledges a row, and again each time
the row is scheduled to go again. While nothing at all gets confirmed (an aggregator down for
hours), the wait doubles after each round of resends up to ``max_timeout_s``, so the agent
does not fill the broker with copies; it is back to ``timeout_s`` as soon as a confirmation
advances. Resending is safe because the aggregator dedupes by msg_id, and a row's msg_id and
seq never change.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from agent.outbox import Outbox
from contract import wire
from outage.failures import FailureLog, span

__all__ = ["PING_PONG_S", "Confirmation", "ModelCommands", "Tracker"]

logger = logging.getLogger(__name__)

# A row sent this recently is not sent again for a `missing` span: the aggregator may just
# not have stored it yet, and resending would make it ask again, and so on.
PING_PONG_S = 2.0
MAX_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Confirmation:
    """Rows leave the outbox when the aggregator confirms them (``publish.confirm:
    aggregator``), read from this agent's command topic."""

    site: str
    line: str
    agent: str
    timeout_s: float = 60.0
    max_timeout_s: float = MAX_TIMEOUT_S

    @property
    def subscription(self) -> str:
        return wire.command_subscription(self.site, self.line, self.agent)

    @property
    def topic(self) -> str:
        return wire.command_topic(self.site, self.line, self.agent, "delivery")


@dataclass(frozen=True)
class ModelCommands:
    """Model assignments (``agent.rollout``), read from this agent's ``cmd/model`` topic,
    go to ``handler`` (called on the publisher's drain thread: it must return at once)."""

    site: str
    line: str
    agent: str
    handler: Callable[[wire.Assignment], None]

    @property
    def subscription(self) -> str:
        return wire.command_subscription(self.site, self.line, self.agent)

    @property
    def topic(self) -> str:
        return wire.command_topic(self.site, self.line, self.agent, "model")


class Tracker:
    """Apply the aggregator's confirmations to an outbox and pick the rows to resend.

    ``busy`` arguments are the seqs already on their way (handed to paho, or queued to be):
    they are not picked again. ``broker`` names the broker in log lines.
    """

    def __init__(
        self,
        outbox: Outbox,
        confirmation: Confirmation,
        *,
        broker: str = "",
        log: logging.Logger = logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.base_s = confirmation.timeout_s
        self.max_s = max(confirmation.max_timeout_s, confirmation.timeout_s)
        self.timeout_s = self.base_s
        self._broker = broker
        self._logger = log
        self._clock = clock
        self._unconfirmed = FailureLog(log, clock=clock)
        self._ahead = FailureLog(log, clock=clock)
        self._advanced_since_round = False
        self._heard = False
        # Gaps asked for while their rows had only just gone (a restart restamps every sent
        # row): sent again once the guard is over, not at the aggregator's next repeat.
        self._deferred: list[tuple[int, int]] = []
        self._deferred_at = math.inf
        self.resent = 0  # rows scheduled to go again, this process

    def apply(self, delivery: wire.Delivery, busy: Collection[int] = ()) -> list[int]:
        """Release what ``delivery`` confirms; return the seqs to send again, in order."""
        if delivery.stored_through > self.outbox.last_seq:
            # It cannot have stored what this outbox never wrote: a retained Delivery about
            # an outbox that was replaced, or another gateway with this agent id. Obeyed, it
            # would release rows nobody has.
            self._ahead.failed(
                "ahead", f"ignored a delivery command that says seq {delivery.stored_through} "
                f"is stored: this outbox has written only up to seq {self.outbox.last_seq} "
                "(was it replaced, or does another gateway use this agent id?)")
            return []
        self._ahead.recovered("the aggregator's delivery commands match this outbox again")
        if delivery.stored_through > self.outbox.confirmed_through:
            # Told before the rows go, so whoever sees them gone sees it told.
            self._advanced(delivery.stored_through)
        self.outbox.confirm(delivery.stored_through)
        through = self.outbox.confirmed_through
        now = self._clock()
        again: set[int] = set()
        for gap in delivery.missing:
            if gap.last <= through:
                continue  # a stale request: those are stored
            ready = self.outbox.resendable(gap.first, gap.last, sent_before=now - PING_PONG_S)
            again.update(ready)
            if len(self.outbox.resendable(gap.first, gap.last)) > len(ready):
                self._deferred.append((gap.first, gap.last))
                self._deferred_at = min(self._deferred_at, now + PING_PONG_S)
            gone = self.outbox.note_gone(gap.first, gap.last)
            if gone:
                self._logger.warning(
                    "the aggregator asks for messages this agent no longer holds (seq %s): "
                    "reported as undeliverable", ", ".join(f"{a}-{b}" for a, b in gone))
        if delivery.resend is not None and delivery.resend != self.outbox.resend_id:
            held = self.outbox.resendable(through + 1, wire.MAX_SEQ)
            self._logger.info("the aggregator asks for everything after seq %d again "
                              "(request %s): resending %d messages", through,
                              delivery.resend, len(held))
            again.update(held)
            self.outbox.note_resend(delivery.resend)
        return self._schedule(again, busy, now)

    def due(self, busy: Collection[int] = ()) -> list[int]:
        """The rows left unconfirmed for ``timeout_s``, and those of gaps asked for while
        they had only just gone, to send again (one round)."""
        now = self._clock()
        if self._deferred and now >= self._deferred_at:
            spans, self._deferred, self._deferred_at = self._deferred, [], math.inf
            through = self.outbox.confirmed_through
            asked = {s for first, last in spans if last > through
                     for s in self.outbox.resendable(first, last, sent_before=now - PING_PONG_S)}
            return self._schedule(asked, busy, now)
        oldest = self.outbox.oldest_sent()
        if oldest is None or oldest > now - self.timeout_s:
            return []
        late = self._schedule(
            set(self.outbox.resendable(0, wire.MAX_SEQ, sent_before=now - self.timeout_s)),
            busy, now)
        if not late:
            return []
        waited = self.timeout_s
        if not self._advanced_since_round:
            self.timeout_s = min(self.timeout_s * 2, self.max_s)
        self._advanced_since_round = False
        self._unconfirmed.failed(
            "unconfirmed",
            f"{len(late)} messages handed to broker {self._broker} but not confirmed by the "
            f"aggregator for {span(waited)}; resending")
        return late

    @property
    def confirmed(self) -> int:
        """Rows released by a confirmation, this process."""
        return self.outbox.confirmed

    @property
    def next_due_s(self) -> float:
        """Seconds until the oldest unconfirmed row, or a deferred gap, is due (inf: none
        awaits)."""
        now = self._clock()
        oldest = self.outbox.oldest_sent()
        timeout = math.inf if oldest is None else oldest + self.timeout_s
        return max(0.0, min(timeout, self._deferred_at) - now)

    def _schedule(self, seqs: set[int], busy: Collection[int], now: float) -> list[int]:
        picked = sorted(s for s in seqs if s not in busy)
        # Stamped now: the next timeout counts from this resend, not the first send.
        self.outbox.mark_sent(picked, now)
        self.resent += len(picked)
        return picked

    def _advanced(self, through: int) -> None:
        self.timeout_s = self.base_s
        self._advanced_since_round = True
        if not self._heard:
            self._heard = True
            self._logger.info("the aggregator confirms delivery: messages stored through "
                              "seq %d", through)
        self._unconfirmed.recovered(f"the aggregator confirms messages again (stored through "
                                    f"seq {through})")
