from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent import config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads() -> None:
    cfg = config.load(ROOT / "configs" / "agent.example.yaml")
    assert cfg.agent.id == "gw-line1"
    assert cfg.mqtt.port == 1883 and not cfg.mqtt.tls
    assert cfg.outbox_path == Path("var/agent/gw-line1/outbox.db")


def _base() -> dict:
    return yaml.safe_load((ROOT / "configs" / "agent.example.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["agent"].update(idd="x"), "agent.idd"),
        (lambda d: d["agent"].update(id="has/slash"), "agent.id"),
        (lambda d: d["mqtt"].update(url="http://x"), "mqtt.url"),
        (lambda d: d["source"].update(speed=-1), "source.speed"),
        (lambda d: d["publish"].update(max_items=0), "publish.max_items"),
    ],
)
def test_invalid_config_names_the_key(mutate, key: str) -> None:
    data = _base()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        config.parse(data)
    assert key in str(err.value)
    assert any(k == key for k, _, _ in err.value.errors)


def test_password_comes_from_the_environment(monkeypatch) -> None:
    data = _base()
    data["mqtt"].update(username="gw", password_env="LW_TEST_PW")
    cfg = config.parse(data)
    with pytest.raises(ConfigError, match="LW_TEST_PW"):
        cfg.mqtt.password()
    monkeypatch.setenv("LW_TEST_PW", "s3cret")
    assert cfg.mqtt.password() == "s3cret"


def test_cli_exits_2_on_bad_config(tmp_path: Path, capsys) -> None:
    from linewatch.cli import main

    data = _base()
    data["agent"]["colour"] = "blue"
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["agent", "-c", str(path)]) == 2
    assert "agent.colour" in capsys.readouterr().err
