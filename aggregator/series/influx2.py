# influxdb-client's WriteApi, InfluxDBClient.close and urllib3's Retry are unannotated.
# mypy: disable-error-code="no-untyped-call"
"""InfluxDB 2.x and 3.x series store: writes through influxdb-client's v2 write API, reads
in InfluxQL through the v1-compatible ``/query`` that 1.x, 2.x and 3.x all answer.

Schema and identities are those of :mod:`aggregator.series.influx1`, line for line (the
lines come from its :func:`~aggregator.series.influx1.line_protocol`), so one set of
InfluxQL reads serves both and a plant moving from 1.x keeps its dashboards. Flux is not
used: InfluxDB 3 does not answer it.

Writes. influxdb-client's default, batching write API runs in a background thread and
drops a batch once its retries are spent, after ``write()`` has long returned: the ingestor
would ack messages whose points were lost. So the synchronous write API is used, with the
library's exponential backoff (``WritesRetry``) set on the client: ``write()`` returns once
every point is stored, or raises ``SeriesUnavailableError`` (server down, 429/5xx after the
retries; the ingestor retries the whole batch, and identities make the rewrite harmless)
or ``SeriesError`` (the server refused the data or the token: 4xx). Each call's lines go
in bodies of at most ``batch_lines`` lines, gzip-compressed.

Reads are :class:`~aggregator.series.influx1.Influx1Store`'s, with the token sent as
``Authorization: Token ...`` and ``database`` as the v1 database name: on 2.x a DBRP
mapping to the bucket (2.2 and later map every bucket to a database of its own name), on
3.x the database itself.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import urllib3.exceptions
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.retry import WritesRetry
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from aggregator.errors import SeriesError, SeriesUnavailableError
from aggregator.series.influx1 import BATCH_LINES, PING_TIMEOUT_S, Influx1Store

__all__ = ["Influx2Store", "WriteRetry"]

_NS: Any = WritePrecision.NS  # a str constant, annotated where it is taken as the enum

logger = logging.getLogger(__name__)


class WriteRetry(WritesRetry):
    """influxdb-client's exponential backoff, with ``max_retry_time`` counted from each
    request's first failure.

    ``WritesRetry`` fixes its deadline when it is created, which suits the batching API (a
    new one per batch) but not a client-wide instance: a synchronous client would stop
    retrying for good ``max_retry_time`` after it was opened.
    """

    def increment(self, *args: Any, **kwargs: Any) -> Any:
        if not self.history:  # this request's first failure: its own deadline, from now
            fresh = self.new()
            fresh.retry_timeout = datetime.now() + timedelta(seconds=self.max_retry_time)
            return WritesRetry.increment(fresh, *args, **kwargs)
        return super().increment(*args, **kwargs)


class _QuietRetries(logging.Filter):
    """Drops the warnings influxdb-client and urllib3 log at every retry of our writes: an
    outage is reported once, by whoever handles the ``SeriesUnavailableError``, instead of
    two lines per try of every request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "influxdb_client.client.write.retry":
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, WriteRetry) for arg in args)


for _name in ("influxdb_client.client.write.retry", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_QuietRetries())


class Influx2Store(Influx1Store):
    """Series store on InfluxDB 2.x (v2 write API, v1-compatible reads) or 3.x.

    Parameters
    ----------
    url
        Base URL, e.g. ``http://127.0.0.1:8086`` (2.x) or ``http://127.0.0.1:8181`` (3.x).
    bucket
        Where writes go: the 2.x bucket or the 3.x database. It must exist (buckets are the
        administrator's, with their retention); writing to a missing one is a ``SeriesError``.
    token
        API token, allowed to write ``bucket`` and read ``database``. Never logged.
    org
        2.x organisation (name or ID), which 2.x needs; 3.x ignores it.
    database
        v1 database name the reads query; default ``bucket``.
    timeout_s
        Per-request timeout; a timeout counts as a failure to retry.
    retries, retry_interval_s, max_retry_delay_s, max_retry_time_s
        Backoff of one write request: up to ``retries`` more tries, the first after
        ``retry_interval_s`` to twice that, doubling up to ``max_retry_delay_s`` (plus
        jitter), all within ``max_retry_time_s`` of its first failure. A ``Retry-After``
        from the server (429, 503) is honoured.
    batch_lines
        Most lines in one request body.
    gzip
        Compress request bodies (line protocol shrinks about tenfold).
    """

    name = "influx2"

    def __init__(
        self,
        url: str,
        bucket: str,
        *,
        token: str,
        org: str | None = None,
        database: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        retry_interval_s: float = 1.0,
        max_retry_delay_s: float = 8.0,
        max_retry_time_s: float = 15.0,
        batch_lines: int = BATCH_LINES,
        gzip: bool = True,
    ) -> None:
        if batch_lines < 1:
            raise ValueError(f"batch_lines must be >= 1, got {batch_lines}")
        super().__init__(url, database or bucket, timeout_s=timeout_s, token=token,
                         create_database=False)
        self.bucket = bucket
        self.org = org
        self.batch_lines = batch_lines
        retry = WriteRetry(
            total=retries, retry_interval=retry_interval_s, max_retry_delay=max_retry_delay_s,
            max_retry_time=max_retry_time_s, exponential_base=2,
            jitter_interval=retry_interval_s / 2,
            # POST is not retried by urllib3 unless named: a write is safe to repeat here,
            # every point having an identity.
            allowed_methods=["POST"],
        )
        # The client sends org with every write and insists on one; 3.x ignores it.
        self._client = InfluxDBClient(
            url=self.url, token=token, org=org or "", timeout=int(timeout_s * 1000),
            enable_gzip=gzip, retries=retry,
        )
        self._writes = self._client.write_api(write_options=SYNCHRONOUS)

    def _write_body(self, body: str) -> None:
        # influx1's write() builds the same lines and cuts them into bodies of
        # ``batch_lines``; a retry of the whole call rewrites the same identities.
        self._post(body.encode())

    def _post(self, body: bytes) -> None:
        try:
            self._writes.write(self.bucket, self._client.org, body, write_precision=_NS)
        except ApiException as exc:
            status = int(exc.status or 0)
            answer = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else \
                str(exc.body or "")
            message = f"{status} {exc.reason}: {answer[:300]}"
            if status == 0 or status == 429 or status >= 500:
                raise SeriesUnavailableError(
                    f"InfluxDB at {self.url} could not store a write: {message}"
                ) from exc
            raise SeriesError(
                f"InfluxDB refused a write to bucket {self.bucket!r}: {message}",
                status=status,
                detail=answer,
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Refused, reset, timed out, or 5xx after every retry (MaxRetryError).
            raise SeriesUnavailableError(f"InfluxDB at {self.url}: {exc!r}") from exc

    def ping(self) -> bool:
        try:
            # 2.x and VictoriaMetrics answer 204, 3.x answers 200 with its version.
            response = self._request("GET", "/ping", timeout=PING_TIMEOUT_S)
        except SeriesUnavailableError:
            return False
        return response.is_success

    def close(self) -> None:
        self._writes.close()
        self._client.close()
        super().close()
