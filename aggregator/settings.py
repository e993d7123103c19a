"""Aggregator settings from ``LINEWATCH_*`` environment variables or an env file.

Nothing is read at import time: ``create_app(settings)`` receives a built ``Settings``, so
tests construct their own (FastAPI's "settings and testing" advice). With no URL for the
broker or InfluxDB the aggregator runs self-contained: an embedded amqtt broker and an
embedded SQLite series store (the demo and single-line installs).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aggregator.notify.targets import TargetConfig

if TYPE_CHECKING:
    from aggregator.rollout.gate import GatePolicy

__all__ = ["MqttEndpoint", "Settings", "load_settings"]

TicketKind = Literal["maintenance", "sensor", "inspect", "retraining"]
# What a line's andon shows by default: the tickets for people at the line.
_ANDON_KINDS: tuple[TicketKind, ...] = ("maintenance", "sensor", "inspect")
# Secrets that are plainly placeholders; refused unless the server is on this machine.
_PLACEHOLDER_SECRETS = {"changeme", "changethis", "password", "secret", "admin"}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class MqttEndpoint(NamedTuple):
    """Where the subscriber connects."""

    host: str
    port: int
    tls: bool


class Settings(BaseSettings):
    """Everything the aggregator needs to start; invalid combinations fail at load."""

    # extra="forbid" turns a typo in an env file (LINEWATCH_MQTT_URLL) into an error instead
    # of a silently ignored line; unknown variables in the process environment are ignored.
    model_config = SettingsConfigDict(
        env_prefix="LINEWATCH_", extra="forbid", validate_default=True, frozen=True
    )

    # -- MQTT ---------------------------------------------------------------------------
    mqtt_url: str | None = Field(
        default=None,
        description="Broker to subscribe to, e.g. mqtt://127.0.0.1:1883 (mqtts:// for TLS). "
        "None starts the embedded amqtt broker on embedded_broker_host:embedded_broker_port.",
    )
    mqtt_protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1",
        description="MQTT protocol version. 5 gives session expiry and receive-maximum flow "
        "control; the embedded broker speaks 3.1.1 only.",
    )
    mqtt_client_id: str = Field(
        default="linewatch-aggregator",
        min_length=1,
        max_length=128,
        description="Client id; the broker keeps the persistent session under this id, so "
        "it must be stable across restarts and unique per replica.",
    )
    mqtt_username: str | None = Field(default=None, description="Broker user, if it needs one.")
    mqtt_password: str | None = Field(
        default=None, description="Broker password (needs mqtt_username)."
    )
    mqtt_ca_file: Path | None = Field(
        None,
        description="CA bundle the broker's certificate must chain to (mqtts://); "
        "default: the system's trust store.",
    )
    mqtt_shared_group: str | None = Field(
        default=None,
        description="When set, subscribe via $share/<group>/... so replicas split the load "
        "(Mosquitto accepts it from 3.1.1 and 5 clients).",
    )
    mqtt_session_expiry_s: int = Field(
        default=86_400,
        ge=0,
        description="MQTT 5 only: how long the broker keeps our session (and queues "
        "messages for it) while the aggregator is down.",
    )
    embedded_broker_host: str = Field(
        default="127.0.0.1",
        description="Bind address of the embedded broker (used when mqtt_url is None).",
    )
    embedded_broker_port: int = Field(
        default=1883, ge=1, le=65535, description="Port of the embedded broker."
    )

    # -- ingest -------------------------------------------------------------------------
    ingest_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Most messages handled (and written) at once."
    )
    ingest_queue_size: int = Field(
        default=10_000,
        ge=1,
        le=65_535,
        description="Received, not yet handled messages held in memory. For MQTT 5 it is "
        "also sent as receive-maximum; for 3.1.1 keep the broker's max_inflight_messages "
        "below it.",
    )

    # -- series store -------------------------------------------------------------------
    influx_url: str | None = Field(
        default=None,
        description="InfluxDB 1.x HTTP API, e.g. http://127.0.0.1:8086. None uses the "
        "embedded SQLite series store at series_path.",
    )
    influx_database: str = Field(
        default="linewatch", min_length=1, max_length=128, description="Database (created)."
    )
    influx_username: str | None = Field(default=None, description="InfluxDB user, if auth is on.")
    influx_password: str | None = Field(default=None, description="InfluxDB password.")
    series_path: Path = Field(
        default=Path("var/series.db"), description="File of the embedded SQLite series store."
    )
    influx_version: Literal["1", "2"] = Field(
        default="1",
        description="Which API influx_url speaks: 1 for InfluxDB 1.x (database created, "
        "basic auth); 2 for InfluxDB 2.x or 3.x (v2 write API through influxdb-client, "
        "token auth; reads in InfluxQL through the v1-compatible /query).",
    )
    influx_org: str | None = Field(
        default=None, min_length=1,
        description="InfluxDB 2.x organisation (name or ID) to write to; 3.x ignores it.",
    )
    influx_bucket: str | None = Field(
        default=None, min_length=1,
        description="InfluxDB 2.x bucket or 3.x database written to (it must exist); "
        "default influx_database. Reads query influx_database through the v1 API: on 2.x "
        "a DBRP mapping to the bucket (2.2 and later map each bucket to its own name).",
    )
    influx_token: SecretStr | None = Field(
        default=None, description="InfluxDB 2.x/3.x API token (or influx_token_file)."
    )
    influx_token_file: Path | None = Field(
        default=None,
        description="File holding the InfluxDB 2.x/3.x API token (a mounted secret), "
        "instead of influx_token.",
    )
    influx_write_retry_s: float = Field(
        default=15.0, ge=0, le=600,
        description="InfluxDB 2.x/3.x: how long one write request is retried, with "
        "exponential backoff from a tenth of it (at most 1 s), before the ingestor is told "
        "the store is down (it keeps the messages and retries the batch). 0: no retries.",
    )

    # -- SQL ----------------------------------------------------------------------------
    db_url: str = Field(
        default="sqlite:///var/linewatch.db",
        description="SQLAlchemy URL for tickets, agents, quarantine and dedupe: SQLite, or "
        "postgresql+psycopg://user:pass@host/db when replicas share the work.",
    )

    # -- rules --------------------------------------------------------------------------
    rule_k: int = Field(default=3, ge=1, description="Open a maintenance ticket when k of ...")
    rule_n: int = Field(
        default=5, ge=1, le=1000, description="... the last n windows of an asset alert."
    )
    rule_cooldown_s: int = Field(
        3600, ge=0,
        description="After a maintenance ticket is resolved, no new one for the same asset "
        "for this long (0: reopen at the next trigger).",
    )

    # -- triage: which kind of ticket an alert or a condition becomes ----------------------
    triage_sensor_channels: int = Field(
        2, ge=1, le=64,
        description="At most this many misbehaving channels on an asset, while the others "
        "agree, make a sensor ticket; more make the asset foreign to the model (inspect).",
    )
    triage_fleet_share: float = Field(
        0.5, gt=0, le=1,
        description="When at least this share of a site's assets are foreign to the model at "
        "once, it is the model that is out of its depth: a retraining ticket, not one inspect "
        "ticket per asset.",
    )
    retraining_min_assets: int = Field(
        3, ge=1, description="A retraining ticket needs drift conditions on this many assets.")
    retraining_window_s: int = Field(
        30 * 86_400, ge=3600,
        description="Drift conditions that began within this window (plant time) count "
        "towards a retraining ticket.",
    )
    retraining_p: float = Field(
        0.01, gt=0, lt=1,
        description="A retraining ticket needs more drift conditions than the agents' "
        "false-alarm budgets explain: P(this many or more | budget) below this.",
    )
    retraining_scope: Literal["site", "line"] = Field(
        "site", description="One retraining ticket per model version and site, or per line.")
    retraining_cooldown_s: int = Field(
        7 * 86_400, ge=0,
        description="After a retraining ticket is resolved, no new one for the same model "
        "version and scope for this long.",
    )
    retraining_estimate_reports: int = Field(
        3, ge=1,
        description="A retraining ticket when an agent's F1 estimate lies wholly below the "
        "card's per-window test F1 in this many health reports in a row.",
    )
    retraining_f1_period: str = Field(
        "30d", pattern=r"^(?:[1-9][0-9]{0,4}h|[1-9][0-9]{0,3}d|[1-9][0-9]{0,2}w)$",
        description="A retraining ticket when the realised F1 over this period (e.g. 30d) "
        "lies wholly below the target, with enough outcomes; checked after each outcome.",
    )

    # -- model health (GET /health/models, the report) -----------------------------------
    models_dir: Path | None = Field(
        None,
        description="Directory of model directories (each with its card.json, like the "
        "repository's models/): when it holds the card of the one model version a period "
        "is about, that card's test F1 is the target model health is judged against.",
    )
    target_f1: float = Field(
        0.8, gt=0, le=1,
        description="The F1 model health is judged against when no model card gives one "
        "(no models_dir, no card for the model version, or several versions in the period).",
    )
    visit_cost: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="Cost of one technician visit, to price alerts and false alarms in the "
        "report; None: visits are counted, not priced.",
    )
    currency: str = Field(
        "", max_length=16, pattern=r"^[^\x00-\x1f\x7f]*$",
        description="Shown after visit_cost's amounts, e.g. EUR.",
    )

    # -- dedupe -------------------------------------------------------------------------
    dedupe_retention_s: int = Field(
        7 * 86_400, ge=60,
        description="How long a handled msg_id is remembered. Duplicates come from lost "
        "acks and agent restarts, minutes to hours later; older ids are pruned so the table "
        "stays bounded.",
    )

    # -- delivery (which of each agent's messages are stored) ----------------------------
    delivery_gap_grace_s: float = Field(
        5.0, ge=0, le=86_400,
        description="A gap in an agent's messages is asked for again only once it has been "
        "open this long: messages of one agent may arrive out of order (replicas, "
        "reconnects) and fill it by themselves.",
    )
    delivery_republish_s: float = Field(
        30.0, gt=0, le=86_400,
        description="While an agent's messages have gaps, what the aggregator has stored of "
        "them is published to it again this often, so that a request lost with a broker "
        "is repeated.",
    )

    # -- HTTP ---------------------------------------------------------------------------
    http_host: str = Field(default="127.0.0.1", description="Bind address of the REST API.")
    http_port: int = Field(
        default=8000, ge=0, le=65535, description="Port of the REST API (0: any free)."
    )

    # -- notifications (webhooks, the MQTT andon) ------------------------------------------
    notify_targets: list[TargetConfig] = Field(
        default_factory=list,
        description="Webhook targets, a JSON list: [{\"name\": \"ops\", \"kind\": "
        "\"slack\", \"url\": \"https://...\", \"ticket_kinds\": [\"maintenance\"], "
        "\"sites\": [\"plant1\"], \"secret_header\": \"Authorization\", "
        "\"secret_env\": \"OPS_HOOK_TOKEN\"}] (kind json, slack or teams).",
    )
    notify_past_after_s: int = Field(
        3600, ge=0,
        description="An incident whose triggering evidence (plant time) is older than this "
        "when the aggregator receives it is past: recorded on the ticket and in the "
        "delivery log, not sent (a backlog flushed after an outage raises no storm).",
    )
    notify_escalation_interval_s: int = Field(
        3600, ge=0,
        description="At most one escalation update per incident and target this often (0: "
        "one per escalation).",
    )
    notify_retry_min_s: float = Field(
        2.0, gt=0, le=3600, description="First retry of a failed notification after this.")
    notify_retry_max_s: float = Field(
        600.0, gt=0, le=86_400, description="Retries back off, doubling, up to this.")
    notify_max_attempts: int = Field(
        12, ge=1, le=1000, description="A notification is given up after this many attempts.")
    notify_timeout_s: float = Field(
        10.0, gt=0, le=300, description="One attempt's timeout (connect and answer).")
    andon_enabled: bool = Field(
        True, description="Publish each line's andon state (retained) and events on "
        "linewatch/andon/v1/{site}/{line}/state|events.")
    andon_kinds: list[TicketKind] = Field(
        default_factory=lambda: list(_ANDON_KINDS),
        description="Ticket kinds a line's andon shows (JSON list).")

    # -- model registry (aggregator.registry) ---------------------------------------------
    signing_key_file: Path | None = Field(
        None,
        description="ed25519 private key (PEM) the registry signs model artifacts with "
        "(`linewatch registry keygen` writes one; agents trust its signing.pub). None: the "
        "registry is off and refuses uploads.",
    )
    public_url: str | None = Field(
        None, pattern=r"^https?://[^\s]+$",
        description="Base URL the agents reach this aggregator at, e.g. "
        "https://aggregator.plant1:8000; artifact URLs in model assignments are "
        "{public_url}/registry/artifacts/{sha256}. None: assignments cannot be published.",
    )
    registry_check_s: float = Field(
        60.0, gt=0, le=86_400,
        description="How often every active canary is judged by the promotion gate (and "
        "rolled back when its figures fail).",
    )
    gate_min_windows: int = Field(
        200, ge=1, description="The promotion gate judges nothing before the candidate and "
        "the model it would replace scored this many of the same windows.")
    gate_min_agreement: float = Field(
        0.95, ge=0, le=1, description="Share of those windows on which both must take the "
        "same alert decision.")
    gate_f1_margin: float = Field(
        0.05, ge=0, le=1, description="How far the candidate's estimated F1 may fall below "
        "its card's test_window_f1.")
    gate_max_new_drift: int = Field(
        0, ge=0, description="Drift conditions that may start on the judged agents during a "
        "stage before the gate fails it.")

    def gate_policy(self) -> GatePolicy:
        """The promotion gate's thresholds, as set for this plant."""
        from aggregator.rollout.gate import GatePolicy

        return GatePolicy(min_windows=self.gate_min_windows,
                          min_agreement=self.gate_min_agreement,
                          f1_margin=self.gate_f1_margin,
                          max_new_drift=self.gate_max_new_drift)

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(
                "no path, query or credentials in the URL; use LINEWATCH_MQTT_USERNAME and "
                "LINEWATCH_MQTT_PASSWORD"
            )
        _ = parts.port  # raises ValueError for a port outside 0..65535
        return value

    @field_validator("influx_url")
    @classmethod
    def _check_influx_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http://host:port or https://host:port")
        if parts.username:
            raise ValueError(
                "no credentials in the URL; use LINEWATCH_INFLUX_USERNAME and "
                "LINEWATCH_INFLUX_PASSWORD"
            )
        _ = parts.port
        return value.rstrip("/")

    @field_validator("mqtt_shared_group")
    @classmethod
    def _check_group(cls, value: str | None) -> str | None:
        if value is not None and (not value or set(value) & set("/+#")):
            raise ValueError("a share group name is non-empty and has no / + or #")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.rule_k > self.rule_n:
            raise ValueError(
                f"LINEWATCH_RULE_K ({self.rule_k}) must be <= LINEWATCH_RULE_N ({self.rule_n})"
            )
        if self.mqtt_url is None:
            # amqtt implements MQTT 3.1.1 only and has no shared subscriptions.
            if self.mqtt_protocol != "3.1.1":
                raise ValueError(
                    f"LINEWATCH_MQTT_PROTOCOL={self.mqtt_protocol!r}: the embedded broker "
                    "speaks MQTT 3.1.1 only; set LINEWATCH_MQTT_URL to a real broker"
                )
            if self.mqtt_shared_group is not None:
                raise ValueError(
                    "LINEWATCH_MQTT_SHARED_GROUP: the embedded broker has no $share "
                    "subscriptions; set LINEWATCH_MQTT_URL to a real broker"
                )
        if self.mqtt_password is not None and self.mqtt_username is None:
            raise ValueError("LINEWATCH_MQTT_PASSWORD is set but LINEWATCH_MQTT_USERNAME is not")
        names = [t.name for t in self.notify_targets]
        if len(set(names)) != len(names):
            raise ValueError(f"LINEWATCH_NOTIFY_TARGETS: target names must be unique, got "
                             f"{names}")
        if self.notify_retry_min_s > self.notify_retry_max_s:
            raise ValueError("LINEWATCH_NOTIFY_RETRY_MIN_S must be <= "
                             "LINEWATCH_NOTIFY_RETRY_MAX_S")
        if self.influx_password is not None and self.influx_username is None:
            raise ValueError(
                "LINEWATCH_INFLUX_PASSWORD is set but LINEWATCH_INFLUX_USERNAME is not"
            )
        self._refuse_placeholder("mqtt_password", self.mqtt_password, self.mqtt.host)
        if self.influx_url is not None:
            host = urllib.parse.urlsplit(self.influx_url).hostname or ""
            self._refuse_placeholder("influx_password", self.influx_password, host)
        self._check_influx_token()
        return self

    def _check_influx_token(self) -> None:
        token_settings = [name for name in ("influx_token", "influx_token_file", "influx_org",
                                            "influx_bucket") if getattr(self, name) is not None]
        if self.influx_version == "1":
            if token_settings:
                names = ", ".join(f"LINEWATCH_{n.upper()}" for n in token_settings)
                raise ValueError(f"{names}: for InfluxDB 2.x/3.x only; set "
                                 "LINEWATCH_INFLUX_VERSION=2")
            return
        if self.influx_url is None:
            raise ValueError("LINEWATCH_INFLUX_VERSION=2 needs LINEWATCH_INFLUX_URL")
        if self.influx_username is not None:
            raise ValueError("LINEWATCH_INFLUX_USERNAME: InfluxDB 2.x/3.x takes a token; set "
                             "LINEWATCH_INFLUX_TOKEN or LINEWATCH_INFLUX_TOKEN_FILE instead")
        if (self.influx_token is None) == (self.influx_token_file is None):
            raise ValueError("LINEWATCH_INFLUX_VERSION=2 needs exactly one of "
                             "LINEWATCH_INFLUX_TOKEN and LINEWATCH_INFLUX_TOKEN_FILE")
        host = urllib.parse.urlsplit(self.influx_url).hostname or ""
        self._refuse_placeholder("influx_token", self.influx_secret(), host)

    def influx_secret(self) -> str | None:
        """The InfluxDB 2.x/3.x token, from ``influx_token`` or the first line of
        ``influx_token_file``; ValueError for a file that cannot be read or holds none."""
        if self.influx_token is not None:
            return self.influx_token.get_secret_value()
        if self.influx_token_file is None:
            return None
        path = self.influx_token_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"LINEWATCH_INFLUX_TOKEN_FILE {str(path)!r}: cannot read it "
                             f"({type(exc).__name__})") from None
        if not lines or not lines[0].strip():
            raise ValueError(f"LINEWATCH_INFLUX_TOKEN_FILE {str(path)!r} holds no token")
        return lines[0].strip()

    @staticmethod
    def _refuse_placeholder(name: str, secret: str | None, host: str) -> None:
        if secret is not None and secret.lower() in _PLACEHOLDER_SECRETS and host not in _LOOPBACK:
            raise ValueError(
                f"LINEWATCH_{name.upper()} is a placeholder ({secret!r}); set a real secret "
                "(placeholders are accepted only for a server on this machine)"
            )

    @property
    def mqtt(self) -> MqttEndpoint:
        """Where the subscriber connects: ``mqtt_url``, or the embedded broker."""
        if self.mqtt_url is None:
            return MqttEndpoint(self.embedded_broker_host, self.embedded_broker_port, False)
        parts = urllib.parse.urlsplit(self.mqtt_url)
        tls = parts.scheme == "mqtts"
        return MqttEndpoint(parts.hostname or "", parts.port or (8883 if tls else 1883), tls)


def load_settings(path: str | Path | None = None) -> Settings:
    """Build settings from the environment, plus the env file at ``path`` if given.

    Variables in the process environment win over the file (pydantic-settings' order).
    Raises ``FileNotFoundError`` for a missing file (a silently ignored ``-c`` typo would
    start the aggregator with defaults) and ``pydantic.ValidationError`` for bad values.
    """
    if path is None:
        return Settings()
    if not Path(path).exists():
        raise FileNotFoundError(f"settings file {str(path)!r} does not exist")
    if not Path(path).is_file():
        raise FileNotFoundError(f"settings file {str(path)!r} is not a file")
    return Settings(_env_file=path)
