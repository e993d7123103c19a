"""``BrokerLink``: why a paho-mqtt client is not connected, when it tries again, and whether
another client is using its client id.

paho-mqtt 2.x (``CallbackAPIVersion.VERSION2``) reports a failed connection in three places,
and the link covers all three:

- an exception from ``reconnect()`` in ``loop_start``'s thread: refused, unreachable host,
  DNS, timeout, TLS handshake or certificate. paho catches the ``OSError`` and calls
  ``on_connect_fail`` from inside its ``except`` block, so ``sys.exc_info()`` still holds
  the exception there; the link sets ``on_connect_fail`` itself;
- a CONNACK that refuses (bad user name or password, not authorised: MQTT 5 reason codes
  0x86/0x87, 3.1.1 return codes 4/5): ``on_connect`` with a failing reason code;
- a connection that ends: ``on_disconnect``, with the broker's DISCONNECT reason code
  when an MQTT 5 broker sent one.

The owner's ``on_connect`` / ``on_disconnect`` callbacks call :meth:`BrokerLink.connected`
and :meth:`BrokerLink.disconnected` first; ``start()``, ``closing()`` and ``tick()`` come
from its own lifecycle and worker thread.

Why a connection ended, in words: paho reports every lost connection as "Unspecified
error" (0x80). The link gives paho a private logger (``enable_logger``, at ERROR) to catch
the socket error paho logs just before it calls ``on_disconnect``, and tells: "the broker
closed the connection (socket EOF)" when there was none, "socket error: connection reset by
the peer", "keepalive timeout: no answer from the broker to a ping within 30 s", or, when
an MQTT 5 broker sent DISCONNECT, its reason code and reason string.

Reconnect attempts are numbered per episode (from the lost connection, or from ``start()``):
attempts 1, 2, 4, 8, ... are logged at WARNING, the others at DEBUG, with a summary every 5
min (``FailureLog``), and the episode ends with one INFO line "connected to broker H:P again
after 37 s, 9 attempts".

When paho tries again: ``loop_start`` sleeps the ``reconnect_delay_set`` backoff before each
new attempt (min, doubled up to max, back to min after an accepted CONNACK), and after the
very first failed attempt it sleeps twice (its first-connection loop, then its main loop),
so with min 1 s and max 5 s the attempts come at 0, 3, 7, 12, 17, ... s. The link sets the
backoff and mirrors that arithmetic (paho 2.2.0), so "retrying in N s" is when the next
attempt comes.

Duplicate client id: a broker keeps one connection per client id, so a second client with
the same id makes it close the first, which reconnects a second later and closes the
second, and so on. An MQTT 5 broker may say so (DISCONNECT 0x8E "Session taken over";
Mosquitto 2.0.11 closes the socket without it). Otherwise the pattern gives it away:
``SHORT_SESSIONS`` connections in a row that the broker accepted at once and closed
within ``SHORT_SESSION_S``. Either way it is logged at ERROR and ``duplicate_client_id``
stays true until one connection has lasted ``STABLE_S``.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from outage.failures import SUMMARY_EVERY_S, FailureLog, span

__all__ = ["BrokerLink", "describe_error"]

SESSION_TAKEN_OVER = 0x8E
SHORT_SESSION_S = 5.0
SHORT_SESSIONS = 3
STABLE_S = 10.0
_UNSPECIFIED = 0x80  # paho's reason for a connection that simply went away
_KEEPALIVE_TIMEOUT = 0x8D  # paho's reason when the broker did not answer its ping
_NORMAL = 0x00


def describe_error(exc: BaseException | None) -> tuple[str, str]:
    """(kind, reason) of an exception from a connection attempt, for a log line.

    A plain error raised inside the TLS handshake (a plain-MQTT port answering a TLS client
    resets the connection) is told as a TLS failure: the reset alone would hide where.

    >>> describe_error(ConnectionRefusedError(111, "Connection refused"))
    ('refused', 'connection refused')
    >>> describe_error(socket.gaierror(-2, "Name or service not known"))
    ('dns', 'cannot resolve the host name (Name or service not known)')
    >>> describe_error(OSError(errno.EHOSTUNREACH, "No route to host"))
    ('unreachable', 'host unreachable (No route to host)')
    """
    if exc is None:
        return "unknown", "the attempt failed without an error"
    if not isinstance(exc, ssl.SSLError) and _in_tls_handshake(exc):
        return "tls", f"TLS handshake failed ({_describe(exc)[1]}; does that port speak TLS?)"
    return _describe(exc)


def _in_tls_handshake(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "do_handshake":
            return True
        tb = tb.tb_next
    return False


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, socket.gaierror):
        return "dns", f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls-certificate", f"TLS certificate not accepted ({exc.verify_message or exc})"
    if isinstance(exc, ssl.SSLError):
        # `reason` is set by the ssl module ("WRONG_VERSION_NUMBER"); the text says more.
        return "tls", f"TLS handshake failed ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, TimeoutError):
        return "timeout", "timed out"
    if isinstance(exc, ConnectionResetError):
        return "reset", "connection reset by the peer"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        what = "host" if exc.errno == errno.EHOSTUNREACH else "network"
        return "unreachable", f"{what} unreachable ({exc.strerror})"
    if isinstance(exc, OSError):
        return f"os-{exc.errno}", exc.strerror or str(exc) or type(exc).__name__
    return type(exc).__name__, f"{type(exc).__name__}: {exc}"


def _why(
    flags: Any, reason: ReasonCode | None, properties: Any, socket_error: BaseException | None,
    keepalive_s: int,
) -> str:
    """Why a connection ended, in words, from on_disconnect's arguments and the socket error
    paho logged just before (if any).

    >>> from paho.mqtt.packettypes import PacketTypes
    >>> lost = ReasonCode(PacketTypes.DISCONNECT, identifier=_UNSPECIFIED)
    >>> _why(None, lost, None, None, 30)
    'the broker closed the connection (socket EOF)'
    >>> _why(None, lost, None, ConnectionResetError(104, "Connection reset by peer"), 30)
    'socket error: connection reset by the peer'
    >>> _why(None, ReasonCode(PacketTypes.DISCONNECT, identifier=_KEEPALIVE_TIMEOUT), None,
    ...      None, 30)
    'keepalive timeout: no answer from the broker to a ping within 30 s'
    """
    if bool(getattr(flags, "is_disconnect_packet_from_server", False)):
        said = f"the broker sent DISCONNECT: {reason}"
        reason_string = getattr(properties, "ReasonString", None)
        return f"{said} ({reason_string})" if reason_string else said
    value = None if reason is None else reason.value
    if value == _KEEPALIVE_TIMEOUT:
        return f"keepalive timeout: no answer from the broker to a ping within {keepalive_s} s"
    if isinstance(socket_error, BrokenPipeError):
        return "the broker had closed the connection (broken pipe on sending)"
    if isinstance(socket_error, ssl.SSLError):
        return f"socket error: TLS ({socket_error})"
    if socket_error is not None:
        return f"socket error: {_describe(socket_error)[1]}"
    if value == _NORMAL:
        return "the connection was closed normally"
    if value is None or value == _UNSPECIFIED:
        return "the broker closed the connection (socket EOF)"
    return f"paho reported: {reason}"


class _PahoErrors(logging.Handler):
    """Receives paho's own ERROR lines (``Client.enable_logger``): keeps the socket error that
    precedes a lost connection for the link, and passes the rest on at DEBUG."""

    def __init__(self, link: BrokerLink) -> None:
        super().__init__(logging.ERROR)
        self._link = link

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        found = next((a for a in args if isinstance(a, OSError)), None)
        if found is not None and "on socket" in str(record.msg):
            self._link._socket_error = found
        elif not str(record.msg).startswith("Client is not connected"):
            # (that one comes with every reconnect attempt: paho's loop without a socket)
            self._link._logger.debug("paho: %s", record.getMessage())


class BrokerLink:
    """Follows one paho client's connection to its broker and tells about it (module
    docstring): every failure logged through a :class:`FailureLog`, a duplicate client id
    detected and logged at ERROR, and the state for health and readiness reports.

    Parameters
    ----------
    client
        The paho client (VERSION2 callbacks); its backoff, ``on_pre_connect`` and
        ``on_connect_fail`` are set here.
    logger
        The owner's logger.
    host, port, client_id
        For the log lines.
    duplicate_advice
        What the operator must change when the client id is taken, e.g. "every aggregator
        replica needs its own LINEWATCH_MQTT_CLIENT_ID (see README)".
    retry_min_s, retry_max_s
        paho's reconnect backoff.

    The link also takes paho's ``on_pre_connect``, ``on_connect_fail`` and its logger
    (``enable_logger``); the owner must not set them.
    """

    def __init__(
        self,
        client: mqtt.Client,
        logger: logging.Logger,
        *,
        host: str,
        port: int,
        client_id: str,
        duplicate_advice: str,
        retry_min_s: int = 1,
        retry_max_s: int = 5,
        summary_every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = f"{host}:{port}"
        self.client_id = client_id
        self._advice = duplicate_advice
        self._logger = logger
        self._clock = clock
        self._min, self._max = retry_min_s, retry_max_s
        client.reconnect_delay_set(min_delay=retry_min_s, max_delay=retry_max_s)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect_fail = self._on_connect_fail
        self._client = client
        # Not registered with logging.getLogger: private to this client, never propagated.
        paho_logger = logging.Logger(f"paho.{client_id}", logging.ERROR)
        paho_logger.addHandler(_PahoErrors(self))
        client.enable_logger(paho_logger)
        self._socket_error: BaseException | None = None  # set by _PahoErrors
        self._log = FailureLog(logger, summary_every_s=summary_every_s, clock=clock)
        self._taken = FailureLog(logger, summary_every_s=summary_every_s, clock=clock)
        self._lock = threading.Lock()
        self._delay: float | None = None  # paho's last backoff sleep; None after a CONNACK
        self._attempts = 0  # since start()
        self._tries = 0  # attempts in the current episode (since start() or the last loss)
        self._up_since: float | None = None
        self._ever_up = False
        self._closing = False  # the owner is closing the connection itself
        self._refused = False  # a refused CONNACK was told; its disconnect is not news
        self._streak = 0  # short sessions in a row
        self._duplicate_since: float | None = None
        self.connect_failures = 0
        self.disconnects = 0
        self.takeovers = 0

    # -- paho's backoff, mirrored --------------------------------------------------------
    def _peek(self) -> float:
        return self._min if self._delay is None else min(self._delay * 2, self._max)

    def _sleep(self) -> float:
        """One of paho's ``_reconnect_wait`` sleeps: how long it is."""
        self._delay = self._peek()
        return self._delay

    # -- owner's lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Call right before ``connect_async``: paho's backoff starts over."""
        with self._lock:
            self._delay, self._attempts, self._tries, self._closing = None, 0, 0, False

    def closing(self) -> None:
        """Call right before closing the connection on purpose (shutdown, a deliberate
        reconnect): the disconnect that follows is not a failure."""
        self._closing = True

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_pre_connect(self, _client: mqtt.Client, _userdata: Any) -> None:
        with self._lock:
            self._attempts += 1
            self._tries += 1
            self._socket_error = None

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # Called from paho's `except OSError:` block: the exception is still current.
        kind, reason = describe_error(sys.exc_info()[1])
        with self._lock:
            wait = self._sleep()
            if self._attempts <= 1:
                wait += self._sleep()  # the first-connection loop's extra sleep
            self._streak = 0
            self.connect_failures += 1
            tries = self._tries
        self._log.failed(kind, f"cannot connect to broker {self.broker}: {reason}",
                         retry_in_s=wait, attempt=tries)

    def connected(self, reason: ReasonCode) -> bool:
        """From the owner's ``on_connect``: True if the broker accepted the connection."""
        if reason.is_failure:
            with self._lock:
                self._refused = True
                self._streak = 0
                self.connect_failures += 1
                wait = self._peek()  # paho sleeps after the disconnect that follows
                tries = self._tries
            # Credentials or ACLs: an operator must act, so ERROR; retried all the same.
            self._log.failed(f"connack-{reason.value}",
                             f"broker {self.broker} refused the connection: {reason}",
                             retry_in_s=wait, level=logging.ERROR, attempt=tries)
            return False
        with self._lock:
            self._delay = None
            self._up_since = self._clock()
            self._closing = False
            first = not self._ever_up
            self._ever_up = True
            tries, self._tries = self._tries, 0
        connected = f"connected to broker {self.broker}{'' if first else ' again'}"
        if not self._log.recovered(connected, attempts=tries) and first:
            self._logger.info("%s as client id %r", connected, self.client_id)
        return True

    def disconnected(self, flags: Any, reason: ReasonCode | None, properties: Any = None) -> None:
        """From the owner's ``on_disconnect``; pass its ``properties`` too, for the reason
        string of an MQTT 5 broker's DISCONNECT."""
        with self._lock:
            wait = self._sleep()  # paho sleeps after every disconnect it did not ask for
            now = self._clock()
            lived = None if self._up_since is None else now - self._up_since
            self._up_since = None
            socket_error, self._socket_error = self._socket_error, None
            if lived is not None:
                self._tries = 0  # a new episode: its attempts are counted from 1
            if self._closing:
                self._closing = False
                return
            if self._refused:
                self._refused = False
                return
            explicit = taken = False
            if lived is None:
                self.connect_failures += 1
            else:
                self.disconnects += 1
                explicit = (bool(getattr(flags, "is_disconnect_packet_from_server", False))
                            and reason is not None and reason.value == SESSION_TAKEN_OVER)
                self._streak = self._streak + 1 if explicit or lived < SHORT_SESSION_S else 0
                taken = explicit or self._streak >= SHORT_SESSIONS
                if taken:
                    self.takeovers += self._streak if self._duplicate_since is None else 1
                    if self._duplicate_since is None:
                        self._duplicate_since = now
            streak, tries = self._streak, self._tries
        why = _why(flags, reason, properties, socket_error, self._client.keepalive)
        if lived is None:
            self._log.failed("closed-early", f"broker {self.broker} closed the connection "
                             f"before accepting it ({why})", retry_in_s=wait, attempt=tries)
            return
        self._log.failed("lost", f"lost the connection to broker {self.broker} after "
                         f"{span(lived)}: {why}", retry_in_s=wait)
        if taken:
            how = ("the broker said the session was taken over" if explicit else
                   f"inferred: the broker closed {streak} connections in a row within "
                   f"{SHORT_SESSION_S:g} s of accepting them")
            self._taken.failed("duplicate", f"another client is using the client id "
                               f"{self.client_id!r} on broker {self.broker}: {self._advice} "
                               f"({how})", level=logging.ERROR)

    # -- owner's worker thread -----------------------------------------------------------
    def tick(self) -> None:
        """Call every second or so: ends a duplicate-id episode once a connection has
        lasted ``STABLE_S``."""
        with self._lock:
            over = self._duplicate_since is not None and self._stable()
            if over:
                self._duplicate_since, self._streak = None, 0
        if over:
            self._taken.recovered(f"client id {self.client_id!r} on broker {self.broker} "
                                  "is ours alone again")

    def _stable(self) -> bool:
        up = self._up_since
        return up is not None and self._clock() - up >= STABLE_S

    # -- state ---------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        """Between an accepted CONNACK and the next disconnect."""
        return self._up_since is not None

    @property
    def duplicate_client_id(self) -> bool:
        """Another client has been taking our client id over, and no connection has lasted
        ``STABLE_S`` since."""
        with self._lock:
            return self._duplicate_since is not None and not self._stable()

    @property
    def last_error(self) -> str | None:
        """The latest failure, told or not, now or earlier (None: none yet)."""
        return self._log.last

    @property
    def problem(self) -> str | None:
        """What is wrong with the link right now, in one sentence; None when it is fine."""
        if self.duplicate_client_id:
            return (f"another client is using the client id {self.client_id!r} on broker "
                    f"{self.broker} ({self.takeovers} connections taken over): "
                    f"{self._advice}")
        if self.up:
            return None
        if self._log.failing:
            return (f"{self._log.last} (failing for {span(self._log.failing_for_s)}, "
                    f"{self._log.failures} failures)")
        return f"not connected to broker {self.broker} yet"
