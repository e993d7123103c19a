"""The InfluxDB 2.x/3.x backend's pure parts: its backoff's deadline and how settings open it.

Its writes and reads against real servers are in tests/integration/test_series_contract.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from influxdb_client.client.write.retry import WritesRetry
from urllib3.exceptions import MaxRetryError, NewConnectionError

from aggregator.series import open_series
from aggregator.series.influx2 import Influx2Store, WriteRetry
from aggregator.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LINEWATCH_"):
            monkeypatch.delenv(key)


REFUSED = NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]


def test_backoff_deadline_counts_from_each_requests_first_failure() -> None:
    ours = WriteRetry(total=2, max_retry_time=0.2, allowed_methods=["POST"])
    theirs = WritesRetry(total=2, max_retry_time=0.2, allowed_methods=["POST"])
    time.sleep(0.3)  # the store has been open longer than max_retry_time
    with pytest.raises(MaxRetryError):  # the library's own: no retry ever again
        theirs.increment("POST", "/api/v2/write", error=REFUSED)
    retry = ours.increment("POST", "/api/v2/write", error=REFUSED)
    retry = retry.increment("POST", "/api/v2/write", error=REFUSED)
    assert retry.total == 0
    with pytest.raises(MaxRetryError):  # still bounded: by total here
        retry.increment("POST", "/api/v2/write", error=REFUSED)


def test_settings_open_influx2_with_bucket_org_and_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    settings = Settings(influx_url="http://influx.plant:8086", influx_version="2",
                        influx_org="plant", influx_token_file=token)
    assert settings.influx_secret() == "s3cret-token"
    store = open_series(settings)  # opening connects to nothing
    try:
        assert isinstance(store, Influx2Store) and store.name == "influx2"
        assert (store.bucket, store.database, store.org) == ("linewatch", "linewatch", "plant")
    finally:
        store.close()
    store = open_series(Settings(influx_url="http://127.0.0.1:8181", influx_version="2",
                                 influx_bucket="lw/autogen", influx_database="lw",
                                 influx_token="t"))
    try:
        assert isinstance(store, Influx2Store)
        assert (store.bucket, store.database, store.org) == ("lw/autogen", "lw", None)
    finally:
        store.close()


def test_the_token_is_never_shown() -> None:
    settings = Settings(influx_url="http://influx.plant:8086", influx_version="2",
                        influx_token="s3cret-token")
    assert "s3cret-token" not in repr(settings) + str(settings)
    assert "s3cret-token" not in str(settings.model_dump())


def test_example_config_opens_influx2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[2] / "configs" / "aggregator.influx2.example.env"
    token = tmp_path / "token"
    token.write_text("from-a-secret")
    monkeypatch.setenv("LINEWATCH_INFLUX_TOKEN_FILE", str(token))  # the environment wins
    settings = load_settings(example)
    assert (settings.influx_version, settings.influx_org, settings.influx_bucket) == \
        ("2", "plant", "linewatch")
    assert settings.influx_secret() == "from-a-secret"
