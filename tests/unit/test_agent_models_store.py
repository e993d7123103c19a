"""The gateway's model store (agent.modelstore) and the checks of an assignment
(agent.rollout): pointer files, content-addressed versions, the choice at start, and every
refusal an assignment can get. Real models (models/cmapss_fd001 and edited copies of it),
real keys and artifacts; the download is a function returning the bytes (the HTTP path is
in tests/integration/test_agent_models.py)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import rollout as rollouts
from agent.inference import OnnxModel
from agent.modelstore import CURRENT, PREVIOUS, ModelStore, Pointer, choose, differences
from agent.rollout import Prepared, Refused, Rollout, download
from contract import artifact as artifacts
from contract import wire
from contract.card import ModelCard

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "cmapss_fd001"
AT = datetime(2026, 1, 1, tzinfo=UTC)


def version(tmp: Path, ver: str, *, broken: bool = False, **card: object) -> Path:
    """A copy of the shipped model with another card version (and other card fields);
    ``broken``: its self-test expects other outputs than the model gives."""
    out = tmp / f"src-{ver}"
    shutil.copytree(MODEL, out)
    data = json.loads((out / "card.json").read_text())
    data["version"] = ver
    for key, value in card.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    if broken:
        data["self_test"]["expected"] = [v + 0.25 for v in data["self_test"]["expected"]]
    (out / "card.json").write_text(json.dumps(data))
    return out


def signed(src: Path, key: bytes, *, url: str = "http://127.0.0.1:1/a"
           ) -> tuple[wire.Artifact, bytes]:
    data = artifacts.pack(src)
    card = ModelCard.load(src)
    sha = artifacts.sha256_bytes(data)
    return wire.Artifact(name=card.name, version=card.version, sha256=sha, size=len(data),
                         url=url, signature=artifacts.sign(key, card.name, card.version,
                                                           sha)), data


def assignment(live: wire.Artifact, shadow: wire.Artifact | None = None,
               id: str = "a1") -> wire.Assignment:
    return wire.Assignment(schema_=wire.SCHEMA, agent="gw-1", ts=AT, id=id, stage="live",
                           live=live, shadow=shadow)


@pytest.fixture
def key(tmp_path: Path) -> tuple[bytes, Path]:
    private = artifacts.generate_key()
    path = tmp_path / "registry.pem"
    path.write_bytes(artifacts.public_pem(private))
    return private, path


def test_pointer_writes_keep_the_previous_one_and_leave_no_temporary_file(
        tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    assert store.pointer() == (None, "") and store.clean() == []
    assert not store.root.exists()  # nothing written until something is assigned
    first = Pointer(live="m-1-aaa", assignment="a1", at=AT)
    second = Pointer(live="m-2-bbb", shadow="m-3-ccc", assignment="a2", at=AT)
    store.point(first)
    assert store.pointer() == (first, "") and store.pointer(PREVIOUS) == (None, "")
    store.point(second)
    assert store.pointer() == (second, "") and store.pointer(PREVIOUS) == (first, "")
    store.point(second)  # the same again: the previous one stays what ran before
    assert store.pointer(PREVIOUS) == (first, "")
    assert sorted(p.name for p in store.root.iterdir()) == [CURRENT, PREVIOUS]


def test_an_unreadable_pointer_says_why_and_leftovers_are_cleaned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / CURRENT).write_text('{"live": "../../etc", "at": "2026-01-01T00:00:00Z"}')
    pointer, problem = store.pointer()
    assert pointer is None and "is not a model pointer" in problem
    (tmp_path / ".tmp-x1").mkdir()
    (tmp_path / ".tmp-x1" / "model.onnx").write_bytes(b"half")
    (tmp_path / ".tmp-y2").write_bytes(b"{")
    assert store.clean() == [".tmp-x1", ".tmp-y2"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_install_is_content_addressed_and_reuse_checks_the_files_again(
        tmp_path: Path, key: tuple[bytes, Path]) -> None:
    private, public = key
    art, data = signed(version(tmp_path, "2.0.0"), private)
    store = ModelStore(tmp_path / "store")
    assert store.reuse(art, [public.read_bytes()]) is None
    path = store.install(art, data)
    assert path.name == f"{art.name}-2.0.0-{art.sha256[:12]}"
    assert store.reuse(art, [public.read_bytes()]) == path
    OnnxModel(path)  # passes its self-test
    # A card edited on disk no longer packs to the signed artifact: removed, not reused.
    card = json.loads((path / "card.json").read_text())
    card["threshold"]["value"] = 0.01
    (path / "card.json").write_text(json.dumps(card))
    assert store.reuse(art, [public.read_bytes()]) is None
    assert not path.exists() and not list(store.root.glob(".tmp-*"))


def _installed(store: ModelStore, tmp_path: Path, private: bytes, ver: str,
               broken: bool = False, **card: object) -> str:
    art, data = signed(version(tmp_path, ver, broken=broken, **card), private)
    return store.install(art, data).name


def test_start_takes_current_then_previous_then_model_dir(
        tmp_path: Path, key: tuple[bytes, Path]) -> None:
    private, _ = key
    store = ModelStore(tmp_path / "store")
    start = choose(store, MODEL)
    assert start.pointer is None and start.problem == "" and start.live.model_dir == MODEL

    good = _installed(store, tmp_path, private, "2.0.0")
    store.point(Pointer(live=good, assignment="a1", at=AT))
    start = choose(store, MODEL)
    assert start.pointer is not None and start.pointer.assignment == "a1"
    assert start.live.card.version == "2.0.0" and start.shadow is None

    # The current one fails its self-test (a version whose expected outputs are wrong):
    # the previous pointer runs, and the start says why.
    bad = _installed(store, tmp_path, private, "3.0.0", broken=True)
    store.point(Pointer(live=good, shadow=bad, assignment="a2", at=AT))
    start = choose(store, MODEL)
    assert start.pointer is not None and start.pointer.assignment == "a1"
    assert "self-test" in start.problem and start.tried is not None
    assert start.tried.assignment == "a2"

    # Neither usable: model.dir.
    store.point(Pointer(live=bad, assignment="a3", at=AT))
    shutil.rmtree(store.path(good))
    start = choose(store, MODEL)
    assert start.pointer is None and start.live.model_dir == MODEL
    assert "current.json" in start.problem and "previous.json" in start.problem


def test_a_pointer_to_a_model_the_source_cannot_feed_is_skipped(
        tmp_path: Path, key: tuple[bytes, Path]) -> None:
    private, _ = key
    store = ModelStore(tmp_path / "store")
    card = ModelCard.load(MODEL)
    other = _installed(store, tmp_path, private, "4.0.0",
                       window={"size": card.window.size + 1, "hop": card.window.hop})
    store.point(Pointer(live=other, assignment="a4", at=AT))
    start = choose(store, MODEL)
    assert start.pointer is None and "card window differs" in start.problem


def test_differences_name_what_differs(tmp_path: Path) -> None:
    card = ModelCard.load(MODEL)
    data = json.loads((MODEL / "card.json").read_text())
    data["window"]["hop"] = card.window.hop + 1
    data["input"]["channels"] = data["input"]["channels"][::-1]
    other = ModelCard.model_validate(data)
    got = differences(card, other)
    assert [d.split(" (")[0] for d in got] == ["card input channels differ",
                                              "card window differs"]
    assert differences(card, card) == []


def _rollout(tmp_path: Path, keys: list[Path], served: dict[str, bytes]) -> Rollout:
    def fetch(url: str, size: int, timeout_s: float) -> bytes:
        if url in served:
            return served[url]
        return download("http://127.0.0.1:9/nothing-listens-here", size, 2.0)

    return Rollout(ModelStore(tmp_path / "store"), keys, ModelCard.load(MODEL),
                   agent_id="gw-1", fetch=fetch, attempts=1)


def test_every_refusal_names_its_cause(tmp_path: Path, key: tuple[bytes, Path]) -> None:
    private, public = key
    v2 = version(tmp_path, "2.0.0")
    art, data = signed(v2, private, url="http://h/ok")
    got = _rollout(tmp_path, [public], {}).prepare(assignment(art))
    assert isinstance(got, Refused) and got.cause == "download"
    assert got.reason.startswith("download ")

    got = _rollout(tmp_path, [], {art.url: data}).prepare(assignment(art))
    assert isinstance(got, Refused) and "no trusted key configured" in got.reason

    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    got = _rollout(tmp_path, [public], {art.url: bytes(tampered)}).prepare(assignment(art))
    assert isinstance(got, Refused) and got.cause == "sha256"
    assert got.reason.startswith("sha256 ")

    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(artifacts.public_pem(artifacts.generate_key()))
    got = _rollout(tmp_path, [stranger], {art.url: data}).prepare(assignment(art))
    assert isinstance(got, Refused) and got.reason.startswith("signature ")
    assert not (tmp_path / "store").exists()  # refused before a byte was unpacked

    bad, bad_data = signed(version(tmp_path, "3.0.0", broken=True),
                           private, url="http://h/bad")
    got = _rollout(tmp_path, [public], {bad.url: bad_data}).prepare(assignment(bad))
    assert isinstance(got, Refused) and got.reason.startswith("self-test ")

    card = ModelCard.load(MODEL)
    wide, wide_data = signed(version(tmp_path, "4.0.0", window={
        "size": card.window.size + 5, "hop": card.window.hop}), private, url="http://h/w")
    got = _rollout(tmp_path, [public], {wide.url: wide_data}).prepare(assignment(wide))
    assert isinstance(got, Refused) and got.reason.startswith("card window differs")

    ok = _rollout(tmp_path, [public], {art.url: data}).prepare(assignment(art, shadow=art))
    assert isinstance(ok, Prepared) and ok.live.card.version == "2.0.0"
    assert ok.live_dir == ok.shadow_dir == f"{art.name}-2.0.0-{art.sha256[:12]}"


def test_a_version_in_the_store_is_not_downloaded_again(
        tmp_path: Path, key: tuple[bytes, Path]) -> None:
    private, public = key
    art, data = signed(version(tmp_path, "2.0.0"), private, url="http://h/ok")
    assert isinstance(_rollout(tmp_path, [public], {art.url: data}).prepare(
        assignment(art)), Prepared)
    # Nothing served now: it can only come from the store, checked against its signature.
    assert isinstance(_rollout(tmp_path, [public], {}).prepare(assignment(art)), Prepared)


def test_the_model_keys_of_the_config_are_rebased_and_default_per_agent(
        tmp_path: Path) -> None:
    from agent import config

    base = {"agent": {"id": "gw-9", "site": "s", "line": "l"},
            "source": {"type": "replay", "path": "data.txt"}}
    cfg = config.parse({**base, "model": {"dir": "m"}}, base=tmp_path)
    assert cfg.model.trusted_keys == [] and cfg.model_store == Path("var/agent/gw-9/models")
    moved = config.parse({**base, "model": {"dir": "m"}, "outbox": {"path": "/o/box.db"}})
    assert moved.model_store == Path("/o/models")  # the agent's state stays together
    assert cfg.model.ca_file is None  # the system's CA store
    cfg = config.parse({**base, "model": {"dir": "m", "trusted_keys": ["keys/r.pem", "/k.pem"],
                                          "store": "models-here", "ca_file": "pki/ca.pem"}},
                       base=tmp_path)
    assert cfg.model.trusted_keys == [tmp_path / "keys" / "r.pem", Path("/k.pem")]
    assert cfg.model_store == tmp_path / "models-here"
    assert cfg.model.ca_file == tmp_path / "pki" / "ca.pem"
    with pytest.raises(config.ConfigError, match="fetch_attempts"):
        config.parse({**base, "model": {"dir": "m", "fetch_attempts": 0}})


class _Server:
    """A real HTTP server answering each GET with the next (status, body, length) in
    ``answers`` (the last one repeats); ``length`` None: no Content-Length, body until
    the connection closes."""

    def __init__(self, answers: list[tuple[int, bytes, int | None]]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                status, body, length = answers[min(server.requests, len(answers) - 1)]
                server.requests += 1
                self.send_response(status)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/artifact"
        import threading

        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_download_takes_at_most_the_announced_size_over_real_http() -> None:
    from agent.rollout import _Refusal

    body = b"x" * 1000
    for length in (1000, None):
        server = _Server([(200, body, length)])
        try:
            assert download(server.url, 1000, 5.0) == body
            with pytest.raises(_Refusal, match="more than the 999 bytes|1000 bytes "
                               "announced") as exc:
                download(server.url, 999, 5.0)
            assert exc.value.cause == "too_large" and not exc.value.retry
        finally:
            server.close()
    server = _Server([(404, b"", 0)])
    try:
        with pytest.raises(_Refusal, match="HTTP 404") as exc:
            download(server.url, 10, 5.0)
        assert not exc.value.retry
    finally:
        server.close()


def test_server_errors_are_retried_with_backoff_then_the_download_succeeds(
        tmp_path: Path, key: tuple[bytes, Path]) -> None:
    private, public = key
    art, data = signed(version(tmp_path, "2.0.0"), private)
    server = _Server([(503, b"", 0), (503, b"", 0), (200, data, len(data))])
    try:
        art = art.model_copy(update={"url": server.url})
        rollout = Rollout(ModelStore(tmp_path / "store"), [public], ModelCard.load(MODEL),
                          agent_id="gw-1", attempts=3, backoff_s=0.01)
        assert isinstance(rollout.prepare(assignment(art)), Prepared)
        assert server.requests == 3
        # Two attempts only: refused, and the reason says what the server answered.
        server.requests = 0
        again = Rollout(ModelStore(tmp_path / "other"), [public], ModelCard.load(MODEL),
                        agent_id="gw-1", attempts=2, backoff_s=0.01)
        got = again.prepare(assignment(art))
        assert isinstance(got, Refused) and got.cause == "download"
        assert "HTTP 503" in got.reason and server.requests == 2
    finally:
        server.close()


def test_an_assigned_model_runs_even_when_model_dir_is_unusable(
        tmp_path: Path, key: tuple[bytes, Path]) -> None:
    from contract.card import CardError

    private, _ = key
    store = ModelStore(tmp_path / "store")
    empty = tmp_path / "no-model"
    empty.mkdir()
    with pytest.raises(CardError):
        choose(store, empty)
    store.point(Pointer(live=_installed(store, tmp_path, private, "2.0.0"), assignment="a1",
                        at=AT))
    start = choose(store, empty)
    assert start.pointer is not None and start.live.card.version == "2.0.0"


class _Flaky:
    """A fetch that fails like a network that is down (a real refused connection) for the
    first ``failures`` calls per URL, or for every call to a URL not in ``served``."""

    def __init__(self, served: dict[str, bytes], failures: int) -> None:
        self.served, self.failures = served, failures
        self.calls: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str, size: int, timeout_s: float) -> bytes:
        with self._lock:
            calls = self.calls.setdefault(url, [])
            calls.append(time.monotonic())
        if url in self.served and len(calls) > self.failures:
            return self.served[url]
        return download("http://127.0.0.1:9/nothing-listens-here", size, 2.0)

    def count(self, url: str) -> int:
        with self._lock:
            return len(self.calls.get(url, []))


def _until_prepared(rollout: Rollout, timeout_s: float = 20.0) -> list[Prepared | Refused]:
    """Every outcome until one is prepared."""
    got: list[Prepared | Refused] = []
    deadline = time.monotonic() + timeout_s
    while not any(isinstance(o, Prepared) for o in got):
        assert time.monotonic() < deadline, f"no model prepared; got {got}"
        got += rollout.outcomes()
        time.sleep(0.01)
    return got


def test_a_failed_download_is_tried_again_in_the_background_with_a_capped_backoff(
        tmp_path: Path, key: tuple[bytes, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = key
    art, data = signed(version(tmp_path, "2.0.0"), private, url="http://h/v2")
    monkeypatch.setattr(rollouts, "_RETRY_MAX_S", 0.25)  # 15 min, for a test
    fetch = _Flaky({art.url: data}, failures=4)
    rollout = Rollout(ModelStore(tmp_path / "store"), [public], ModelCard.load(MODEL),
                      agent_id="gw-1", attempts=1, retry_s=0.1, fetch=fetch)
    rollout.start()
    try:
        rollout.submit(assignment(art))  # once: nothing delivers it again
        got = _until_prepared(rollout)
    finally:
        rollout.close()
    # Refused once, for its download (the pipeline reports that), then prepared.
    assert [type(o) for o in got] == [Refused, Prepared]
    refused = got[0]
    assert isinstance(refused, Refused) and refused.cause == "download" and refused.retry
    assert fetch.count(art.url) == 5
    # Waits between the rounds: 0.1, doubled, then held at the cap (not 0.4, 0.8).
    calls = fetch.calls[art.url]
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(gap >= want for gap, want in zip(gaps, [0.1, 0.2, 0.25, 0.25], strict=True))
    assert gaps[-1] < 0.6, gaps


def test_a_newer_assignment_cancels_the_retry_of_an_older_one(
        tmp_path: Path, key: tuple[bytes, Path]) -> None:
    private, public = key
    old, _ = signed(version(tmp_path, "2.0.0"), private, url="http://h/never")
    new, data = signed(version(tmp_path, "3.0.0"), private, url="http://h/v3")
    fetch = _Flaky({new.url: data}, failures=0)
    rollout = Rollout(ModelStore(tmp_path / "store"), [public], ModelCard.load(MODEL),
                      agent_id="gw-1", attempts=1, retry_s=0.05, fetch=fetch)
    rollout.start()
    try:
        rollout.submit(assignment(old, id="old"))
        deadline = time.monotonic() + 10
        while fetch.count(old.url) < 3:  # refused, then tried again in the background
            assert time.monotonic() < deadline, "the old assignment was not tried again"
            time.sleep(0.01)
        rollout.submit(assignment(new, id="new"))
        got = _until_prepared(rollout)
        tried = fetch.count(old.url)
        time.sleep(0.5)  # ten of the old one's retry periods
        assert fetch.count(old.url) == tried and rollout.outcomes() == []
    finally:
        rollout.close()
    assert [(type(o), o.assignment.id) for o in got] == [(Refused, "old"), (Prepared, "new")]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_prune_keeps_what_the_pointers_name_and_what_is_held(
        tmp_path: Path, key: tuple[bytes, Path], caplog: pytest.LogCaptureFixture) -> None:
    private, _ = key
    store = ModelStore(tmp_path / "store")
    v2, v3, v4, v5, v6 = (_installed(store, tmp_path, private, f"{n}.0.0") for n in range(2, 7))
    store.point(Pointer(live=v3, assignment="a3", at=AT))
    store.point(Pointer(live=v5, shadow=v6, assignment="a5", at=AT))  # v3 goes to previous
    store.hold([v4])  # being prepared
    (store.root / ".tmp-unpacking").mkdir()  # an unpack under way: not a version
    (store.root / "operator-notes").mkdir()  # not ours: not a version's name either
    size = _size(store.path(v2))
    with caplog.at_level(logging.INFO, logger="agent.modelstore"):
        assert store.prune() == [(v2, size)]
    assert sorted(p.name for p in store.root.iterdir()) == sorted(
        [".tmp-unpacking", CURRENT, PREVIOUS, "operator-notes", v3, v4, v5, v6])
    said = [r for r in caplog.records if "removed" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert f"{v2} ({size / 1e3:.1f} kB)" in said[0].getMessage()

    store.release([v4])
    assert [name for name, _ in store.prune()] == [v4]
    assert store.prune() == []
    # The kept ones still start, as current and as previous.
    assert choose(store, MODEL).live.card.version == "5.0.0"
    # A pointer that cannot be read might name anything: nothing is removed.
    (store.root / CURRENT).write_text("{")
    assert store.prune() == [] and store.path(v5).is_dir() and store.path(v6).is_dir()


def test_a_version_being_prepared_is_not_pruned_until_the_pipeline_takes_it(
        tmp_path: Path, key: tuple[bytes, Path]) -> None:
    """The live version downloads while the shadow one, in the store but named by no
    pointer, waits to be checked: a prune then keeps it; so it does once both are prepared
    and not yet taken (the next assignment's download has begun, so the first is done);
    once taken, they are the caller's to point to."""
    private, public = key
    store = ModelStore(tmp_path / "store")
    store.point(Pointer(live=_installed(store, tmp_path, private, "4.0.0"), at=AT))
    shadow, shadow_data = signed(version(tmp_path, "2.0.0"), private)
    store.install(shadow, shadow_data)  # in the store, named by no pointer
    live, data = signed(version(tmp_path, "3.0.0"), private, url="http://h/v3")
    later, later_data = signed(version(tmp_path, "5.0.0"), private, url="http://h/v5")
    fetching = {live.url: threading.Event(), later.url: threading.Event()}
    go_on = {live.url: threading.Event(), later.url: threading.Event()}

    def fetch(url: str, size: int, timeout_s: float) -> bytes:
        fetching[url].set()
        assert go_on[url].wait(10)
        return data if url == live.url else later_data

    rollout = Rollout(store, [public], ModelCard.load(MODEL), agent_id="gw-1", fetch=fetch)
    rollout.start()
    try:
        rollout.submit(assignment(live, shadow=shadow, id="first"))
        assert fetching[live.url].wait(10)
        assert store.prune() == []  # the shadow's directory is held
        go_on[live.url].set()
        rollout.submit(assignment(later, id="second"))
        assert fetching[later.url].wait(10)
        assert store.prune() == []  # "first" prepared, not taken yet: still held
        go_on[later.url].set()
        got = _until_prepared(rollout)
        got += [] if len(got) == 2 else _until_prepared(rollout)
    finally:
        rollout.close()
    assert [(type(o), o.assignment.id) for o in got] == [(Prepared, "first"),
                                                        (Prepared, "second")]
    # Taken and not pointed to (the pipeline would have swapped them in first): removed.
    assert sorted(n for n, _ in store.prune()) == sorted(
        store.dir_name(a) for a in (shadow, live, later))
