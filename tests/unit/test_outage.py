"""The rules of ``outage.FailureLog`` and ``outage.mqtt.BrokerLink``, on a fake clock.

``BrokerLink`` gets a real paho client that never connects; the test calls the callbacks
the way paho 2.2's network thread does (``on_pre_connect``, then ``on_connect_fail`` from
inside an ``except OSError`` block, ``on_connect``, ``on_disconnect``). What a real broker
does is in ``tests/integration/test_outages.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from outage.failures import FailureLog
from outage.mqtt import STABLE_S, BrokerLink

LOGGER = "test.outage"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    out = [(logging.getLevelName(r.levelno), r.getMessage()) for r in caplog.records
           if r.name == LOGGER]
    caplog.clear()
    return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)


def test_a_kind_is_loud_once_then_quiet_then_summarised(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = FailureLog(logging.getLogger(LOGGER), clock=clock)
    log.failed("refused", "cannot connect: refused", retry_in_s=3)
    for _ in range(29):  # five minutes of retries every ten seconds
        clock.now += 10
        log.failed("refused", "cannot connect: refused", retry_in_s=10)
    first, *repeats = lines(caplog)
    assert first == ("WARNING", "cannot connect: refused; retrying in 3 s")
    assert {level for level, _ in repeats} == {"DEBUG"} and len(repeats) == 29
    assert repeats[0][1] == "cannot connect: refused (failure 2 in 10 s); retrying in 10 s"

    clock.now += 10
    log.failed("refused", "cannot connect: refused", retry_in_s=10)
    assert lines(caplog) == [("WARNING", "still failing after 5 min, 31 failures: "
                                         "cannot connect: refused; retrying in 10 s")]
    assert (log.failing, log.failures, log.failing_for_s) == (True, 31, 300)

    clock.now += 12
    log.recovered("connected again")
    assert lines(caplog) == [("INFO", "connected again after 5 min, 31 failures")]
    assert not log.failing and log.failures == 0 and log.total == 31


def test_each_kind_is_loud_once_and_levels_are_the_callers(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = FailureLog(logging.getLogger(LOGGER), clock=clock)
    log.failed("refused", "refused")
    log.failed("dns", "no such host", retry_in_s=0.5)
    log.failed("connack-135", "not authorised", level=logging.ERROR)
    log.failed("dns", "no such host", level=logging.ERROR)
    assert [level for level, _ in lines(caplog)] == ["WARNING", "WARNING", "ERROR", "DEBUG"]


def test_a_flapping_failure_stays_quiet_recoveries_included(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = FailureLog(logging.getLogger(LOGGER), clock=clock)
    for _ in range(200):  # lost and back every 2 s, for 400 s
        log.failed("lost", "lost the connection", retry_in_s=1)
        clock.now += 1
        log.recovered("connected again")
        clock.now += 1
    logged = lines(caplog)
    loud = [(level, text) for level, text in logged if level != "DEBUG"]
    assert loud == [("WARNING", "lost the connection; retrying in 1 s"),
                    ("INFO", "connected again after 1 s, 1 failure"),
                    ("WARNING", "lost the connection; retrying in 1 s "
                                "(150 times in the last 5 min)"),
                    ("INFO", "connected again after 1 s, 1 failure")]
    assert len(logged) == 400


def test_a_new_episode_of_a_kind_quiet_for_long_is_loud_again(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = FailureLog(logging.getLogger(LOGGER), clock=clock)
    log.failed("refused", "refused")
    log.recovered("back")
    clock.now += 3600
    log.failed("refused", "refused")
    log.recovered("back")
    assert [level for level, _ in lines(caplog)] == ["WARNING", "INFO", "WARNING", "INFO"]


# -- BrokerLink ---------------------------------------------------------------------------
def link(clock: Clock, protocol: int = mqtt.MQTTv311) -> tuple[mqtt.Client, BrokerLink]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-1", protocol=protocol)
    watched = BrokerLink(client, logging.getLogger(LOGGER), host="broker.test", port=1883,
                         client_id="gw-1", duplicate_advice="give each its own id",
                         retry_min_s=1, retry_max_s=10, clock=clock)
    # What an owner's callbacks do first (agent.publisher, aggregator.subscriber).
    client.on_connect = lambda _c, _u, _f, reason, _p: watched.connected(reason)
    client.on_disconnect = lambda _c, _u, flags, reason, props: watched.disconnected(
        flags, reason, props)
    watched.start()
    return client, watched


def fail_attempt(client: mqtt.Client, exc: OSError) -> None:
    client.on_pre_connect(client, None)  # type: ignore[misc]
    try:
        raise exc
    except OSError:
        client.on_connect_fail(client, None)  # type: ignore[misc]


def connack(client: mqtt.Client, value: int = 0) -> None:
    client.on_connect(client, None, mqtt.ConnectFlags(False),  # type: ignore[misc]
                      ReasonCode(PacketTypes.CONNACK, identifier=value), None)


def test_the_announced_retry_follows_paho_backoff(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, watched = link(clock)
    for _ in range(6):
        fail_attempt(client, ConnectionRefusedError(111, "Connection refused"))
    retries = [text.rsplit("retrying in ", 1)[1] for _, text in lines(caplog)]
    # paho sleeps twice after the very first failure (1 + 2 s), then doubles up to 10 s.
    assert retries == ["3 s", "4 s", "8 s", "10 s", "10 s", "10 s"]
    assert watched.connect_failures == 6 and not watched.up
    assert watched.problem == ("cannot connect to broker broker.test:1883: connection refused "
                               "(failing for 0.0 s, 6 failures)")


def test_connection_failures_are_named_by_kind(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    import socket
    import ssl

    client, _ = link(clock)
    fail_attempt(client, socket.gaierror(-2, "Name or service not known"))
    fail_attempt(client, ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))
    fail_attempt(client, TimeoutError("timed out"))
    assert lines(caplog) == [
        ("WARNING", "cannot connect to broker broker.test:1883: cannot resolve the host name "
                    "(Name or service not known); retrying in 3 s"),
        ("WARNING", "cannot connect to broker broker.test:1883: TLS handshake failed "
                    "([SSL: WRONG_VERSION_NUMBER] wrong version number) (attempt 2, failing "
                    "for 0.0 s); retrying in 4 s"),
        ("WARNING", "cannot connect to broker broker.test:1883: timed out (attempt 3, failing "
                    "for 0.0 s); retrying in 8 s"),
    ]


def test_a_refused_connack_is_an_error_and_its_disconnect_is_not_news(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, watched = link(clock)
    for _ in range(2):
        client.on_pre_connect(client, None)  # type: ignore[misc]
        connack(client, 0x87)
        client.on_disconnect(client, None, mqtt.DisconnectFlags(False),  # type: ignore[misc]
                             ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
    assert lines(caplog) == [
        ("ERROR", "broker broker.test:1883 refused the connection: Not authorized; "
                  "retrying in 1 s"),
        ("ERROR", "broker broker.test:1883 refused the connection: Not authorized "
                  "(attempt 2, failing for 0.0 s); retrying in 2 s"),
    ]
    assert watched.connect_failures == 2 and watched.disconnects == 0


def test_mqtt5_session_taken_over_is_a_duplicate_client_id_at_once(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, watched = link(clock, mqtt.MQTTv5)
    client.on_pre_connect(client, None)  # type: ignore[misc]
    connack(client)
    clock.now += 60  # a long-lived connection: no pattern, only the reason code says it
    client.on_disconnect(client, None, mqtt.DisconnectFlags(True),  # type: ignore[misc]
                         ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), None)
    assert lines(caplog) == [
        ("INFO", "connected to broker broker.test:1883 as client id 'gw-1'"),
        ("WARNING", "lost the connection to broker broker.test:1883 after 60 s: the broker "
                    "sent DISCONNECT: Session taken over; retrying in 1 s"),
        ("ERROR", "another client is using the client id 'gw-1' on broker broker.test:1883: "
                  "give each its own id (the broker said the session was taken over)"),
    ]
    assert watched.duplicate_client_id and watched.takeovers == 1
    assert watched.problem is not None and "give each its own id" in watched.problem

    client.on_pre_connect(client, None)  # type: ignore[misc]
    connack(client)
    clock.now += STABLE_S
    watched.tick()
    assert not watched.duplicate_client_id and watched.problem is None
    assert lines(caplog) == [
        ("INFO", "connected to broker broker.test:1883 again after 0.0 s, 1 attempt"),
        ("INFO", "client id 'gw-1' on broker broker.test:1883 is ours alone again after 10 s,"
                 " 1 failure"),
    ]


def test_short_sessions_in_a_row_mean_a_duplicate_client_id(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, watched = link(clock)
    for _ in range(3):
        client.on_pre_connect(client, None)  # type: ignore[misc]
        connack(client)
        clock.now += 1
        client.on_disconnect(client, None, mqtt.DisconnectFlags(False),  # type: ignore[misc]
                             ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
        clock.now += 1
    errors = [text for level, text in lines(caplog) if level == "ERROR"]
    assert errors == ["another client is using the client id 'gw-1' on broker "
                      "broker.test:1883: give each its own id (inferred: the broker closed 3 "
                      "connections in a row within 5 s of accepting them)"]
    assert watched.duplicate_client_id and watched.takeovers == 3 and watched.disconnects == 3


def test_a_broker_restart_between_short_sessions_is_not_a_duplicate(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, watched = link(clock)
    for _ in range(4):
        client.on_pre_connect(client, None)  # type: ignore[misc]
        connack(client)
        clock.now += 1
        client.on_disconnect(client, None, mqtt.DisconnectFlags(False),  # type: ignore[misc]
                             ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
        fail_attempt(client, ConnectionRefusedError(111, "Connection refused"))
    assert not watched.duplicate_client_id and watched.takeovers == 0
    assert "ERROR" not in [level for level, _ in lines(caplog)]


def test_a_disconnect_asked_for_is_not_a_failure(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, watched = link(clock)
    client.on_pre_connect(client, None)  # type: ignore[misc]
    connack(client)
    watched.closing()
    client.on_disconnect(client, None, mqtt.DisconnectFlags(False),  # type: ignore[misc]
                         ReasonCode(PacketTypes.DISCONNECT, identifier=0), None)
    assert lines(caplog) == [("INFO", "connected to broker broker.test:1883 as client id "
                                      "'gw-1'")]
    assert watched.disconnects == 0 and watched.last_error is None


def lost(client: mqtt.Client, value: int = 0x80, *, from_broker: bool = False,
         properties: Properties | None = None) -> None:
    client.on_disconnect(client, None, mqtt.DisconnectFlags(from_broker),  # type: ignore[misc]
                         ReasonCode(PacketTypes.DISCONNECT, identifier=value), properties)


def test_reconnect_attempts_are_told_at_a_falling_rate_and_the_return_with_its_time(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, watched = link(clock)
    client.on_pre_connect(client, None)  # type: ignore[misc]
    connack(client)
    clock.now += 600
    lost(client)
    for _ in range(70):  # the broker is down for about six minutes
        clock.now += 5
        fail_attempt(client, ConnectionRefusedError(111, "Connection refused"))
    clock.now += 5
    client.on_pre_connect(client, None)  # type: ignore[misc]
    connack(client)
    logged = lines(caplog)
    loud = [text for level, text in logged if level != "DEBUG"]
    assert loud == [
        "connected to broker broker.test:1883 as client id 'gw-1'",
        "lost the connection to broker broker.test:1883 after 10 min: the broker closed the "
        "connection (socket EOF); retrying in 1 s",
        "cannot connect to broker broker.test:1883: connection refused; retrying in 2 s",
        *[f"cannot connect to broker broker.test:1883: connection refused (attempt {n}, "
          f"failing for {took}); retrying in {wait} s"
          for n, took, wait in [(2, "10 s", 4), (4, "20 s", 10), (8, "40 s", 10),
                                (16, "80 s", 10), (32, "3 min", 10), (64, "5 min", 10)]],
        "connected to broker broker.test:1883 again after 6 min, 71 attempts",
    ]
    quiet = [text for level, text in logged if level == "DEBUG"]
    assert len(quiet) == 70 - 7
    assert quiet[0] == ("cannot connect to broker broker.test:1883: connection refused "
                        "(attempt 3, failing for 15 s); retrying in 8 s")
    assert watched.connect_failures == 70 and watched.disconnects == 1


def test_a_long_outage_is_summarised_between_the_powers_of_two(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, _ = link(clock)
    client.on_pre_connect(client, None)  # type: ignore[misc]
    connack(client)
    lost(client)
    for _ in range(200):
        clock.now += 10
        fail_attempt(client, ConnectionRefusedError(111, "Connection refused"))
    loud = [text for level, text in lines(caplog) if level == "WARNING"]
    told = [text.split(": cannot connect")[0] if text.startswith("still") else
            text.split("refused (")[1].split(")")[0] for text in loud[2:]]
    # Attempts 1, 2, 4, 8, ..., and a summary when 5 min went by without a loud line.
    assert told == [
        "attempt 2, failing for 20 s", "attempt 4, failing for 40 s",
        "attempt 8, failing for 80 s", "attempt 16, failing for 3 min",
        "attempt 32, failing for 5 min", "still failing after 10 min, attempt 62",
        "attempt 64, failing for 11 min", "still failing after 16 min, attempt 94",
        "still failing after 21 min, attempt 124", "attempt 128, failing for 21 min",
        "still failing after 26 min, attempt 158", "still failing after 31 min, attempt 188",
    ]


@pytest.mark.parametrize(("how", "why"), [
    ("eof", "the broker closed the connection (socket EOF)"),
    ("reset", "socket error: connection reset by the peer"),
    ("pipe", "the broker had closed the connection (broken pipe on sending)"),
    ("keepalive", "keepalive timeout: no answer from the broker to a ping within 45 s"),
    ("mqtt5", "the broker sent DISCONNECT: Server shutting down (going down for maintenance)"),
])
def test_a_lost_connection_is_told_in_words(
    caplog: pytest.LogCaptureFixture, clock: Clock, how: str, why: str
) -> None:
    client, _ = link(clock, mqtt.MQTTv5)
    client.keepalive = 45
    client.on_pre_connect(client, None)  # type: ignore[misc]
    connack(client)
    clock.now += 30
    if how in ("reset", "pipe"):
        # What paho 2.2 logs when recv() or send() raises, right before on_disconnect.
        error = (ConnectionResetError(104, "Connection reset by peer") if how == "reset"
                 else BrokenPipeError(32, "Broken pipe"))
        client._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", error)
    if how == "mqtt5":
        properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        properties.ReasonString = "going down for maintenance"
        lost(client, 0x8B, from_broker=True, properties=properties)
    else:
        lost(client, 0x8D if how == "keepalive" else 0x80)
    assert lines(caplog)[-1] == (
        "WARNING", f"lost the connection to broker broker.test:1883 after 30 s: {why}; "
                   "retrying in 1 s")


def test_paho_errors_other_than_the_socket_go_to_debug(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    client, _ = link(clock)
    client._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", ValueError("x"))
    client._easy_log(mqtt.MQTT_LOG_DEBUG, "Received PUBLISH (d0, q1, r0, m1), ...")
    assert lines(caplog) == [("DEBUG", "paho: Caught exception in on_message: x")]


# -- the aggregator's logging ---------------------------------------------------------------
@pytest.fixture
def logger_levels() -> Iterator[None]:
    """Logger levels are global: put back what a test changes."""
    names = ["httpx", "httpcore", "amqtt", "transitions", "alembic.runtime.plugins"]
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.usefixtures("logger_levels")
def test_the_aggregator_log_has_no_line_per_http_request(
    caplog: pytest.LogCaptureFixture, verbose: bool
) -> None:
    from aggregator.__main__ import _log

    caplog.set_level(logging.DEBUG)  # the root: everything that is not filtered shows
    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    with httpx.Client(transport=transport, base_url="http://influx.test") as http:
        logging.getLogger("httpx").setLevel(logging.NOTSET)
        http.post("/write")
        assert any(r.name == "httpx" and "HTTP Request" in r.getMessage()
                   for r in caplog.records), "the test must be able to see the line"
        caplog.clear()
        _log(verbose)  # what `python -m aggregator serve` and `linewatch aggregator` run
        http.post("/write")
        http.post("/write")
    assert [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))] == []
