"""Model assignments from the registry: download, verify, unpack, self-test, in the background.

The publisher hands every :class:`contract.wire.Assignment` read on this agent's
``cmd/model`` topic to :meth:`Rollout.submit`; a thread of its own does the slow part, so
scoring never waits for a download or an ONNX session. For the live artifact and the
shadow one, if any: reuse the version in the store if it is still what was signed
(``agent.modelstore``), else download it with urllib (a timeout, at most ``Artifact.size``
bytes, retried with backoff on network errors and 5xx answers), check its sha256 and
signature against the trusted keys *before* unpacking a byte, unpack it into the store, load
it with :class:`agent.inference.OnnxModel` (which runs the card's self-test), and check that
this agent's source and windows can feed it (:func:`agent.modelstore.differences`).

The outcome, :class:`Prepared` or :class:`Refused`, waits in :meth:`Rollout.outcomes` for
the pipeline, which swaps (or reports the refusal) between two ticks. Only the latest
assignment matters: one that arrives while another is being fetched replaces it as the next
to do, and a download in backoff gives up for it. An assignment id already applied, or
refused for a reason a retry cannot change (signature, sha256, self-test, card), is not
tried again in this process (the retained message comes again at every reconnection). One
refused because its download failed in a way that may pass (network, HTTP 5xx or 429) is
reported once and prepared again in the background, a minute later, then after twice as
long each time up to 15 min, until a newer assignment replaces it: a gateway whose network
was down takes its model when the network is back, not at the next message. Any other
failed download is tried again when the assignment comes again.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.inference import OnnxModel, SelfTestError
from agent.modelstore import ModelStore, differences
from contract import artifact as artifacts
from contract import wire
from contract.card import CardError, ModelCard

__all__ = ["Prepared", "Refused", "Rollout", "download"]

logger = logging.getLogger(__name__)

_BACKOFF_S, _BACKOFF_MAX_S = 1.0, 60.0
# A network down for hours must not cost a request a minute for hours, nor leave a gateway a
# day behind its assignment once it is back.
_RETRY_S, _RETRY_MAX_S = 60.0, 900.0
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Prepared:
    """An assignment whose models passed every check, ready to swap in."""

    assignment: wire.Assignment
    live: OnnxModel
    live_dir: str
    shadow: OnnxModel | None
    shadow_dir: str | None


@dataclass(frozen=True)
class Refused:
    """An assignment that cannot run: ``cause`` is one word (sha256, signature, malformed,
    too_large, key, download, self-test, card), ``reason`` the sentence reported; ``retry``:
    a download that may pass later (network, HTTP 5xx or 429), tried again in the
    background."""

    assignment: wire.Assignment
    cause: str
    reason: str
    retry: bool = False


class _Refusal(Exception):
    def __init__(self, cause: str, reason: str, *, retry: bool = False) -> None:
        super().__init__(reason)
        self.cause, self.reason, self.retry = cause, reason, retry


def download(url: str, size: int, timeout_s: float, *,
             context: ssl.SSLContext | None = None) -> bytes:
    """The bytes at ``url``; raises ``_Refusal`` (``retry`` set for what may pass: network
    errors and server errors) or when the server sends more than ``size`` bytes. An https
    server is verified with ``context`` (``model.ca_file``), else the system's CA store."""
    request = urllib.request.Request(url, headers={"User-Agent": "linewatch-agent"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s,  # noqa: S310
                                    context=context) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > size:
                raise _Refusal("too_large", f"download of {url}: {length} bytes announced, "
                               f"the assignment says {size}")
            chunks, got = [], 0
            while got <= size:
                chunk = response.read(min(_CHUNK, size + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            if got > size:
                raise _Refusal("too_large", f"download of {url}: more than the {size} bytes "
                               "the assignment says")
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        raise _Refusal("download", f"download of {url} failed: HTTP {exc.code} {exc.reason}",
                       retry=exc.code >= 500 or exc.code == 429) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            # Not retried: the same certificate fails the same way until the server's
            # certificate or model.ca_file changes.
            raise _Refusal("download", f"download of {url} failed: the server's certificate "
                           f"is not trusted ({exc.reason.verify_message or exc.reason}); "
                           "model.ca_file names the CA bundle to trust") from exc
        raise _Refusal("download", f"download of {url} failed: {exc.reason or exc}",
                       retry=True) from exc
    except (http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _Refusal("download", f"download of {url} failed: {reason}", retry=True) from exc


class Rollout:
    """The background fetcher of one agent. ``running`` is the card of the model the agent
    runs (what an assigned card must be compatible with); ``done`` the assignment id it
    already runs, if any. ``fetch`` is :func:`download` (tests pass another). An assignment
    refused for a download that may pass later is prepared again ``retry_s`` after, then
    after twice as long each time up to 15 min, until it passes, fails for another cause or
    another assignment comes."""

    def __init__(self, store: ModelStore, keys: list[Path], running: ModelCard, *,
                 agent_id: str, done: str | None = None, timeout_s: float = 30.0,
                 attempts: int = 5, backoff_s: float = _BACKOFF_S, retry_s: float = _RETRY_S,
                 fetch: Callable[[str, int, float], bytes] = download) -> None:
        self.store = store
        self.keys = keys
        self.running = running
        self.agent_id = agent_id
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.retry_s = retry_s
        self._fetch = fetch
        self._done: set[str] = {done} if done else set()
        self._lock = threading.Condition()
        self._next: wire.Assignment | None = None
        # The assignment whose download is to be tried again, when, and the wait before it.
        self._retry: wire.Assignment | None = None
        self._retry_at = self._retry_wait = 0.0
        self._outcomes: list[Prepared | Refused] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="linewatch-rollout",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, assignment: wire.Assignment) -> None:
        """Take an assignment (any thread); returns at once."""
        with self._lock:
            if self._retry is not None and self._retry.id != assignment.id:
                logger.info("model assignment %s: no longer tried again, %s replaces it",
                            self._retry.id, assignment.id)
                self._retry = None
            if assignment.id in self._done:
                logger.debug("model assignment %s already handled", assignment.id)
                return
            self._next = assignment
            self._lock.notify_all()

    def outcomes(self) -> list[Prepared | Refused]:
        """What finished since the last call (the pipeline's thread, between ticks). The
        store no longer holds the directories of those prepared: the caller swaps them in
        (or not) before it prunes the store."""
        with self._lock:
            out, self._outcomes = self._outcomes, []
        for outcome in out:
            if isinstance(outcome, Prepared):
                self.store.release(self._dirs(outcome.assignment))
        return out

    def _dirs(self, assignment: wire.Assignment) -> list[str]:
        return [self.store.dir_name(a) for a in (assignment.live, assignment.shadow)
                if a is not None]

    def _take(self) -> tuple[wire.Assignment | None, bool]:
        """The next assignment to prepare, and whether it is a retry of a refused download;
        None when stopping."""
        with self._lock:
            while self._next is None and not self._stop.is_set():
                if self._retry is not None and time.monotonic() >= self._retry_at:
                    return self._retry, True
                self._lock.wait(None if self._retry is None
                                else self._retry_at - time.monotonic())
            assignment, self._next = self._next, None
            # The same assignment delivered again (a reconnection) while it waits to be
            # tried again: still a retry, refused already.
            return assignment, assignment is not None and self._retry is not None and \
                self._retry.id == assignment.id

    def _work(self) -> None:
        while not self._stop.is_set():
            assignment, retried = self._take()
            if assignment is None:
                return
            # Held from before the store is looked at until the pipeline takes what was
            # prepared: a prune in between would remove a version about to run.
            dirs = self._dirs(assignment)
            self.store.hold(dirs)
            try:
                outcome = self.prepare(assignment)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop later ones
                logger.exception("model assignment %s: unexpected failure", assignment.id)
                outcome = Refused(assignment, "error", f"error preparing the models: {exc}")
            reported = outcome is not None and self._report(outcome, retried)  # None: superseded
            if not (reported and isinstance(outcome, Prepared)):
                self.store.release(dirs)  # held on only for what the pipeline is to swap in

    def _report(self, outcome: Prepared | Refused, retried: bool) -> bool:
        """Hand ``outcome`` to the pipeline, unless it is a refusal reported already."""
        with self._lock:
            if isinstance(outcome, Prepared) or not outcome.cause == "download":
                self._done.add(outcome.assignment.id)
            self._schedule(outcome, retried)
            if retried and isinstance(outcome, Refused) and outcome.retry:
                return False  # reported at the first round: once, not once per round
            self._outcomes.append(outcome)
            return True

    def _schedule(self, outcome: Prepared | Refused, retried: bool) -> None:
        """Set when ``outcome``'s assignment is prepared again, if it is (under the lock)."""
        assignment = outcome.assignment
        superseded = self._next is not None and self._next.id != assignment.id
        if not isinstance(outcome, Refused) or not outcome.retry or superseded or \
                self._stop.is_set():
            if self._retry is not None and self._retry.id == assignment.id:
                self._retry = None
            return
        self._retry_wait = (min(self._retry_wait * 2, max(_RETRY_MAX_S, self.retry_s))
                            if retried else self.retry_s)
        self._retry, self._retry_at = assignment, time.monotonic() + self._retry_wait
        # Said once; the later rounds of a long outage only at DEBUG.
        logger.log(logging.DEBUG if retried else logging.WARNING,
                   "model assignment %s: its download is tried again in %.3g s%s",
                   assignment.id, self._retry_wait,
                   "" if retried else ", then after twice as long each time")

    def prepare(self, assignment: wire.Assignment) -> Prepared | Refused | None:
        """Every check of one assignment; None when a newer one or a stop cut it short."""
        logger.info("model assignment %s: %s %s as %s%s", assignment.id,
                    assignment.live.name, assignment.live.version, assignment.stage,
                    "" if assignment.shadow is None else
                    f", shadow {assignment.shadow.name} {assignment.shadow.version}")
        try:
            if assignment.agent != self.agent_id:
                raise _Refusal("other-agent", f"assignment for agent {assignment.agent!r}")
            keys = self._keys()
            live_dir, live = self._one(assignment.live, keys)
            shadow_dir, shadow = (None, None) if assignment.shadow is None else self._one(
                assignment.shadow, keys)
        except _Superseded:
            return None
        except _Refusal as exc:
            return Refused(assignment, exc.cause, exc.reason, exc.retry)
        return Prepared(assignment, live, live_dir, shadow, shadow_dir)

    def _keys(self) -> list[bytes]:
        if not self.keys:
            raise _Refusal("key", "no trusted key configured (model.trusted_keys)")
        try:
            return [p.read_bytes() for p in self.keys]
        except OSError as exc:
            raise _Refusal("key", f"key: trusted key unreadable: {exc}") from exc

    def _one(self, art: wire.Artifact, keys: list[bytes]) -> tuple[str, OnnxModel]:
        path = self.store.reuse(art, keys)
        if path is None:
            data = self._download(art)
            try:
                artifacts.verify(keys, data, name=art.name, version=art.version,
                                 sha256=art.sha256, signature=art.signature)
                path = self.store.install(art, data)
            except artifacts.ArtifactError as exc:
                raise _Refusal(exc.reason, f"{exc.reason} of {art.name} {art.version}: "
                               f"{exc.detail}") from exc
            except OSError as exc:
                raise _Refusal("store", f"store: cannot unpack {art.name} {art.version} "
                               f"into {self.store.root}: {exc}") from exc
            logger.info("model %s %s downloaded and verified (%d bytes) into %s", art.name,
                        art.version, len(data), path)
        else:
            logger.info("model %s %s already in the store, verified again: %s", art.name,
                        art.version, path)
        try:
            model = OnnxModel(path)
        except SelfTestError as exc:
            raise _Refusal("self-test", f"self-test of {art.name} {art.version} failed: "
                           f"{exc}") from exc
        except (CardError, OSError, ValueError, RuntimeError) as exc:
            # onnxruntime raises its own errors, subclasses of RuntimeError.
            raise _Refusal("card", f"card of {art.name} {art.version} unusable: {exc}"
                           ) from exc
        card = model.card
        if (card.name, card.version) != (art.name, art.version):
            raise _Refusal("card", f"card names {card.name} {card.version}, the assignment "
                           f"{art.name} {art.version}")
        diff = differences(self.running, card)
        if diff:
            raise _Refusal("card", f"{diff[0]}: this agent's source cannot feed it")
        return path.name, model

    def _download(self, art: wire.Artifact) -> bytes:
        wait = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return self._fetch(art.url, art.size, self.timeout_s)
            except _Refusal as exc:
                if not exc.retry or attempt == self.attempts:
                    raise
                logger.warning("%s (attempt %d of %d); again in %.3g s", exc.reason, attempt,
                               self.attempts, wait)
            if self._stop.wait(wait):
                raise _Superseded
            with self._lock:
                if self._next is not None:
                    logger.info("model %s %s: download abandoned for a newer assignment",
                                art.name, art.version)
                    raise _Superseded
            wait = min(wait * 2, _BACKOFF_MAX_S)
        raise AssertionError("unreachable")


class _Superseded(Exception):
    """A newer assignment came, or the agent stops: drop this one without a report."""
