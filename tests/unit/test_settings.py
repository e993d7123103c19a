"""Aggregator settings refuse nonsense at load; ``python -m aggregator`` exits 2 on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from aggregator.__main__ import main
from aggregator.settings import MqttEndpoint, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LINEWATCH_"):
            monkeypatch.delenv(key)


def test_defaults_are_self_contained() -> None:
    s = Settings()
    assert s.mqtt_url is None and s.influx_url is None
    assert s.mqtt == MqttEndpoint("127.0.0.1", 1883, False)
    assert (s.rule_k, s.rule_n, s.mqtt_protocol) == (3, 5, "3.1.1")


def test_mqtt_url_gives_the_endpoint() -> None:
    assert Settings(mqtt_url="mqtt://broker.plant:1884").mqtt == MqttEndpoint(
        "broker.plant", 1884, False
    )
    assert Settings(mqtt_url="mqtts://broker.plant").mqtt == MqttEndpoint(
        "broker.plant", 8883, True
    )


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"rule_k": 6, "rule_n": 5}, "LINEWATCH_RULE_K"),
        ({"rule_k": 0}, "greater than or equal to 1"),
        ({"mqtt_url": "http://broker:1883"}, "mqtt://"),
        ({"mqtt_url": "mqtt://broker:99999"}, "[Pp]ort"),
        ({"mqtt_url": "mqtt://user:pw@broker"}, "credentials"),
        ({"influx_url": "influx://db"}, "http://"),
        ({"mqtt_protocol": "5"}, "3.1.1 only"),
        ({"mqtt_protocol": "4"}, "3.1.1"),
        ({"mqtt_shared_group": "aggs"}, "share"),
        ({"mqtt_url": "mqtt://b", "mqtt_shared_group": "a/b"}, "share group"),
        ({"mqtt_url": "mqtt://b", "mqtt_password": "x"}, "LINEWATCH_MQTT_USERNAME"),
        (
            {
                "mqtt_url": "mqtt://broker.plant",
                "mqtt_username": "agg",
                "mqtt_password": "changeme",
            },
            "placeholder",
        ),
        ({"http_port": 70000}, "less than or equal"),
        ({"mqtt_client_id": ""}, "at least 1"),
        ({"unknown_setting": 1}, "Extra inputs"),
    ],
)
def test_nonsense_is_refused(values: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Settings(**values)  # type: ignore[arg-type]


def test_placeholder_secret_is_fine_on_loopback() -> None:
    s = Settings(mqtt_url="mqtt://127.0.0.1", mqtt_username="dev", mqtt_password="changeme")
    assert s.mqtt_password == "changeme"


def test_env_and_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "aggregator.env"
    env.write_text("LINEWATCH_RULE_K=2\nLINEWATCH_MQTT_URL=mqtt://broker:1883\n")
    monkeypatch.setenv("LINEWATCH_RULE_N", "4")
    s = load_settings(env)
    assert (s.rule_k, s.rule_n, s.mqtt_url) == (2, 4, "mqtt://broker:1883")


def test_env_file_typo_is_an_error(tmp_path: Path) -> None:
    env = tmp_path / "aggregator.env"
    env.write_text("LINEWATCH_MQTT_URLL=mqtt://broker\n")
    with pytest.raises(ValidationError, match="mqtt_urll"):
        load_settings(env)


def test_missing_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.env")


def test_example_config_loads() -> None:
    example = Path(__file__).parents[2] / "configs" / "aggregator.example.env"
    assert load_settings(example) == Settings()


def test_main_exits_2_with_the_key_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "aggregator.env"
    env.write_text("LINEWATCH_RULE_K=9\nLINEWATCH_HTTP_PORT=http\n")
    assert main(["serve", "-c", str(env)]) == 2
    err = capsys.readouterr().err
    assert "LINEWATCH_HTTP_PORT" in err and "'http'" in err


def test_main_exits_2_on_cross_field_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "aggregator.env"
    env.write_text("LINEWATCH_RULE_K=9\n")
    assert main(["serve", "-c", str(env)]) == 2
    assert "LINEWATCH_RULE_K (9) must be <= LINEWATCH_RULE_N (5)" in capsys.readouterr().err


def test_module_entry_point(tmp_path: Path) -> None:
    env = tmp_path / "aggregator.env"
    env.write_text("LINEWATCH_MQTT_PROTOCOL=7\n")
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "serve", "-c", str(env)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "LINEWATCH_MQTT_PROTOCOL" in done.stderr and "'7'" in done.stderr


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"influx_version": "2"}, "needs LINEWATCH_INFLUX_URL"),
        ({"influx_url": "http://db:8086", "influx_version": "2"}, "exactly one of"),
        ({"influx_url": "http://db:8086", "influx_version": "2", "influx_token": "a",
          "influx_token_file": "/t"}, "exactly one of"),
        ({"influx_url": "http://db:8086", "influx_version": "2", "influx_token": "a",
          "influx_username": "u"}, "takes a token"),
        ({"influx_url": "http://db:8086", "influx_token": "a"}, "LINEWATCH_INFLUX_VERSION=2"),
        ({"influx_url": "http://db:8086", "influx_bucket": "b"}, "LINEWATCH_INFLUX_BUCKET"),
        ({"influx_url": "http://db:8086", "influx_version": "3"}, "'1' or '2'"),
        ({"influx_url": "http://db:8086", "influx_version": "2", "influx_token": "changeme"},
         "placeholder"),
        ({"influx_url": "http://db:8086", "influx_version": "2",
          "influx_token_file": "/nonexistent/token"}, "cannot read it"),
    ],
)
def test_influx2_settings_are_checked(values: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Settings(**values)  # type: ignore[arg-type]


def test_influx2_token_file_must_hold_a_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    with pytest.raises(ValidationError, match="holds no token"):
        Settings(influx_url="http://db:8086", influx_version="2", influx_token_file=token)
