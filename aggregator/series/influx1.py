"""InfluxDB 1.x series store, through its v1 HTTP API (``/write``, ``/query``, ``/ping``).

Debian's InfluxDB is 1.6.7, which has no ``/api/v2`` endpoints, so influxdb-client's write
path does not work against it; raw HTTP with line protocol built by f-strings is also the
fastest path measured (1.4 µs/point to build vs 9 µs for ``Point``; 5000-line bodies
reach ~180k points/s on two cores).

Schema (tags sorted by key, as InfluxDB recommends; timestamps in ns):

- ``prediction``: tags agent, asset, line, model, model_version, site; fields score
  (float), alert (bool), seq (int), window_start_ns (int); timestamp = window_end.
- ``drift``: tags agent, asset (omitted for a fleet-wide event), detector, line, model,
  model_version, monitor, site; fields value (float, omitted when None), detail (string),
  seq (int); timestamp = at.
- ``health``: tags agent, line, model, model_version, site; fields windows_scored,
  outbox_depth, outbox_dropped, rejected_readings (int), inference_ms_median (float,
  omitted when None), seq (int), and with the agent's label-free estimate est_windows,
  est_alerts (int), est_calibrated (bool), est_expected_positives, est_precision[_low,
  _high], est_recall[...], est_f1[...], est_horizon_s (float, each omitted when None);
  timestamp = at.

Each kind carries one more tag, ``role``, written only when it is ``shadow`` (a model run
beside the live one to be judged): live series keep the tag set they always had, so the
existing series and dashboards are unchanged, and a shadow point is a series of its own
even when the shadow is another version of the live model's name. Reads of live figures
ask for ``role != 'shadow'``, which a series without the tag satisfies.

Same measurement + tag set + timestamp is the same point in InfluxDB, so rewriting a batch
after an outage replaces points instead of doubling them.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from itertools import chain
from typing import Any

import httpx

from aggregator.errors import SeriesError, SeriesUnavailableError
from aggregator.series import (
    ESTIMATE_COLUMNS,
    LIVE,
    PAIR_READ_LIMIT,
    READ_LIMIT,
    AssetsSeen,
    DriftPoint,
    HealthPoint,
    HealthSummary,
    Paired,
    PredictionPoint,
    ScoreCounts,
    StoredEstimate,
    check_limit,
    check_offset,
    drift_order,
    from_ns,
    health_order,
    pair_up,
    to_ns,
)

__all__ = [
    "HEALTH_FIELDS",
    "Influx1Store",
    "escape_string",
    "escape_tag",
    "float_literal",
    "line_protocol",
    "prediction_lines",
    "quote_ident",
    "quote_literal",
]

logger = logging.getLogger(__name__)

MEASUREMENT = "prediction"
DRIFT = "drift"
HEALTH = "health"
BATCH_LINES = 5000  # InfluxDB's documented optimal batch size for /write
PING_TIMEOUT_S = 2.0
_TAG_SPECIALS = (",", "=", " ")
_COLUMNS = (
    "score", "alert", "seq", "window_start_ns",
    "site", "line", "agent", "asset", "model", "model_version", "role",
)
_DRIFT_COLUMNS = (
    "value", "detail", "seq",
    "site", "line", "agent", "asset", "model", "model_version", "monitor", "detector", "role",
)
_LIVE = "role != 'shadow'"  # also true of a series without the tag: every live one
# A health report's counters: field name -> how a stored value reads back. Both writers
# (this module's and influx2's, which sends the same lines) and the reader take the field
# list from here, so a new field of HealthPoint is one more entry. None is never written.
HEALTH_FIELDS: dict[str, Callable[[Any], int | float]] = {
    "windows_scored": int,
    "outbox_depth": int,
    "outbox_dropped": int,
    "rejected_readings": int,
    "inference_ms_median": float,
}
_HEALTH_COLUMNS = (*HEALTH_FIELDS, "seq", *ESTIMATE_COLUMNS, "site", "line", "agent", "model",
                   "model_version", "role")


def escape_tag(value: str) -> str:
    r"""Escape a tag value for line protocol.

    InfluxDB 1.x unescapes only ``\,``, ``\=`` and ``\ `` in tags (a doubled backslash is
    kept as two), so backslashes are passed through untouched, and a value in which a
    backslash precedes a special character or ends the value cannot be written at all.

    >>> escape_tag("pump 3,a=b")
    'pump\\ 3\\,a\\=b'
    >>> escape_tag("C:\\line")
    'C:\\line'
    """
    if "\n" in value or "\r" in value or value.endswith("\\"):
        raise ValueError(f"tag value {value!r} cannot be written as line protocol")
    if any(f"\\{c}" in value for c in _TAG_SPECIALS):
        raise ValueError(f"tag value {value!r} cannot be written as line protocol")
    return value.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


# Tag values repeat on every point of a message (agent, site, line, model) and every
# window of an asset: escaping each once is most of a prediction's line otherwise.
_tag = functools.lru_cache(maxsize=1 << 16)(escape_tag)


def escape_string(value: str) -> str:
    r"""Quote a string field value for line protocol.

    Inside a string field only ``"`` and ``\`` are escaped, and InfluxDB 1.x unescapes
    exactly those two; commas, spaces, ``=`` and even newlines stand as they are (its
    line scanner does not end a line inside a quoted field).

    >>> print(escape_string('say "hi" \\ bye, a=b'))
    "say \"hi\" \\ bye, a=b"
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    r"""Quote an InfluxQL string literal.

    >>> print(quote_literal("it's \\ here"))
    'it\'s \\ here'
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def float_literal(value: float) -> str:
    """A float as an InfluxQL number literal: plain decimal digits (the grammar has no
    exponent), exact.

    >>> float_literal(7.0599647e-08), float_literal(-0.5), float_literal(1.0)
    ('0.000000070599647', '-0.5', '1.0')
    """
    text = format(Decimal(repr(float(value))), "f")
    return text if "." in text else text + ".0"


def quote_ident(name: str) -> str:
    """Quote an InfluxQL identifier (database names).

    >>> print(quote_ident('line"3'))
    "line\\"3"
    """
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line_protocol(p: PredictionPoint | DriftPoint | HealthPoint) -> str:
    """One point as a line of line protocol (tags sorted by key; ints end in ``i``).

    ``repr(float)`` is the shortest string that reads back as the same float64, so scores
    round-trip exactly.
    """
    if isinstance(p, DriftPoint):
        return _line(
            DRIFT, to_ns(p.at),
            tags={"agent": p.agent, "asset": p.asset, "detector": p.detector, "line": p.line,
                  "model": p.model, "model_version": p.model_version, "monitor": p.monitor,
                  "role": _shadow(p.role), "site": p.site},
            fields={"value": p.value, "detail": p.detail, "seq": p.seq},
        )
    if isinstance(p, HealthPoint):
        return _line(
            HEALTH, to_ns(p.at),
            tags={"agent": p.agent, "line": p.line, "model": p.model,
                  "model_version": p.model_version, "role": _shadow(p.role), "site": p.site},
            fields={**{name: getattr(p, name) for name in HEALTH_FIELDS}, "seq": p.seq,
                    **({} if p.estimate is None else p.estimate.columns())},
        )
    # The reference prediction_lines keeps to, line for line (writes use that one).
    return (
        f"{_series(p.agent, p.asset, p.line, p.model, p.model_version, p.role, p.site)}"
        f" score={float(p.score)!r},alert={'true' if p.alert else 'false'},seq={p.seq}i"
        f",window_start_ns={to_ns(p.window_start)}i {to_ns(p.window_end)}"
    )


def prediction_lines(points: Iterable[PredictionPoint]) -> list[str]:
    """Every point's :func:`line_protocol`, character for character, for a third of the
    CPU: the bulk of every write.

    A line's cost is mostly what repeats. A message's points are consecutive and share
    one sender (site, line, agent, model, version, role, seq: the very same objects), so
    the sender is looked up again only when a point's differs from the one before, by
    identity first (a tuple per point to hash was half the cost); within a sender, each
    asset's tag set is made once. Instants repeat too (an agent scores all its assets at
    once, and a window starts where the one before it ended): a point's times are compared
    with the point before's, two datetimes in one time zone comparing as bytes, where
    hashing a new one for the look-up asks for its UTC offset and builds two timedeltas.
    """
    senders: dict[tuple[str, ...], dict[str, str]] = {}
    instants = _Instants()
    out: list[str] = []
    append = out.append
    heads: dict[str, str] = {}
    agent = site = line = model = version = role = tail = ""
    seq = -1
    last_start: datetime | None = None
    last_end: datetime | None = None
    start_ns = end_ns = ""
    for p in points:
        if (p.seq != seq or p.agent is not agent or p.site is not site or p.line is not line
                or p.model is not model or p.model_version is not version
                or p.role is not role):
            agent, site, line, seq = p.agent, p.site, p.line, p.seq
            model, version, role = p.model, p.model_version, p.role
            heads = senders.setdefault((agent, site, line, model, version, role), {})
            tail = f",seq={seq}i,window_start_ns="
        head = heads.get(p.asset)
        if head is None:
            head = heads[p.asset] = _series(agent, p.asset, line, model, version, role, site)
        start, end = p.window_start, p.window_end
        if start != last_start:
            last_start, start_ns = start, instants[start]
        if end != last_end:
            last_end, end_ns = end, instants[end]
        append(f"{head} score={float(p.score)!r},alert={'true' if p.alert else 'false'}"
               f"{tail}{start_ns}i {end_ns}")
    return out


class _Instants(dict[datetime, str]):
    """A time -> its nanoseconds as text, made on first use. Equal instants are equal keys
    whatever their time zone, and have the same nanoseconds."""

    def __missing__(self, value: datetime) -> str:
        text = self[value] = str(to_ns(value))
        return text


@functools.lru_cache(maxsize=1 << 16)
def _series(agent: str, asset: str, line: str, model: str, model_version: str, role: str,
            site: str) -> str:
    """A prediction's measurement and tag set: the same for every window of an asset, so
    built once (one cache look-up a point instead of one per tag). A live point has no
    role tag, so series written before roles existed stay the same series."""
    shadow = "" if role == LIVE else f",role={_tag(role)}"
    return (f"{MEASUREMENT},agent={_tag(agent)},asset={_tag(asset)},line={_tag(line)}"
            f",model={_tag(model)},model_version={_tag(model_version)}{shadow}"
            f",site={_tag(site)}")


def _shadow(role: str) -> str | None:
    """The role tag's value: none at all for a live point."""
    return None if role == LIVE else role


def _line(
    measurement: str, ns: int, tags: dict[str, str | None], fields: dict[str, Any]
) -> str:
    """A line with the given tags (sorted by key) and fields; None omits either."""
    tag_set = "".join(f",{k}={escape_tag(v)}" for k, v in sorted(tags.items()) if v is not None)
    field_set = ",".join(f"{k}={_field(v)}" for k, v in fields.items() if v is not None)
    return f"{measurement}{tag_set} {field_set} {ns}"


def _field(value: object) -> str:
    if isinstance(value, str):
        return escape_string(value)
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    return repr(float(value))  # type: ignore[arg-type]


class Influx1Store:
    """Series store on an InfluxDB 1.x server.

    Parameters
    ----------
    url
        Base URL of the HTTP API, e.g. ``http://127.0.0.1:8086``.
    database
        Created on open if missing (``CREATE DATABASE`` is idempotent), or on the first
        write if the server was unreachable at open.
    username, password
        HTTP basic auth, when the server has ``auth-enabled``.
    timeout_s
        Per-request timeout; a timeout counts as "unavailable".
    token
        Sent as ``Authorization: Token ...`` instead: the v1-compatible ``/query`` of
        InfluxDB 2.x and 3.x takes it, and 1.x without ``auth-enabled`` ignores it
        (``Influx2Store`` reads through this class).
    create_database
        False for a server whose databases are made by its administrator (2.x buckets,
        3.x databases): nothing is created, on open or later.
    """

    name = "influx1"
    batch_lines = BATCH_LINES  # lines per request body

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        token: str | None = None,
        create_database: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        auth = httpx.BasicAuth(username, password or "") if username else None
        headers = {"Authorization": f"Token {token}"} if token is not None else None
        self._http = httpx.Client(base_url=self.url, auth=auth, headers=headers,
                                  timeout=timeout_s)
        self._database_ready = not create_database
        if self._database_ready:
            return
        try:
            self._create_database()
        except SeriesUnavailableError as exc:
            # Start anyway: messages wait in the broker until InfluxDB is back.
            logger.warning("InfluxDB unreachable at open (%s); creating %r later", exc, database)

    # -- requests -----------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # refused, reset, timeout, DNS
            raise SeriesUnavailableError(f"InfluxDB at {self.url}: {exc!r}") from exc
        if response.status_code >= 500:
            raise SeriesUnavailableError(
                f"InfluxDB at {self.url} answered {response.status_code}: {response.text[:300]}"
            )
        return response

    def _create_database(self) -> None:
        q = f"CREATE DATABASE {quote_ident(self.database)}"
        response = self._request("POST", "/query", data={"q": q})
        _raise_for_status(response, q)
        for result in response.json().get("results", []):
            _statement_error(result, q)
        self._database_ready = True

    def _query(self, q: str) -> list[dict[str, Any]]:
        """Run one SELECT; return its rows as dicts (all series, chunk by chunk)."""
        params = {"db": self.database, "q": q, "epoch": "ns", "chunked": "true"}
        response = self._request("GET", "/query", params=params)
        _raise_for_status(response, q)
        rows: list[dict[str, Any]] = []
        # chunked=true answers one JSON document per line, so no server row limit applies.
        for chunk in response.text.splitlines():
            if not chunk.strip():
                continue
            for result in json.loads(chunk).get("results", []):
                if "database not found" in result.get("error", ""):
                    return []  # not created yet: nothing stored
                _statement_error(result, q)
                for series in result.get("series", []):
                    # GROUP BY <tag> moves that tag from the columns to the series' tags.
                    tags, columns = series.get("tags", {}), series["columns"]
                    rows.extend(
                        {**tags, **dict(zip(columns, v, strict=True))} for v in series["values"]
                    )
        return rows

    # -- SeriesStore --------------------------------------------------------------------
    def write(
        self,
        points: Sequence[PredictionPoint],
        drift: Sequence[DriftPoint] = (),
        health: Sequence[HealthPoint] = (),
    ) -> None:
        # /write is not transactional across requests, but every point is idempotent: a
        # batch that fails half-way is rewritten whole by the retry, and nothing doubles.
        others: chain[DriftPoint | HealthPoint] = chain(drift, health)
        lines = prediction_lines(points)
        lines += (line_protocol(p) for p in others)
        if not lines:
            return
        if not self._database_ready:
            self._create_database()
        for start in range(0, len(lines), self.batch_lines):
            self._write_body("\n".join(lines[start : start + self.batch_lines]))

    def _write_body(self, body: str) -> None:
        """POST one body of lines to /write (influx2 sends it its own way)."""
        params = {"db": self.database, "precision": "ns"}
        response = self._request("POST", "/write", params=params, content=body.encode())
        if response.status_code == 404 and "database not found" in response.text:
            # Dropped under us (or a fresh server): create it and write once more.
            self._create_database()
            response = self._request("POST", "/write", params=params, content=body.encode())
        if response.status_code != 204:
            raise SeriesError(
                f"InfluxDB refused a write to {self.database!r}: {response.status_code} "
                f"{response.text[:300]}",
                status=response.status_code,
                detail=response.text,
            )

    def predictions(
        self, agent: str | None = None, asset: str | None = None
    ) -> list[PredictionPoint]:
        q = f"SELECT {', '.join(_COLUMNS)} FROM {MEASUREMENT}{_where(agent=agent, asset=asset)}"
        points = [_point(row) for row in self._query(q)]
        # InfluxDB orders by time only; break ties the same way every backend does.
        points.sort(key=lambda p: (p.window_end, p.agent, p.asset, p.model, p.role))
        return points

    def count(self, agent: str | None = None, asset: str | None = None) -> int:
        return self._count("score", MEASUREMENT, _where(agent=agent, asset=asset))

    def scores(
        self,
        asset: str,
        *,
        site: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = READ_LIMIT,
    ) -> list[PredictionPoint]:
        where = _where(asset=asset, site=site, since=since, until=until, live=True)
        q = (f"SELECT {', '.join(_COLUMNS)} FROM {MEASUREMENT}{where} "
             f"ORDER BY time ASC LIMIT {check_limit(limit)}")
        # InfluxDB orders by time only; break ties the same way every backend does.
        return sorted((_point(row) for row in self._query(q)),
                      key=lambda p: (p.window_end, p.agent, p.model))

    def alerts(self, since: datetime, until: datetime, limit: int = READ_LIMIT
               ) -> list[PredictionPoint]:
        q = (f"SELECT {', '.join(_COLUMNS)} FROM {MEASUREMENT}"
             f"{_where(since=since, until=until, live=True)} AND alert = true "
             f"ORDER BY time ASC LIMIT {check_limit(limit)}")
        # InfluxDB orders by time only; break ties the same way every backend does.
        return sorted((_point(row) for row in self._query(q)),
                      key=lambda p: (p.window_end, p.agent, p.asset, p.model))

    def asset_counts(self, since: datetime, until: datetime) -> list[AssetsSeen]:
        # InfluxQL counts distinct field values, never tag values: one series per asset
        # (GROUP BY the tags), counted here. count(score) is the cheapest aggregate.
        q = (f"SELECT count(score) FROM {MEASUREMENT}"
             f"{_where(since=since, until=until, live=True)} "
             "GROUP BY site, line, model, model_version, asset")
        counts: dict[tuple[str, str, str, str], int] = {}
        for row in self._query(q):
            key = (row["site"], row["line"], row["model"], row["model_version"])
            counts[key] = counts.get(key, 0) + 1
        return [AssetsSeen(*key, assets=n) for key, n in sorted(counts.items())]

    def score_counts(self, model: str, model_version: str, since: datetime,
                     until: datetime, edges: Sequence[float]) -> ScoreCounts:
        # InfluxQL has no CASE: one count per edge, all statements in one request.
        where = _where(model=model, model_version=model_version, since=since, until=until,
                       live=True)
        counts = [f"SELECT count(score) FROM {MEASUREMENT}{where}",
                  f"SELECT count(score) FROM {MEASUREMENT}{where} AND alert = true"]
        counts += [f"SELECT count(score) FROM {MEASUREMENT}{where} AND score <= "
                   f"{float_literal(edge)}" for edge in edges]
        found = self._counts(counts)
        return ScoreCounts(found[0], found[1], tuple(found[2:]))

    def _counts(self, statements: list[str]) -> list[int]:
        """count() of each statement (0 where nothing matched), in one request."""
        q = "; ".join(statements)
        params = {"db": self.database, "q": q, "epoch": "ns"}
        response = self._request("GET", "/query", params=params)
        _raise_for_status(response, q)
        out = [0] * len(statements)
        for result in response.json().get("results", []):
            if "database not found" in result.get("error", ""):
                return out
            _statement_error(result, q)
            for series in result.get("series", []):
                out[int(result.get("statement_id", 0))] = int(series["values"][0][1])
        return out

    def drift_events(
        self,
        agent: str | None = None,
        asset: str | None = None,
        detector: str | None = None,
        since: datetime | None = None,
        limit: int = READ_LIMIT,
        *,
        until: datetime | None = None,
        site: str | None = None,
        offset: int = 0,
    ) -> list[DriftPoint]:
        where = _where(agent=agent, asset=asset, detector=detector, site=site, since=since,
                       until=until, live=True)
        q = (
            f"SELECT {', '.join(_DRIFT_COLUMNS)} FROM {DRIFT}{where} "
            f"ORDER BY time DESC LIMIT {check_limit(limit)} OFFSET {check_offset(offset)}"
        )
        # InfluxDB orders by time only; break ties the same way every backend does.
        return sorted((_drift(row) for row in self._query(q)), key=drift_order)

    def drift_count(self, agent: str | None = None, asset: str | None = None) -> int:
        return self._count("seq", DRIFT, _where(agent=agent, asset=asset))

    def health(self, agent: str | None = None, limit: int = READ_LIMIT) -> list[HealthPoint]:
        q = (
            f"SELECT {', '.join(_HEALTH_COLUMNS)} FROM {HEALTH}{_where(agent=agent)} "
            f"ORDER BY time DESC LIMIT {check_limit(limit)}"
        )
        return sorted((_health(row) for row in self._query(q)), key=health_order)

    def health_summary(self, since: datetime, until: datetime) -> list[HealthSummary]:
        q = (f"SELECT count(seq), median(inference_ms_median), max(inference_ms_median) "
             f"FROM {HEALTH}{_where(since=since, until=until, live=True)} "
             "GROUP BY site, line, agent, model, model_version")
        out = []
        for row in self._query(q):
            ms, top = row["median"], row["max"]
            out.append(HealthSummary(
                row["site"], row["line"], row["agent"], row["model"], row["model_version"],
                int(row["count"]), None if ms is None else float(ms),
                None if top is None else float(top)))
        return sorted(out, key=lambda h: (h.site, h.line, h.agent, h.model, h.model_version))

    def latest_health(self) -> dict[str, HealthPoint]:
        # With GROUP BY, LIMIT applies per group: the newest report of each agent.
        columns = ", ".join(c for c in _HEALTH_COLUMNS if c != "agent")
        q = (f"SELECT {columns} FROM {HEALTH}{_where(live=True)} GROUP BY agent "
             "ORDER BY time DESC LIMIT 1")
        return {point.agent: point for point in map(_health, self._query(q))}

    def estimates(self, since: datetime, until: datetime, *, role: str | None = LIVE
                  ) -> list[HealthPoint]:
        # With GROUP BY, LIMIT applies per series: each sender's newest report that has an
        # estimate (a point without the field fails the comparison). A version runs in one
        # role on an agent at a time, so grouping by the role too splits nothing.
        group = ("agent", "model", "model_version", "role")
        columns = ", ".join(c for c in _HEALTH_COLUMNS if c not in group)
        where = _where(since=since, until=until, live=role == LIVE,
                       role=None if role in (None, LIVE) else role)
        q = (f"SELECT {columns} FROM {HEALTH}{where} "
             f"AND est_windows >= 0 GROUP BY {', '.join(group)} ORDER BY time DESC LIMIT 1")
        found = map(_health, self._query(q))
        return sorted(found, key=lambda p: (p.agent, p.model, p.model_version))

    def health_count(self, agent: str | None = None) -> int:
        return self._count("seq", HEALTH, _where(agent=agent))

    def paired(self, candidate: tuple[str, str], baseline: tuple[str, str],
               agents: Sequence[str], since: datetime, until: datetime, *,
               limit: int = PAIR_READ_LIMIT) -> Paired:
        if not agents:
            return pair_up((), ())
        anyone = " OR ".join(f"agent = {quote_literal(a)}" for a in agents)

        def newest(model: tuple[str, str]) -> list[PredictionPoint]:
            where = _where(model=model[0], model_version=model[1], since=since, until=until)
            return [_point(row) for row in self._query(
                f"SELECT {', '.join(_COLUMNS)} FROM {MEASUREMENT}{where} AND ({anyone}) "
                f"ORDER BY time DESC LIMIT {check_limit(limit)}")]

        return pair_up(newest(candidate), newest(baseline))

    def _count(self, field: str, measurement: str, where: str) -> int:
        # count() of a field every point has: InfluxQL cannot count points as such.
        rows = self._query(f"SELECT count({field}) FROM {measurement}{where}")
        return int(rows[0]["count"]) if rows else 0

    def ping(self) -> bool:
        try:
            # Short: /readyz asks on every probe, and a probe must answer in a second or two.
            return self._request("GET", "/ping", timeout=PING_TIMEOUT_S).status_code == 204
        except SeriesUnavailableError:
            return False

    def close(self) -> None:
        self._http.close()


def _raise_for_status(response: httpx.Response, q: str) -> None:
    # 5xx was already turned into SeriesUnavailableError by _request.
    if response.status_code >= 400:
        raise SeriesError(
            f"InfluxQL {q!r} answered {response.status_code}: {response.text[:300]}",
            status=response.status_code,
            detail=response.text,
        )


def _statement_error(result: dict[str, Any], q: str) -> None:
    # InfluxDB answers 200 with the error inside the result for statement-level errors.
    if "error" in result:
        raise SeriesError(f"InfluxQL {q!r}: {result['error']}", detail=result["error"])


def _where(*, since: datetime | None = None, until: datetime | None = None,
           live: bool = False, **tags: str | None) -> str:
    clauses = [f"{tag} = {quote_literal(v)}" for tag, v in tags.items() if v is not None]
    if live:
        clauses.append(_LIVE)
    if since is not None:
        clauses.append(f"time >= {to_ns(since)}")  # an integer time literal is in ns
    if until is not None:
        clauses.append(f"time < {to_ns(until)}")
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def _point(row: dict[str, Any]) -> PredictionPoint:
    return PredictionPoint(
        site=row["site"], line=row["line"], agent=row["agent"], asset=row["asset"],
        model=row["model"], model_version=row["model_version"],
        window_start=from_ns(int(row["window_start_ns"])), window_end=from_ns(int(row["time"])),
        score=float(row["score"]), alert=bool(row["alert"]), seq=int(row["seq"]),
        role=row.get("role") or LIVE,
    )


def _drift(row: dict[str, Any]) -> DriftPoint:
    value = row["value"]
    return DriftPoint(
        site=row["site"], line=row["line"], agent=row["agent"],
        asset=row["asset"] or None,  # the tag is absent for a fleet-wide event
        at=from_ns(int(row["time"])), monitor=row["monitor"], detector=row["detector"],
        value=None if value is None else float(value), detail=row["detail"],
        model=row["model"], model_version=row["model_version"], seq=int(row["seq"]),
        role=row.get("role") or LIVE,
    )


def _health(row: dict[str, Any]) -> HealthPoint:
    counters = {name: None if row[name] is None else read(row[name])
                for name, read in HEALTH_FIELDS.items()}
    return HealthPoint(
        site=row["site"], line=row["line"], agent=row["agent"], at=from_ns(int(row["time"])),
        model=row["model"], model_version=row["model_version"], seq=int(row["seq"]),
        **counters,  # type: ignore[arg-type]
        estimate=StoredEstimate.from_columns(row), role=row.get("role") or LIVE,
    )
