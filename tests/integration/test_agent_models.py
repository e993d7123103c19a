"""Issue 14, the gateway side: an agent takes the model assignments of the registry. Real
Mosquitto (tests/servers.py), a real HTTP server serving the artifacts (the standard
library's ThreadingHTTPServer), real ed25519 keys, the shipped FD001 model and edited copies
of it (another card version; a self-test that fails), the agent in-process or as a
`python -m agent run` process killed with SIGKILL.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from agent_support import MODEL, ROOT, agent_cfg, as_key
from aggregator_support import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.inference import OnnxModel
from agent.modelstore import ModelStore, choose
from agent.pipeline import Agent, RunReport
from contract import artifact as artifacts
from contract import wire
from contract.card import ModelCard

pytestmark = pytest.mark.integration

V1 = ModelCard.load(MODEL).version
TICK_S = 0.025  # replay pace: 203 ticks, about 5 s


def _version(tmp: Path, ver: str, *, broken: bool = False) -> Path:
    """The shipped model under another card version (the card's sha256 covers model.onnx
    only); ``broken``: its self-test expects other outputs than the model gives."""
    out = tmp / f"model-{ver}"
    shutil.copytree(MODEL, out)
    card = json.loads((out / "card.json").read_text())
    card["version"] = ver
    if broken:
        card["self_test"]["expected"] = [v + 0.25 for v in card["self_test"]["expected"]]
    (out / "card.json").write_text(json.dumps(card))
    return out


class Registry:
    """What the aggregator's registry does for an agent, with real parts: artifact bytes
    over HTTP, signed assignments retained on the agent's cmd/model topic."""

    def __init__(self, tmp: Path, mqtt_url: str) -> None:
        self.key = artifacts.generate_key()
        self.public = tmp / "registry.pub.pem"
        self.public.write_bytes(artifacts.public_pem(self.key))
        self.files: dict[str, bytes] = {}
        self.requests = 0
        self.unavailable = 0  # the next requests answered 503, as by a server that is down
        files, registry = self.files, self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                registry.requests += 1
                if registry.unavailable > 0:
                    registry.unavailable -= 1
                    self.send_error(503)
                    return
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        host, port = mqtt_url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="registry-test")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def artifact(self, model_dir: Path, *, key: bytes | None = None,
                 body: bytes | None = None) -> wire.Artifact:
        """Serve ``model_dir`` packed (or ``body`` in its place, under the real sha256),
        signed with the registry's key (or ``key``)."""
        data = artifacts.pack(model_dir)
        card = ModelCard.load(model_dir)
        sha = artifacts.sha256_bytes(data)
        path = f"/artifacts/{card.name}/{card.version}/{len(self.files)}"
        self.files[path] = data if body is None else body
        return wire.Artifact(
            name=card.name, version=card.version, sha256=sha, size=len(data),
            url=f"http://127.0.0.1:{self.http.server_port}{path}",
            signature=artifacts.sign(key or self.key, card.name, card.version, sha))

    def assign(self, agent: str, id: str, live: wire.Artifact,
               shadow: wire.Artifact | None = None) -> None:
        self.send(agent, wire.encode(wire.Assignment(
            schema_=wire.SCHEMA, agent=agent, ts=datetime.now(UTC), id=id, stage="live",
            live=live, shadow=shadow)))

    def send(self, agent: str, payload: bytes, *, retain: bool = True) -> None:
        info = self.client.publish(wire.command_topic("plant1", "line1", agent, "model"),
                                   payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.http.shutdown()
        self.http.server_close()


class Collector:
    """Every envelope the agent publishes, decoded, as the broker delivers them."""

    def __init__(self, mqtt_url: str, agent: str) -> None:
        self.envelopes: list[wire.Envelope] = []
        self._lock = threading.Lock()
        host, port = mqtt_url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reader-{agent}")
        subscribed = threading.Event()
        topic = wire.subscription("plant1", "line1", agent)

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe(topic, qos=1)

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            if msg.topic.endswith("/status"):
                return
            with self._lock:
                self.envelopes.append(wire.decode(msg.payload))

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(10)

    def items(self, kind: str, role: str | None = None
              ) -> list[tuple[wire.Envelope, Any]]:
        with self._lock:
            envs = sorted(self.envelopes, key=lambda e: e.seq)
        return [(e, i) for e in envs for i in e.items
                if i.kind == kind and e.model.role == role]

    def deployments(self) -> list[wire.Deployment]:
        return [h.deployment for _, h in self.items("health") if h.deployment is not None]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.contextmanager
def _setup(tmp_path: Path, mosquitto: Any, agent: str) -> Iterator[tuple[Registry, Collector]]:
    registry, collector = Registry(tmp_path, mosquitto.url), Collector(mosquitto.url, agent)
    try:
        yield registry, collector
    finally:
        collector.close()
        registry.close()


def _config(tmp_path: Path, url: str, agent: str, keys: list[Path], *,
            model: dict[str, Any] | None = None, **source: Any) -> AgentConfig:
    cfg = agent_cfg(tmp_path, url, agent, confirm="broker", speed=600 / TICK_S, **source)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "trusted_keys": keys, "store": tmp_path / agent / "models", **(model or {})})})


class _Running:
    """An in-process agent on a thread of its own."""

    def __init__(self, config: AgentConfig) -> None:
        self.agent = Agent(config, record=True)
        self.report: RunReport | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.report = self.agent.run(drain_timeout_s=30)

    def scoring(self) -> None:
        wait_until(lambda: self.agent.progress.windows_scored > 0
                   and self.agent.publisher.connected, 30, what="the agent scoring")

    def finish(self) -> RunReport:
        self.thread.join(timeout=120)
        assert self.report is not None and self.report.drained
        return self.report


def _live_keys(collector: Collector) -> collections.Counter[tuple[str, int]]:
    return collections.Counter(
        (p.asset, int(round(p.window_end.timestamp() * 1e9)))
        for _, p in collector.items("prediction"))


def _all_in(collector: Collector, report: RunReport) -> None:
    wait_until(lambda: sum(_live_keys(collector).values()) >= len(report.scored), 20,
               what=f"{len(report.scored)} live predictions")
    time.sleep(0.5)  # anything extra would arrive now


def _restarted(config: AgentConfig, caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    """The model a new agent on ``config`` starts with, and what it said of its saved
    windows and monitors."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent.pipeline"):
        agent = Agent(config)
    agent.outbox.close()
    agent.positions.close()
    return agent.model_ref.version, caplog.text


def test_an_assigned_version_replaces_the_model_between_two_windows(
        tmp_path: Path, mosquitto: Any, caplog: pytest.LogCaptureFixture) -> None:
    with _setup(tmp_path, mosquitto, "gw-swap") as (registry, collector):
        v2 = registry.artifact(_version(tmp_path, "2.0.0"))
        config = _config(tmp_path, mosquitto.url, "gw-swap", [registry.public])
        run = _Running(config)
        run.scoring()
        registry.assign("gw-swap", "as-2", v2)
        report = run.finish()
        _all_in(collector, report)

        assert report.progress.models_applied == 1 and report.progress.models_refused == 0
        # Every window exactly once in the live stream, across the swap.
        keys = _live_keys(collector)
        assert set(keys) == {as_key(s) for s in report.scored}
        assert max(keys.values()) == 1 and len(keys) > 300
        # Old version first, new after, per asset: the swap is between two ticks.
        by_version: dict[str, dict[str, list[datetime]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))
        for env, p in collector.items("prediction"):
            by_version[env.model.version][p.asset].append(p.window_end)
        assert set(by_version) == {V1, "2.0.0"}
        for asset, ends in by_version["2.0.0"].items():
            assert max(by_version[V1].get(asset, [min(ends)])) <= min(ends), asset
        # Reported at once and in every health report after.
        health = [(e, h) for e, h in collector.items("health")]
        first = next(i for i, (_, h) in enumerate(health) if h.deployment is not None)
        for env, h in health[first:]:
            assert h.deployment is not None and h.deployment.state == "applied"
            assert h.deployment.assignment == "as-2"
            assert h.deployment.live.version == "2.0.0" and env.model.version == "2.0.0"
        pointer, _ = ModelStore(tmp_path / "gw-swap" / "models").pointer()
        assert pointer is not None and pointer.assignment == "as-2"
        assert pointer.live == f"{v2.name}-2.0.0-{v2.sha256[:12]}"

    # Restarted, it runs the new version and its windows and monitors go on from the state
    # saved after the swap; back on model.dir, that state is not the old model's: ignored.
    version, said = _restarted(config, caplog)
    assert version == "2.0.0" and "windows and monitors continue from their state" in said
    (config.model_store / "current.json").unlink()
    (config.model_store / "previous.json").unlink(missing_ok=True)
    version, said = _restarted(config, caplog)
    assert version == V1 and "the saved monitor state is for another model" in said


def test_a_card_with_other_limits_takes_over_the_quality_checks_at_the_swap(
        tmp_path: Path, mosquitto: Any) -> None:
    """The new card says sensor_11's noise in training was a hundredth of what it is (so
    the usual wander of its mean reads as steps): the agent checks by it from the swap on,
    not before, and not by the shipped card's limits any more."""
    with _setup(tmp_path, mosquitto, "gw-limits") as (registry, collector):
        strict = _version(tmp_path, "2.0.0")
        card = json.loads((strict / "card.json").read_text())
        channel = card["reference"]["monitoring"]["channels"]["sensor_11"]
        shipped_noise = channel["noise"]
        channel["noise"] = shipped_noise / 100
        (strict / "card.json").write_text(json.dumps(card))
        run = _Running(_config(tmp_path, mosquitto.url, "gw-limits", [registry.public]))
        run.scoring()
        assert run.agent.quality.limits["sensor_11"].noise == shipped_noise
        registry.assign("gw-limits", "strict", registry.artifact(strict))
        report = run.finish()
        _all_in(collector, report)

        assert report.progress.models_applied == 1
        assert run.agent.quality.limits["sensor_11"].noise == shipped_noise / 100
        swapped = min(p.window_end for e, p in collector.items("prediction")
                      if e.model.version == "2.0.0")
        steps = [d for _, d in collector.items("drift")
                 if d.detector == "step" and d.monitor == "sensor_11" and d.state != "end"]
        assert steps, "the new limits found nothing to say"
        assert min(d.at for d in steps) >= swapped - timedelta(minutes=10)  # one tick


def test_tampered_bytes_and_a_wrong_signature_are_refused_and_the_old_model_scores(
        tmp_path: Path, mosquitto: Any) -> None:
    with _setup(tmp_path, mosquitto, "gw-refuse") as (registry, collector):
        v2 = _version(tmp_path, "2.0.0")
        good = artifacts.pack(v2)
        tampered = bytearray(good)
        tampered[len(tampered) // 3] ^= 0x01
        run = _Running(_config(tmp_path, mosquitto.url, "gw-refuse", [registry.public]))
        run.scoring()
        # An unreadable command is counted and logged; an empty one clears the topic.
        registry.send("gw-refuse", b'{"schema": 1, "agent": "gw-refuse"}', retain=False)
        registry.send("gw-refuse", b"")
        wait_until(lambda: run.agent.publisher.bad_commands == 1, 10,
                   what="the unreadable command counted")
        registry.assign("gw-refuse", "tampered", registry.artifact(v2, body=bytes(tampered)))
        wait_until(lambda: any(d.assignment == "tampered" for d in collector.deployments()),
                   20, what="the tampered artifact's report")
        scored = run.agent.progress.windows_scored
        registry.assign("gw-refuse", "forged",
                        registry.artifact(v2, key=artifacts.generate_key()))
        wait_until(lambda: any(d.assignment == "forged" for d in collector.deployments()),
                   20, what="the forged artifact's report")
        report = run.finish()
        _all_in(collector, report)

        refused = {d.assignment: d for d in collector.deployments()}
        assert refused["tampered"].state == refused["forged"].state == "refused"
        assert refused["tampered"].reason.startswith("sha256 ")
        assert refused["forged"].reason.startswith("signature ")
        assert refused["forged"].live.version == V1
        assert report.progress.models_refused == 2 and report.progress.models_applied == 0
        assert run.agent.publisher.bad_commands == 1
        # The old model kept scoring, after both refusals too.
        assert {e.model.version for e, _ in collector.items("prediction")} == {V1}
        assert report.progress.windows_scored > scored
        keys = _live_keys(collector)
        assert max(keys.values()) == 1 and set(keys) == {as_key(s) for s in report.scored}
        store = tmp_path / "gw-refuse" / "models"
        assert ModelStore(store).pointer() == (None, "")
        assert not store.exists()  # nothing refused was unpacked


def test_an_assignment_made_while_the_agent_was_offline_is_taken_when_it_connects(
        tmp_path: Path, mosquitto: Any) -> None:
    with _setup(tmp_path, mosquitto, "gw-late") as (registry, collector):
        registry.assign("gw-late", "while-off", registry.artifact(_version(tmp_path, "2.0.0")))
        run = _Running(_config(tmp_path, mosquitto.url, "gw-late", [registry.public]))
        report = run.finish()
        _all_in(collector, report)
        assert report.progress.models_applied == 1
        assert "2.0.0" in {e.model.version for e, _ in collector.items("prediction")}
        assert collector.deployments()[-1].assignment == "while-off"
        keys = _live_keys(collector)
        assert max(keys.values()) == 1 and set(keys) == {as_key(s) for s in report.scored}


def test_a_download_refused_while_the_registry_is_down_is_applied_once_it_is_back(
        tmp_path: Path, mosquitto: Any) -> None:
    """The assignment is delivered once (the broker stays up: no reconnection brings it
    again); the artifact's server answers 503 three times. The agent reports the refusal
    once, tries again in the background, and applies the model when the server answers."""
    with _setup(tmp_path, mosquitto, "gw-retry") as (registry, collector):
        v2 = registry.artifact(_version(tmp_path, "2.0.0"))
        registry.unavailable = 3
        run = _Running(_config(tmp_path, mosquitto.url, "gw-retry", [registry.public],
                               model={"fetch_attempts": 1, "fetch_retry_s": 0.2}))
        run.scoring()
        registry.assign("gw-retry", "as-2", v2)
        report = run.finish()
        _all_in(collector, report)

        said = [(d.assignment, d.state, d.reason) for d in collector.deployments()]
        told = [s for n, s in enumerate(said) if n == 0 or said[n - 1] != s]
        assert [(a, state) for a, state, _ in told] == [("as-2", "refused"),
                                                        ("as-2", "applied")]
        assert told[0][2] is not None and "HTTP 503" in told[0][2]
        assert told[0][2].endswith("; the download is tried again in the background")
        assert (report.progress.models_refused, report.progress.models_applied) == (1, 1)
        assert registry.requests == 4  # three rounds refused, the fourth downloaded
        assert "2.0.0" in {e.model.version for e, _ in collector.items("prediction")}
        keys = _live_keys(collector)
        assert max(keys.values()) == 1 and set(keys) == {as_key(s) for s in report.scored}


def test_after_three_assignments_the_store_keeps_current_and_previous_and_rolls_back(
        tmp_path: Path, mosquitto: Any) -> None:
    with _setup(tmp_path, mosquitto, "gw-prune") as (registry, _):
        arts = {v: registry.artifact(_version(tmp_path, v)) for v in ("2.0.0", "3.0.0", "4.0.0")}
        config = _config(tmp_path, mosquitto.url, "gw-prune", [registry.public], loop=True)
        store = ModelStore(config.model_store)
        run = _Running(config)
        try:
            run.scoring()

            def applied(id: str, art: wire.Artifact) -> None:
                registry.assign("gw-prune", id, art)
                wait_until(lambda: run.agent.deployment is not None
                           and run.agent.deployment.assignment == id, 30,
                           what=f"assignment {id} reported")
                assert run.agent.deployment.state == "applied", run.agent.deployment
                assert run.agent.model_ref.version == art.version

            for v, art in arts.items():
                applied(f"to-{v}", art)
            # Pruned right after the swap that wrote the pointer (just after the report).
            kept = {store.dir_name(arts["3.0.0"]), store.dir_name(arts["4.0.0"])}
            wait_until(lambda: {p.name for p in store.root.iterdir()} == kept | {
                "current.json", "previous.json"}, 10, what="2.0.0 removed from the store")
            # Back to the previous version: from the store, nothing downloaded.
            registry.files.clear()
            asked = registry.requests
            applied("back-to-3", arts["3.0.0"])
            assert registry.requests == asked
        finally:
            run.agent.stop()
        report = run.finish()
    assert report.progress.models_applied == 4 and report.progress.models_refused == 0
    assert sorted(p.name for p in store.root.iterdir()) == sorted(
        ["current.json", "previous.json", store.dir_name(arts["3.0.0"]),
         store.dir_name(arts["4.0.0"])])

    # A version left behind (a store from before pruning, a kill between swap and prune)
    # goes when the agent starts.
    left = store.path(store.dir_name(arts["2.0.0"]))
    shutil.copytree(store.path(store.dir_name(arts["3.0.0"])), left)
    again = _Running(config)
    try:
        assert not left.exists()
        assert again.agent.model_ref.version == "3.0.0"
    finally:
        again.agent.stop()
    again.finish()


def test_a_shadow_model_scores_the_same_windows_in_envelopes_of_its_own(
        tmp_path: Path, mosquitto: Any) -> None:
    with _setup(tmp_path, mosquitto, "gw-shadow") as (registry, collector):
        live, shadow = registry.artifact(MODEL), registry.artifact(_version(tmp_path, "2.0.0"))
        run = _Running(_config(tmp_path, mosquitto.url, "gw-shadow", [registry.public]))
        run.scoring()
        registry.assign("gw-shadow", "with-shadow", live, shadow)
        report = run.finish()
        _all_in(collector, report)

        deployment = collector.deployments()[-1]
        assert deployment.state == "applied" and deployment.shadow is not None
        assert deployment.shadow.version == "2.0.0" and deployment.shadow.role == "shadow"
        assert {e.model.version for e, _ in collector.items("prediction")} == {V1}
        shadow_items = collector.items("prediction", "shadow")
        assert {(e.model.version, e.model.role) for e, _ in shadow_items} == {
            ("2.0.0", "shadow")}
        live_scores = {(p.asset, p.window_end): p.score
                       for _, p in collector.items("prediction")}
        shadow_scores = {(p.asset, p.window_end): p.score for _, p in shadow_items}
        assert len(shadow_scores) == len(shadow_items) > 0  # each window once
        # From the swap on, the very same windows, with the same scores (the same ONNX
        # under another version), and the live stream still has every window once.
        first = {a: min(end for b, end in shadow_scores if b == a) for a, _ in shadow_scores}
        after = {k for k in live_scores if k[0] in first and k[1] >= first[k[0]]}
        assert set(shadow_scores) == after
        assert all(shadow_scores[k] == pytest.approx(live_scores[k], abs=1e-9) for k in after)
        keys = _live_keys(collector)
        assert max(keys.values()) == 1 and set(keys) == {as_key(s) for s in report.scored}
        # The shadow's estimate goes in its own health items; it feeds no live monitor.
        shadow_health = [h for _, h in collector.items("health", "shadow")]
        assert shadow_health and shadow_health[-1].estimate is not None
        assert shadow_health[-1].windows_scored == len(shadow_items)
        assert all(h.deployment is None for h in shadow_health)


def _process(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_an_agent_killed_during_swaps_restarts_on_a_model_that_passes_its_self_test(
        tmp_path: Path, mosquitto: Any) -> None:
    with _setup(tmp_path, mosquitto, "gw-kill") as (registry, _):
        versions = [registry.artifact(_version(tmp_path, v)) for v in ("2.0.0", "3.0.0")]
        cfg = _config(tmp_path, mosquitto.url, "gw-kill", [registry.public], loop=True)
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        store = ModelStore(cfg.model_store)
        stored = {a.version: store.path(store.dir_name(a)) for a in versions}

        def pointer_is(id: str) -> bool:
            pointer, _ = store.pointer()
            return pointer is not None and pointer.assignment == id

        # Where each run is killed: as soon as the store directory appears (the first
        # unpack begins), right after the download and unpack (the version's directory
        # exists; at once when it is there from an earlier round), right after the
        # pointer names the new assignment.
        kills: list[Any] = [
            lambda r, a: store.root.exists(),
            lambda r, a: stored[a.version].exists(),
            lambda r, a: pointer_is(r),
            lambda r, a: stored[a.version].exists(),
            lambda r, a: pointer_is(r),
        ]
        outputs = []
        for n, when in enumerate(kills):
            art = versions[n % 2]
            registry.assign("gw-kill", f"k{n}", art)
            proc = _process(config)
            try:
                wait_until(lambda: when(f"k{n}", art) or proc.poll() is not None, 60,  # noqa: B023
                           interval_s=0.001, what=f"kill point {n}")
            finally:
                proc.send_signal(signal.SIGKILL)
                outputs.append(proc.communicate(timeout=10)[0])
            assert proc.returncode == -signal.SIGKILL, outputs[-1]
            # Whatever the pointer says now names models that pass their self-test.
            for which in ("current.json", "previous.json"):
                pointer, problem = store.pointer(which)
                assert problem == ""
                if pointer is not None:
                    OnnxModel(store.path(pointer.live))
            start = choose(store, MODEL)
            assert start.problem == "", start.problem
        # Started once more, it takes one more assignment and stops cleanly on SIGTERM.
        registry.assign("gw-kill", "last", versions[len(kills) % 2])
        proc = _process(config)
        try:
            wait_until(lambda: pointer_is("last") or proc.poll() is not None,
                       60, what="the last assignment applied")
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, out
        assert "passed its self-test" in out
        assert not list(store.root.glob(".tmp-*"))
        assert "Traceback" not in "".join(outputs) + out
