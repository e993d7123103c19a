"""Agent configuration: YAML in, validated pydantic models out, secrets from the environment.

Every model forbids unknown keys, so a typo fails at startup with its key path instead of
being silently ignored on a gateway nobody looks at.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
)

from agent.errors import ConfigError
from agent.sources.config import (
    MqttBroker,
    MqttSourceConfig,
    OpcUaSourceConfig,
    ReplayOptions,
    TableSourceConfig,
)

__all__ = [
    "AgentConfig",
    "AgentIdConfig",
    "BudgetConfig",
    "EstimateConfig",
    "ModelConfig",
    "MonitorConfig",
    "MqttConfig",
    "OutboxConfig",
    "PublishConfig",
    "ReplaySourceConfig",
    "SourceConfig",
    "load",
    "parse",
    "tls_context",
]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentIdConfig(_Config):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="unique agent name")
    site: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="plant or site name")
    line: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="line this gateway serves")


class ModelConfig(_Config):
    """The model the agent starts with, and how it takes models the registry assigns it
    (``agent.rollout``): an assignment runs only if a trusted key signed its artifact."""

    dir: Path = Field(description="model directory holding model.onnx and card.json; what "
                      "runs while no assigned model in the store passes its self-test")
    trusted_keys: list[Path] = Field(
        default_factory=list, description="PEM ed25519 public keys of the model registry; "
        "none: every model assignment is refused")
    store: Path | None = Field(None, description="where assigned models and the pointer to "
                               "the running ones are kept; default: models/ next to the "
                               "outbox (var/agent/<id>/models)")
    fetch_timeout_s: float = Field(30.0, gt=0, description="socket timeout of one download")
    fetch_attempts: int = Field(5, ge=1, le=20, description="downloads tried, with backoff, "
                                "before an assignment is refused")
    fetch_retry_s: float = Field(60.0, gt=0, description="an assignment refused for a "
                                 "network or server error is prepared again this long after, "
                                 "then twice as long each time up to 15 min, until a newer "
                                 "assignment replaces it")
    ca_file: Path | None = Field(None, description="PEM CA bundle the registry's HTTPS "
                                 "certificate is checked against (a plant's private CA); "
                                 "default: the system's CA store")


class ReplaySourceConfig(ReplayOptions):
    type: Literal["replay"] = "replay"
    path: Path = Field(description="recorded data file (or directory of IMS snapshots)")
    format: Literal["cmapss", "ai4i", "ims"] | None = Field(
        None, description="file format; defaults to the model card's input format"
    )


def _source_type(data: Any) -> str:
    # A source without `type:` is a replay, as it always was.
    value = data.get("type", "replay") if isinstance(data, dict) else getattr(data, "type", None)
    return value if isinstance(value, str) else "replay"


SourceConfig = Annotated[
    Annotated[ReplaySourceConfig, Tag("replay")]
    | Annotated[TableSourceConfig, Tag("table")]
    | Annotated[MqttSourceConfig, Tag("mqtt")]
    | Annotated[OpcUaSourceConfig, Tag("opcua")],
    Discriminator(_source_type, custom_error_type="source_type",
                  custom_error_message="type must be replay, table, mqtt or opcua"),
]
_SOURCE_TAGS = ("replay", "table", "mqtt", "opcua")


class MqttConfig(_Config, MqttBroker):
    _SECTION: ClassVar[str] = "mqtt"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = Field(None, description="defaults to linewatch-agent-<agent id>")
    username: str | None = None
    keepalive_s: int = Field(30, ge=5)
    max_inflight: int = Field(
        20, ge=1, le=1000, description="messages handed to the broker and not yet acknowledged"
    )
    ca_file: Path | None = Field(None, description="CA bundle for mqtts://")


class OutboxConfig(_Config):
    path: Path | None = Field(None, description="SQLite file; default var/agent/<id>/outbox.db")
    max_rows: int = Field(
        200_000, ge=100,
        description="beyond this, the oldest telemetry (health, predictions without alerts) "
        "is dropped and counted; drift events and alerts are never dropped",
    )


class PublishConfig(_Config):
    max_items: int = Field(500, ge=1, le=5000, description="items per MQTT message at most")
    flush_interval_s: float = Field(1.0, gt=0, description="longest wait before a partial batch")
    health_interval_s: float = Field(30.0, gt=0)
    confirm: Literal["aggregator", "broker"] = Field(
        "aggregator", description="when a message leaves the outbox: once the linewatch "
        "aggregator confirms it stored it, or on the broker's acknowledgement (only for a "
        "broker with no linewatch aggregator behind it: a broker that loses its session "
        "loses those messages)",
    )
    confirm_timeout_s: float = Field(
        60.0, gt=0, description="send a message again when the aggregator has not confirmed "
        "it this long after the broker took it; doubled while nothing gets confirmed, up to "
        "15 min",
    )


class BudgetConfig(_Config):
    """The false-alarm budget, in a plant's words: at most ``alarms`` false drift alarms per
    agent per ``per_days`` days. Every monitor's threshold is calibrated to it."""

    alarms: float = Field(1.0, gt=0, description="false drift alarms allowed per agent ...")
    per_days: float = Field(90.0, gt=0, description="... per this many days")


class MonitorConfig(_Config):
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    windows_per_day: float | None = Field(
        None, gt=0, description="windows per asset per day, for the budget; default: from "
        "the source's sample interval and the card's window hop"
    )
    stuck_samples: int | None = Field(
        None, ge=2, description="identical samples in a row before a channel counts as "
        "stuck; default: from the card (twice the longest run seen in training, plus two)"
    )


class EstimateConfig(_Config):
    """The label-free estimate of the alerts' precision and recall in every health report
    (``agent.estimate``): over the last ``window`` scored windows of all assets."""

    window: int = Field(2000, ge=1, description="scored windows the estimate is over")
    draws: int = Field(400, ge=20, le=10_000,
                       description="simulated label sets for its 95 % intervals")


class AgentConfig(_Config):
    agent: AgentIdConfig
    model: ModelConfig
    source: SourceConfig
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    monitors: MonitorConfig = Field(default_factory=MonitorConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or Path("var") / "agent" / self.agent.id / "outbox.db"

    @property
    def model_store(self) -> Path:
        # Next to the outbox: the agent's state in one directory, var/agent/<id> by default.
        return self.model.store or self.outbox_path.parent / "models"


def parse(data: object, *, base: Path | None = None) -> AgentConfig:
    """Validate a mapping; relative paths are taken from ``base`` when given."""
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        errors = [(".".join(str(p) for p in _loc(e["loc"])), e.get("input"), e["msg"])
                  for e in exc.errors()]
        lines = "\n".join(f"  {k}: {m} (got {v!r})" for k, v, m in errors)
        raise ConfigError(f"invalid agent configuration:\n{lines}", errors) from exc
    return _rebase(config, base) if base else config


def _loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The key path as the user wrote it: without the source type pydantic puts in."""
    if len(loc) > 1 and loc[0] == "source" and loc[1] in _SOURCE_TAGS:
        return loc[:1] + loc[2:]
    return loc


def _rebase(config: AgentConfig, base: Path) -> AgentConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    return config.model_copy(
        update={
            "model": config.model.model_copy(update={
                "dir": fix(config.model.dir), "store": fix(config.model.store),
                "ca_file": fix(config.model.ca_file),
                "trusted_keys": [base / p if not p.is_absolute() else p
                                 for p in config.model.trusted_keys]}),
            "source": config.source.model_copy(update={"path": fix(config.source.path)})
            if isinstance(config.source, ReplaySourceConfig | TableSourceConfig)
            else config.source,
            "outbox": config.outbox.model_copy(update={"path": fix(config.outbox.path)}),
        }
    )


def tls_context(ca_file: Path | None, key: str) -> ssl.SSLContext:
    """A client context that verifies servers against ``ca_file`` (else the system's CA
    store); a file that cannot be loaded is a ``ConfigError`` naming ``key``, so it is said
    at start rather than at the first download, maybe weeks later."""
    try:
        return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except OSError as exc:  # ssl.SSLError too: a file with no PEM certificate in it
        why = f"cannot load a PEM CA bundle from it: {exc.strerror or exc}"
        raise ConfigError(f"invalid agent configuration:\n  {key}: {why} (got "
                          f"{str(ca_file)!r})", [(key, str(ca_file), why)]) from exc


def load(path: str | Path) -> AgentConfig:
    """Read a YAML file. Relative paths in it are relative to the working directory, as on
    the command line."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse(data)
