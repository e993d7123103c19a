"""What a user sees when a command cannot start: one or two lines naming the setting (or key
path), the value and what to do; a documented exit code; no traceback unless -v.

Real processes (the installed ``linewatch`` script, ``python -m aggregator serve``,
``python -m agent run``), real sockets held by the test, real files.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from agent_support import MODEL, ROOT, TEST_FILE, free_port

from agent.exits import EXIT_CONFIG, EXIT_START
from aggregator.exits import EXIT_CONFIG as AGGREGATOR_EXIT_CONFIG
from aggregator.exits import EXIT_INTERRUPTED
from aggregator.exits import EXIT_START as AGGREGATOR_EXIT_START

pytestmark = pytest.mark.integration

LINEWATCH = str(Path(sys.executable).parent / "linewatch")
AGGREGATOR = {
    "linewatch aggregator": [LINEWATCH, "aggregator"],
    "python -m aggregator serve": [sys.executable, "-m", "aggregator", "serve"],
}
AGENT = {
    "linewatch agent": [LINEWATCH, "agent"],
    "python -m agent run": [sys.executable, "-m", "agent", "run"],
}
# A log line (the agent logs its model's self-test before it opens the data file).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
    return subprocess.run(argv, cwd=cwd, env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def said(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without log lines: what the command says about the failure."""
    return [line for line in done.stderr.splitlines() if not LOG_LINE.match(line)]


def env_file(tmp_path: Path, **settings: object) -> Path:
    """An env file that touches nothing outside tmp_path; ``settings`` override it."""
    values: dict[str, object] = {
        "http_port": free_port(),
        "embedded_broker_port": free_port(),
        "db_url": f"sqlite:///{tmp_path / 'agg.db'}",
        "series_path": tmp_path / "series.db",
        **settings,
    }
    path = tmp_path / "aggregator.env"
    path.write_text("".join(f"LINEWATCH_{k.upper()}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def assert_short(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


# -- aggregator: configuration ------------------------------------------------------------

@pytest.mark.parametrize(
    ("line", "needles"),
    [
        ("LINEWATCH_HTTP_PORT=abc", ["LINEWATCH_HTTP_PORT='abc'", "valid integer"]),
        ("LINEWATCH_MQTT_URL=http://x", ["LINEWATCH_MQTT_URL='http://x'", "mqtt://"]),
        ("LINEWATCH_MQTT_URLL=mqtt://broker", ["LINEWATCH_MQTT_URLL='mqtt://broker'",
                                               "unknown setting",
                                               "did you mean LINEWATCH_MQTT_URL?"]),
        ("LINEWATCH_MQTT_URL=\nLINEWATCH_RULE_K=3", ["LINEWATCH_MQTT_URL is empty",
                                                     "remove the line"]),
        ("LINEWATCH_MQTT_URL=mqtt://broker.plant\nLINEWATCH_MQTT_USERNAME=agg\n"
         "LINEWATCH_MQTT_PASSWORD=changeme",
         ["LINEWATCH_MQTT_PASSWORD is a placeholder", "set a real secret"]),
        ("LINEWATCH_RULE_K=9", ["LINEWATCH_RULE_K (9) must be <= LINEWATCH_RULE_N (5)"]),
    ],
    ids=["invalid-int", "wrong-scheme", "unknown-key", "empty", "placeholder-secret",
         "cross-field"],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, line: str, needles: list[str]
) -> None:
    path = tmp_path / "bad.env"
    path.write_text(line + "\n")
    done = run([LINEWATCH, "aggregator", "-c", str(path)], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_CONFIG, *needles, "error: ")
    assert not (tmp_path / "var").exists()  # nothing was started


def test_python_m_aggregator_says_the_same(tmp_path: Path) -> None:
    """Both commands run aggregator.__main__.serve_command: same words, same code."""
    path = tmp_path / "bad.env"
    path.write_text("LINEWATCH_HTTP_PORT=abc\n")
    outputs = [run([*argv, "-c", str(path)], tmp_path) for argv in AGGREGATOR.values()]
    assert [o.returncode for o in outputs] == [AGGREGATOR_EXIT_CONFIG] * 2
    assert outputs[0].stderr == outputs[1].stderr


def test_a_setting_from_the_environment_says_so(tmp_path: Path) -> None:
    done = run([LINEWATCH, "aggregator", "-c", str(env_file(tmp_path))], tmp_path,
               env={"LINEWATCH_HTTP_PORT": "eighty"})
    assert_short(done, AGGREGATOR_EXIT_CONFIG, "LINEWATCH_HTTP_PORT='eighty' in the environment")


@pytest.mark.parametrize("command", sorted(AGGREGATOR))
def test_a_missing_env_file_is_exit_2(tmp_path: Path, command: str) -> None:
    done = run([*AGGREGATOR[command], "-c", "nope.env"], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_CONFIG, "'nope.env' does not exist", "-c")


def test_an_unreadable_env_file_is_exit_2(tmp_path: Path) -> None:
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"LINEWATCH_HTTP_HOST=\xff\xfe\n")
    done = run([LINEWATCH, "aggregator", "-c", str(binary)], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_CONFIG, "cannot read settings file", "UTF-8")
    (tmp_path / "dir.env").mkdir()
    done = run([LINEWATCH, "aggregator", "-c", "dir.env"], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_CONFIG, "'dir.env' is not a file")


def test_an_unparsable_database_url_is_exit_2(tmp_path: Path) -> None:
    done = run([LINEWATCH, "aggregator", "-c", str(env_file(tmp_path, db_url="nosuch://x"))],
               tmp_path)
    assert_short(done, AGGREGATOR_EXIT_CONFIG, "LINEWATCH_DB_URL='nosuch://x'", "sqlite:///")


# -- aggregator: start failures -----------------------------------------------------------

@pytest.mark.parametrize("command", sorted(AGGREGATOR))
def test_a_busy_http_port_is_one_line_and_exit_3(
    tmp_path: Path, busy_port: int, command: str
) -> None:
    done = run([*AGGREGATOR[command], "-c", str(env_file(tmp_path, http_port=busy_port))],
               tmp_path)
    assert_short(done, AGGREGATOR_EXIT_START,
                 f"port {busy_port} on 127.0.0.1 is in use: set LINEWATCH_HTTP_PORT or stop "
                 "the other process")


def test_a_busy_broker_port_is_one_line_and_exit_3(tmp_path: Path, busy_port: int) -> None:
    path = env_file(tmp_path, embedded_broker_port=busy_port)
    done = run([LINEWATCH, "aggregator", "-c", str(path)], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_START, f"port {busy_port} on 127.0.0.1 is in use",
                 "LINEWATCH_EMBEDDED_BROKER_PORT", "LINEWATCH_MQTT_URL")


def test_verbose_adds_the_traceback(tmp_path: Path, busy_port: int) -> None:
    path = env_file(tmp_path, http_port=busy_port)
    done = run([LINEWATCH, "aggregator", "-c", str(path), "-v"], tmp_path)
    assert done.returncode == AGGREGATOR_EXIT_START
    assert "Traceback" in done.stderr and "Address already in use" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: port ")


def test_an_unusable_sqlite_path_is_exit_3(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run([LINEWATCH, "aggregator", "-c",
                str(env_file(tmp_path, db_url=f"sqlite:///{blocker}/x.db"))], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_START, "cannot use the database", "LINEWATCH_DB_URL")
    done = run([LINEWATCH, "aggregator", "-c",
                str(env_file(tmp_path, series_path=blocker / "s.db"))], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_START, "cannot open the series store",
                 "LINEWATCH_SERIES_PATH")


def test_a_refusing_postgresql_is_exit_3_without_the_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://agg:s3cret@127.0.0.1:{port}/linewatch"
    done = run([LINEWATCH, "aggregator", "-c", str(env_file(tmp_path, db_url=url))], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_START, "Connection refused", "LINEWATCH_DB_URL",
                 f"agg:***@127.0.0.1:{port}")
    assert "s3cret" not in done.stderr


def test_migrate_reports_an_unusable_database_the_same_way(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = env_file(tmp_path, db_url=f"sqlite:///{blocker}/x.db")
    done = run([sys.executable, "-m", "aggregator", "migrate", "-c", str(path)], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_START, "cannot use the database", "LINEWATCH_DB_URL")
    path.write_text("LINEWATCH_DB_URL=\n")
    done = run([sys.executable, "-m", "aggregator", "migrate", "-c", str(path)], tmp_path)
    assert_short(done, AGGREGATOR_EXIT_CONFIG, "LINEWATCH_DB_URL=''", "not a database URL")


class _Refusing(http.server.BaseHTTPRequestHandler):
    """An InfluxDB that refuses every request, as one with auth on and no user given."""

    def _refuse(self) -> None:
        body = json.dumps({"error": "unable to parse authentication credentials"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *_: object) -> None:
        pass


def test_a_series_store_refused_in_the_lifespan_is_exit_3(tmp_path: Path) -> None:
    """InfluxDB is met only inside the app's lifespan; uvicorn's sys.exit(3) and Starlette's
    logged traceback become the same one line."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = run([LINEWATCH, "aggregator", "-c", str(env_file(tmp_path, influx_url=url))],
                   tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == AGGREGATOR_EXIT_START, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [done.stderr.strip().splitlines()[-1]]
    assert f"InfluxDB at {url}" in errors[0] and "401" in errors[0]
    assert "LINEWATCH_INFLUX_USERNAME" in errors[0]


def test_ctrl_c_shuts_down_cleanly_and_exits_130(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [LINEWATCH, "aggregator", "-c", str(env_file(tmp_path, http_port=port))],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "did not come up"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Application shutdown complete" in err and "Traceback" not in err
    assert f"REST API on http://127.0.0.1:{port}" in err


def test_server_thread_reports_a_busy_port_as_a_start_error(
    tmp_path: Path, busy_port: int
) -> None:
    from aggregator.server import ServerThread, StartError
    from aggregator.settings import Settings

    settings = Settings(http_port=busy_port, embedded_broker_port=free_port(),
                        db_url=f"sqlite:///{tmp_path / 'agg.db'}",
                        series_path=tmp_path / "series.db")
    with pytest.raises(StartError, match=f"port {busy_port} on 127.0.0.1 is in use") as caught:
        ServerThread(settings).start()
    assert caught.value.setting == "LINEWATCH_HTTP_PORT"


# -- agent --------------------------------------------------------------------------------

def agent_yaml(tmp_path: Path, **sections: dict[str, object]) -> Path:
    config: dict[str, dict[str, object]] = {
        "agent": {"id": "gw-err", "site": "plant1", "line": "line1"},
        "model": {"dir": str(MODEL)},
        "source": {"type": "replay", "path": str(TEST_FILE), "assets": ["engine-001"],
                   "speed": 0},
        # Nothing listens there; every case below fails before connecting.
        "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
        "outbox": {"path": str(tmp_path / "outbox.db")},
    }
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def broken_card(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    (model / "card.json").write_text(json.dumps({"name": 3}))
    return model


@pytest.mark.parametrize(
    ("case", "needles", "command"),
    [
        ("no-model", ["card.json", "check model.dir in"], "linewatch agent"),
        ("no-model", ["card.json", "check model.dir in"], "python -m agent run"),
        ("broken-card", ["is not a valid model card: name: Input should be", "check model.dir"],
         "linewatch agent"),
        ("no-data", ["nope.txt", "check source.path"], "linewatch agent"),
        ("outbox-under-a-file", ["cannot open outbox", "set outbox.path in"],
         "linewatch agent"),
    ],
)
def test_an_agent_that_cannot_start_says_which_key_and_exits_3(
    tmp_path: Path, command: str, case: str, needles: list[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    sections: dict[str, dict[str, object]] = {
        "no-model": {"model": {"dir": str(tmp_path / "no-model")}},
        "broken-card": {"model": {"dir": str(broken_card(tmp_path))}},
        "no-data": {"source": {"path": str(tmp_path / "nope.txt")}},
        "outbox-under-a-file": {"outbox": {"path": str(blocker / "outbox.db")}},
    }[case]
    done = run([*AGENT[command], "-c", str(agent_yaml(tmp_path, **sections))], tmp_path)
    assert done.returncode == EXIT_START, done.stderr
    assert "Traceback" not in done.stderr
    lines = said(done)
    assert len(lines) == 2 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


@pytest.mark.parametrize("command", sorted(AGENT))
def test_an_agent_config_error_names_the_key_and_exits_2(tmp_path: Path, command: str) -> None:
    # -v after the subcommand, where users type it, is accepted as well as before it.
    path = agent_yaml(tmp_path, source={"speed": -1})
    done = run([*AGENT[command], "-c", str(path), "-v"], tmp_path)
    assert_short(done, EXIT_CONFIG, "source.speed", "(got -1)")


@pytest.mark.parametrize(("key", "ca", "why"), [
    ("model", "missing.pem", "No such file or directory"),
    ("model", "agent.yaml", "NO_CERTIFICATE_OR_CRL_FOUND"),
    ("mqtt", "missing.pem", "No such file or directory"),
])
def test_a_ca_file_that_cannot_be_loaded_is_a_config_error(
        tmp_path: Path, key: str, ca: str, why: str) -> None:
    """Said at start, naming the key (not at the first download weeks later, nor as
    paho's start failure); and before the agent writes anything (here: its outbox)."""
    section = {"ca_file": str(tmp_path / ca)}
    if key == "mqtt":
        section["url"] = "mqtts://127.0.0.1:8883"
    path = agent_yaml(tmp_path, **{key: section})
    done = run([*AGENT["python -m agent run"], "-c", str(path)], ROOT)
    lines = said(done)
    assert done.returncode == EXIT_CONFIG and "Traceback" not in done.stderr, done.stderr
    assert lines[0] == "error: invalid agent configuration:", done.stderr
    assert lines[1].startswith(f"  {key}.ca_file: cannot load a PEM CA bundle from it: ")
    assert why in lines[1] and f"(got '{tmp_path / ca}')" in lines[1]
    assert not (tmp_path / "outbox.db").exists()


# -- linewatch's own commands ---------------------------------------------------------------

def test_evaluate_without_a_model_is_exit_3(tmp_path: Path) -> None:
    done = run([LINEWATCH, "evaluate", str(tmp_path / "none"), str(TEST_FILE)], ROOT)
    assert_short(done, EXIT_START, "card.json")


def test_evaluate_truth_for_a_file_that_is_not_cmapss_is_exit_2() -> None:
    done = run([LINEWATCH, "evaluate", "models/ai4i2020", "models/data/ai4i2020/ai4i2020.csv",
                "--truth", "models/data/cmapss_fd001/RUL_FD001.txt"], ROOT)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert said(done) == ["error: truth files are only used with format 'cmapss', not 'ai4i'"]


def test_demo_with_a_missing_or_invalid_config_is_exit_2(tmp_path: Path) -> None:
    done = run([LINEWATCH, "demo", "-c", "nope.yaml"], tmp_path)
    assert_short(done, EXIT_CONFIG, "'nope.yaml' does not exist")
    (tmp_path / "demo.yaml").write_text(
        yaml.safe_dump({"model": "m", "data": "d", "agents": [], "sped": 3})
    )
    done = run([LINEWATCH, "demo", "-c", "demo.yaml"], tmp_path)
    assert_short(done, EXIT_CONFIG, "agents: List should have at least 1 item", "sped: Extra")
