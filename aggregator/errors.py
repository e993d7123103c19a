"""Exceptions raised by the aggregator.

One root, so a caller can catch everything this package raises on purpose; below it, the
split that matters to callers is *transient* (retry the same work later, nothing is lost)
versus *refused* (retrying the same request gives the same answer)::

    AggregatorError
    +-- UnavailableError            a backing service cannot be reached; retry later
    |   +-- SeriesUnavailableError    the series store (InfluxDB) is down or answered 5xx
    |   +-- DatabaseUnavailableError  the SQL database cannot be reached
    +-- SeriesError                 the series store refused a request (4xx)
    +-- BrokerError                 the embedded MQTT broker did not start or stop
    +-- SchemaError                 the SQL schema is not one this release can migrate
    +-- TicketError                 a ticket operation that cannot be done
        +-- TicketNotFoundError       no ticket with that id
        +-- TicketStateError          the ticket's status does not allow it
        +-- FailureTicketedError      a failure "without a ticket" had one open

Bad input from the wire is *not* an exception here: ``contract.wire.WireError`` is caught by
the ingestor, counted and quarantined; it never escapes to the MQTT loop.
"""

from __future__ import annotations

__all__ = [
    "AggregatorError",
    "BrokerError",
    "DatabaseUnavailableError",
    "FailureTicketedError",
    "SchemaError",
    "SeriesError",
    "SeriesUnavailableError",
    "TicketError",
    "TicketNotFoundError",
    "TicketStateError",
    "UnavailableError",
]


class AggregatorError(Exception):
    """Root of every exception the aggregator raises on purpose."""


class UnavailableError(AggregatorError):
    """A backing service cannot be reached right now; the same work may be retried later.

    The ingestor raises it before marking any message as seen, so a retry neither loses
    nor doubles anything.
    """


class SeriesUnavailableError(UnavailableError):
    """The series store cannot be reached, timed out, or answered a server error (5xx)."""


class DatabaseUnavailableError(UnavailableError):
    """The SQL database (tickets, dedupe, agents) cannot be reached or is locked."""


class SeriesError(AggregatorError):
    """The series store refused a request (4xx): retrying the same request will not help.

    ``status`` is the HTTP status code, ``detail`` the server's error text.
    """

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class BrokerError(AggregatorError):
    """The embedded MQTT broker failed to start (port taken, bad config) or to stop."""


class SchemaError(AggregatorError):
    """The SQL database's schema is not one this release can migrate to its own.

    Either its tables match no schema a release ever made (and it has no migration
    history to say what they are), or its history names a revision newer than this
    release knows (a database upgraded by a newer aggregator).
    """


class TicketError(AggregatorError):
    """A ticket operation that cannot be done; ``ticket_id`` names the ticket."""

    def __init__(self, message: str, *, ticket_id: int) -> None:
        super().__init__(message)
        self.ticket_id = ticket_id


class TicketNotFoundError(TicketError):
    """No ticket has this id."""


class TicketStateError(TicketError):
    """The ticket's status does not allow the operation (e.g. acknowledging a resolved one).

    ``status`` is the ticket's current status.
    """

    def __init__(self, message: str, *, ticket_id: int, status: str) -> None:
        super().__init__(message, ticket_id=ticket_id)
        self.status = status


class FailureTicketedError(TicketError):
    """A failure reported as missed (no ticket warned of it) happened while a maintenance
    ticket of that asset was open: it was not missed. ``ticket_id`` is that ticket, which
    is the one to resolve (as a confirmed failure, with the failure's time)."""
