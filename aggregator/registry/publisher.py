"""Tell each agent, on its retained ``model`` command topic, what models to run.

``sync`` resolves every known agent's desired state (``resolve``) and compares it with
``published_models``, the message last published to that agent: only a change is
published (retained, QoS 1, with a new ``id``), so a restart of the aggregator publishes
nothing, and an agent that was offline finds the latest message retained when it
reconnects. An agent first seen is published to by the next sync; one whose status goes
back to online gets its message again (same bytes, same ``id``: a broker restarted without
persistence may have lost the retained copy). A desired state that ends (its assignment
rolled back, nothing else covers the agent) is cleared with an empty retained payload:
the agent keeps what it runs.

One thread: a sync every ``POLL_S`` (and at once after ``wake``, which the REST routes
call after a change), and the canary check (``lifecycle.check_canaries``) every
``registry_check_s``. It publishes on the subscriber's paho client, like the delivery
confirmations (``aggregator.confirm``), and only while it is connected: paho's reconnect
brings the next sync. Replicas each run it and read the same rows; a change is published
with the agent's row locked and recorded before the lock is let go, so the replica that
waited finds it made and publishes nothing (a returning agent's message may go out once
per replica: the same bytes, the same ``id``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.db import AgentRecord, SessionFactory
from aggregator.reactions.state import locked_agents
from aggregator.registry import lifecycle, store
from aggregator.registry.models import ModelAssignment, ModelVersion, PublishedModel
from aggregator.registry.resolve import Desired, VersionKey, resolve
from aggregator.settings import Settings
from contract.wire import SCHEMA, Assignment, command_topic, encode
from outage.failures import FailureLog

__all__ = ["POLL_S", "ModelPublisher", "PublisherCounts"]

logger = logging.getLogger(__name__)

POLL_S = 1.0  # new agents and agents back online are noticed this soon
RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class PublisherCounts:
    """What this process did (per-process figures: they restart at 0)."""

    published: int
    cleared: int
    republished: int
    rolled_back: int
    failures: int


class ModelPublisher:
    """See the module docstring. ``judge``: the gate (None: no canary check, for tests
    that drive ``check_canaries`` themselves); ``autostart=False``: no thread, tests call
    ``sync`` and ``check`` directly."""

    def __init__(self, settings: Settings, session_factory: SessionFactory,
                 client: mqtt.Client, *, judge: lifecycle.Judge | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.client = client
        self.judge = judge
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._states: dict[str, str] | None = None  # agent -> state at the last sync
        self._lock = threading.Lock()  # one sync at a time (thread, tests, routes)
        self._failures = FailureLog(logger)
        self._check_failures = FailureLog(logger)
        self._counts = {"published": 0, "cleared": 0, "republished": 0, "rolled_back": 0,
                        "failures": 0}

    @property
    def counts(self) -> PublisherCounts:
        return PublisherCounts(**self._counts)

    # -- thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="model-publisher",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def wake(self) -> None:
        """Something changed: sync now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        next_check = self._clock() + self.settings.registry_check_s
        while not self._stopping.is_set():
            ok = True
            if self.judge is not None and self._clock() >= next_check:
                next_check = self._clock() + self.settings.registry_check_s
                ok = self._guarded(self.check, "judging canaries", self._check_failures)
            ok = self._guarded(self.sync, "publishing model assignments",
                               self._failures) and ok
            self._wake.wait(POLL_S if ok else RETRY_S)
            self._wake.clear()

    def _guarded(self, step: Callable[[], object], doing: str, log: FailureLog) -> bool:
        """Run one step; a failure (SQL down, the gate failing, a bug) is counted and
        logged, and the thread goes on."""
        try:
            step()
        except store.RegistryOffError as exc:  # no public URL: nothing to point agents to
            self._counts["failures"] += 1
            log.failed("off", str(exc), retry_in_s=RETRY_S)
            return False
        except Exception as exc:
            self._counts["failures"] += 1
            log.failed(type(exc).__name__, f"{doing}: {exc!r}", retry_in_s=RETRY_S,
                       exc_info=exc)
            return False
        log.recovered(f"{doing} again")
        return True

    # -- work ------------------------------------------------------------------------------
    def check(self, now: datetime | None = None) -> int:
        """Judge every active canary now (rolling back the failing ones); how many were
        rolled back. Needs ``judge``."""
        if self.judge is None:
            raise ValueError("no gate to judge canaries with")
        with self.session_factory() as session, session.begin():
            done = lifecycle.check_canaries(session, self.judge, now=now)
        self._counts["rolled_back"] += len(done)
        if done:
            self.wake()
        return len(done)

    def sync(self) -> int:
        """Publish what changed (see the module docstring); how many messages went out.
        Nothing while the client is not connected: the next sync after paho reconnects
        does it."""
        if not self.client.is_connected():
            return 0
        with self._lock, self.session_factory() as session:
            return self._sync(session)

    def _sync(self, session: Session) -> int:
        agents = lifecycle.agent_infos(session)
        rows = list(session.scalars(select(ModelAssignment)
                                    .where(ModelAssignment.state == "active")))
        wanted = resolve(agents, rows)
        published = {p.agent_id: p for p in session.scalars(select(PublishedModel))}
        states = {agent: state for agent, state in
                  session.execute(select(AgentRecord.agent_id, AgentRecord.state))}
        previous, self._states = self._states, states
        versions: dict[VersionKey, ModelVersion] = {}
        sent = 0
        for agent in agents:
            desired, last = wanted[agent.agent_id], published.get(agent.agent_id)
            topic = command_topic(agent.site, agent.line, agent.agent_id, "model")
            if _changed(desired, last):
                sent += self._change(session, agent.agent_id, topic, desired, versions)
            elif (last is not None and previous is not None
                  and previous.get(agent.agent_id) != "online"
                  and states.get(agent.agent_id) == "online"):
                if self._publish(topic, last.payload.encode()):
                    self._counts["republished"] += 1
                    sent += 1
        return sent

    def _change(self, session: Session, agent: str, topic: str, desired: Desired | None,
                versions: dict[VersionKey, ModelVersion]) -> int:
        """Publish one agent's change with its row locked, and record it before the lock
        goes: a replica that read the same rows waits here, then finds the change made
        (published once, one message id) instead of publishing it again."""
        locked_agents(session, AgentRecord, [agent])
        last = session.get(PublishedModel, agent, populate_existing=True)
        if not _changed(desired, last):
            session.commit()
            return 0
        if desired is None:
            assert last is not None
            if not self._publish(topic, b""):
                session.rollback()
                return 0
            session.delete(last)
            session.commit()
            self._counts["cleared"] += 1
            return 1
        message = self._message(session, agent, desired, versions)
        raw = encode(message)
        if not self._publish(topic, raw):
            session.rollback()
            return 0
        if last is None:
            last = PublishedModel(agent_id=agent)
            session.add(last)
        last.message_id, last.desired = message.id, desired.as_json()
        last.payload, last.published_at = raw.decode(), datetime.now(UTC)
        session.commit()
        logger.info("model assignment %s to %s: %s %s (%s)%s", message.id, agent,
                    *desired.live, desired.stage,
                    "" if desired.shadow is None
                    else f", shadow {desired.shadow[0]} {desired.shadow[1]}")
        self._counts["published"] += 1
        return 1

    def _message(self, session: Session, agent: str, desired: Desired,
                 versions: dict[VersionKey, ModelVersion]) -> Assignment:
        def artifact(key: VersionKey) -> ModelVersion:
            if key not in versions:
                versions[key] = store.get(session, *key)
            return versions[key]

        live = store.artifact_of(self.settings, artifact(desired.live))
        shadow = (None if desired.shadow is None
                  else store.artifact_of(self.settings, artifact(desired.shadow)))
        return Assignment(schema_=SCHEMA, agent=agent, ts=datetime.now(UTC),
                          id=uuid.uuid4().hex, stage=desired.stage,
                          live=live, shadow=shadow)

    def _publish(self, topic: str, raw: bytes) -> bool:
        info = self.client.publish(topic, raw, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._counts["failures"] += 1
            self._failures.failed("publish", f"cannot publish to {topic}: "
                                  f"{mqtt.error_string(info.rc)}", retry_in_s=POLL_S)
            return False
        return True


def _changed(desired: Desired | None, last: PublishedModel | None) -> bool:
    if desired is None:
        return last is not None
    return last is None or last.desired != desired.as_json()
