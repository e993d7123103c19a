"""``FailureLog``: tell about something that keeps failing and is retried, without flooding
the log and without going silent.

One instance per thing that can fail (the broker link, the series-store writes, ...). An
*episode* runs from the first failure to the next success. The rules:

- the first failure of each *kind* (connection refused, DNS, TLS, a refused CONNACK, ...)
  is logged at WARNING (or the level the caller gives), with the reason and when the next
  try comes: ``cannot connect to broker 127.0.0.1:9: connection refused; retrying in 3 s``;
- repeats of a kind are logged at DEBUG, numbered;
- while a kind keeps failing it is logged loudly again at most once per
  ``summary_every_s`` (5 min), as a summary: ``still failing after 5 min, 37 failures:
  ...``, or, for a kind that keeps coming back in short episodes (a link that drops every
  second), how often it came back since the last loud line;
- a caller that numbers its attempts (``attempt=n``, the broker link's reconnects) gets
  attempts 1, 2, 4, 8, ... of an episode loud as well, at a falling rate, the others at
  DEBUG, and the summary every ``summary_every_s`` on top: ``cannot connect to broker
  127.0.0.1:1883: connection refused (attempt 8, failing for 25 s); retrying in 5 s``;
- the first success ends the episode with one line at INFO: ``connected to broker
  127.0.0.1:1883 again after 42 s, 37 failures`` (or ``..., 9 attempts`` when the caller
  counts attempts). An episode whose failures all stayed at DEBUG (a repeat within the
  quiet period) ends at DEBUG too, so a flapping link does not flood the log through its
  recoveries; the next loud line counts what was not shown.

Standard library only; thread-safe (paho's network thread and a worker thread may report
to the same instance).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FailureLog", "seconds", "span"]

SUMMARY_EVERY_S = 300.0


def span(s: float) -> str:
    """A duration for a log line.

    >>> [span(x) for x in (0.25, 42, 89.6, 300, 5399, 7200)]
    ['0.2 s', '42 s', '90 s', '5 min', '90 min', '2.0 h']
    """
    if s < 1:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def seconds(s: float) -> str:
    """A retry delay: whole seconds without a fraction, else one decimal.

    >>> [seconds(x) for x in (0.5, 3, 10.0, 1.25)]
    ['0.5 s', '3 s', '10 s', '1.2 s']
    """
    return f"{round(s, 1):g} s"


@dataclass(slots=True)
class _Kind:
    loud_at: float  # clock time of this kind's last loud line
    quiet: int = 0  # failures of this kind logged at DEBUG since then


class FailureLog:
    """Log the failures of one retried operation: loud once per kind, then quiet, with a
    summary every ``summary_every_s`` and one line when it works again (module docstring).

    Parameters
    ----------
    logger
        Where the lines go (the caller's module logger, so ``-v`` and ``caplog`` see them
        under the caller's name).
    summary_every_s
        Least time between two loud lines of the same kind.
    clock
        Monotonic seconds; tests pass a fake one.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        summary_every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.summary_every_s = summary_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[str, _Kind] = {}
        self._since: float | None = None  # start of the current episode
        self._failures = 0  # in the current episode
        self._loud = False  # whether the current episode logged anything loudly
        self._last: str | None = None
        self.total = 0  # failures ever

    @property
    def failing(self) -> bool:
        """True from a failure until the next ``recovered()``."""
        return self._since is not None

    @property
    def failures(self) -> int:
        """Failures in the current episode (0 when not failing)."""
        return self._failures if self._since is not None else 0

    @property
    def failing_for_s(self) -> float:
        """Seconds since the current episode began (0 when not failing)."""
        since = self._since
        return 0.0 if since is None else self._clock() - since

    @property
    def last(self) -> str | None:
        """The message of the latest failure, current episode or not (None: never failed)."""
        return self._last

    def failed(
        self,
        kind: str,
        message: str,
        *,
        retry_in_s: float | None = None,
        level: int = logging.WARNING,
        exc_info: BaseException | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Record one failure of ``kind``; return True if it was logged at ``level``.

        ``message`` says what failed and why, ``retry_in_s`` when the next try comes;
        ``exc_info`` adds a traceback to loud lines only. ``attempt`` numbers the attempt
        within the episode (1 for the first): attempts 1, 2, 4, 8, ... are loud too.
        """
        with self._lock:
            now = self._clock()
            if self._since is None:
                self._since, self._failures, self._loud = now, 0, False
            self._failures += 1
            self.total += 1
            self._last = message
            retry = "" if retry_in_s is None else f"; retrying in {seconds(retry_in_s)}"
            seen = self._kinds.get(kind)
            lasting = now - self._since
            if attempt is None:
                count = f"failure {self._failures} in {span(lasting)}"
            else:
                count = f"attempt {attempt}, failing for {span(lasting)}"
            if seen is None or (attempt is not None and _power_of_two(attempt)):
                loud = True
                plain = attempt is None or attempt == 1
                text = f"{message}{retry}" if plain else f"{message} ({count}){retry}"
            elif now - seen.loud_at >= self.summary_every_s:
                loud = True
                if lasting >= self.summary_every_s:
                    what = (f"{self._failures} failures" if attempt is None
                            else f"attempt {attempt}")
                    text = f"still failing after {span(lasting)}, {what}: {message}{retry}"
                else:
                    text = (f"{message}{retry} ({seen.quiet + 1} times in the last "
                            f"{span(now - seen.loud_at)})")
            else:
                seen.quiet += 1
                loud = False
                text = f"{message} ({count}){retry}"
            if loud:
                self._kinds[kind] = _Kind(loud_at=now)
                self._loud = True
        self._logger.log(level if loud else logging.DEBUG, "%s", text,
                         exc_info=exc_info if loud else None)
        return loud

    def recovered(self, message: str, *, attempts: int | None = None) -> bool:
        """End the current episode, if any, with ``"<message> after N s, M failures"``
        (``message`` like "connected to broker H:P again"), or ``"..., M attempts"`` when
        the caller counted them; return True if that line was logged at INFO."""
        with self._lock:
            if self._since is None:
                return False
            lasted, failures, loud = self._clock() - self._since, self._failures, self._loud
            self._since, self._failures, self._loud = None, 0, False
        count, unit = (failures, "failure") if attempts is None else (attempts, "attempt")
        self._logger.log(logging.INFO if loud else logging.DEBUG, "%s after %s, %d %s%s",
                         message, span(lasted), count, unit, "" if count == 1 else "s")
        return loud


def _power_of_two(n: int) -> bool:
    """
    >>> [n for n in range(1, 20) if _power_of_two(n)]
    [1, 2, 4, 8, 16]
    """
    return n > 0 and n & (n - 1) == 0
