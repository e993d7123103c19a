"""What a plant writes in ``source:`` to feed the agent its own data.

Three kinds of source beside the replay of the shipped data sets (``agent.config``):

- ``table``: the plant's recorded CSV or Parquet files, mapped column by column (asset,
  time, channels with units), replayed like the shipped data sets;
- ``mqtt``: sensors or a PLC bridge already publishing JSON to a broker, mapped topic by
  topic (wildcards to asset and channel, dotted JSON paths to channels);
- ``opcua``: an OPC UA server's nodes, one node per asset and channel.

Every model refuses unknown keys, so a typo fails at startup naming its key path.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.errors import ConfigError

__all__ = [
    "CsvConfig",
    "MqttBroker",
    "MqttSourceConfig",
    "MqttTopicConfig",
    "OpcUaNodeConfig",
    "OpcUaSourceConfig",
    "PasswordFromEnv",
    "ReplayOptions",
    "TableAssetConfig",
    "TableChannelConfig",
    "TableConfig",
    "TableSourceConfig",
    "TableTimeConfig",
    "TimeFieldConfig",
]

TIME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0,
                "d": 86400.0}


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PasswordFromEnv(BaseModel):
    """A password read from the environment variable ``password_env`` names, never from
    the file. ``_SECTION`` is the config section an error names."""

    _SECTION: ClassVar[str] = "source"
    password_env: str | None = Field(
        None, description="name of the environment variable holding the password")

    def password(self) -> str | None:
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"{self._SECTION}.password_env: environment variable "
                              f"{self.password_env} unset")
        return value


class MqttBroker(PasswordFromEnv):
    """A broker's address, ``url`` mqtt://host:port or mqtts://host:port, checked."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts://")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        u = urlparse(value)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        return value

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlparse(self.url)
        return u.port or (8883 if u.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"


# --- tabular files ---------------------------------------------------------------------


class CsvConfig(_Config):
    delimiter: str = Field(",", description="one character, or 'whitespace' for runs of "
                           "spaces and tabs")
    header: bool = Field(True, description="the first line names the columns")
    names: list[str] | None = Field(
        None, description="column names of a file without a header line, in order")
    encoding: str = Field("utf-8-sig", description="text encoding (a byte-order mark is "
                          "skipped)")

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        if value != "whitespace" and len(value) != 1:
            raise ValueError("must be one character or 'whitespace'")
        return value


class TableAssetConfig(_Config):
    """Which machine a row belongs to: exactly one of ``column``, ``name`` or ``file``."""

    column: str | None = Field(None, description="column holding the asset")
    name: str | None = Field(None, description="one fixed asset for every row")
    file: bool = Field(False, description="one file per asset, named by its file name")
    template: str = Field(
        "{}", description="how the asset is written: '{}' is the column's value or the "
        "file's name without suffixes, e.g. 'engine-{:03d}' (integer values are integers)")

    @model_validator(mode="after")
    def _one(self) -> TableAssetConfig:
        given = [k for k in ("column", "name") if getattr(self, k) is not None]
        given += ["file"] if self.file else []
        if len(given) != 1:
            raise ValueError("give exactly one of column, name or file: true")
        return self


class TableTimeConfig(_Config):
    """When a row was sampled: a time column, or the row's index times ``period_s``."""

    column: str | None = Field(None, description="column holding the sample time")
    format: str | None = Field(
        None, description="strptime format of text times (e.g. '%Y-%m-%d %H:%M:%S'); "
        "default: numbers in `unit`, or ISO 8601 text; times without a zone are UTC")
    unit: Literal["s", "ms", "us", "ns", "min", "h", "d"] = Field(
        "s", description="unit of numeric times (a count such as a cycle number is given "
        "in 's' and scaled by the source's step_s)")
    period_s: float | None = Field(
        None, gt=0, description="no time column: row i of an asset is at i * period_s")

    @model_validator(mode="after")
    def _one(self) -> TableTimeConfig:
        if (self.column is None) == (self.period_s is None):
            raise ValueError("give exactly one of column or period_s")
        if self.format is not None and self.column is None:
            raise ValueError("format needs a column")
        return self


class TableChannelConfig(_Config):
    """One model channel: the column it is read from, and how."""

    column: str = Field(description="column holding this channel")
    unit: str | None = Field(
        None, description="unit of the column; when it differs from the model card's, "
        "scale and offset must convert it (value * scale + offset)")
    scale: float = 1.0
    offset: float = 0.0
    codes: dict[str, float] | None = Field(
        None, description="text value -> number, for a coded category (e.g. {L: 0, M: 1})")


class TableConfig(_Config):
    """How the columns of a plant's files map to the model's inputs."""

    format: Literal["csv", "parquet"] | None = Field(
        None, description="default: from the file suffix (.parquet / .pq, else CSV)")
    csv: CsvConfig = Field(default_factory=CsvConfig)
    asset: TableAssetConfig
    time: TableTimeConfig
    channels: dict[str, TableChannelConfig] = Field(
        min_length=1, description="model channel name -> column")
    missing: list[str] = Field(
        ["", "NA", "N/A", "NaN", "nan", "null", "NULL"],
        description="text read as a missing value (it is counted and skipped like NaN)")


class ReplayOptions(_Config):
    """How a recorded file is replayed: which assets, how fast, from when, and whether
    it loops or resumes (shared by the shipped formats' replay and the table source)."""


    path: Path = Field(description="a file, a directory (every file in it) or a glob pattern")
    assets: list[str] | None = Field(None, description="replay only these assets")
    speed: float = Field(1.0, ge=0, description="times faster than real time; 0 = no pacing")
    step_s: float = Field(
        1.0, gt=0, description="seconds of plant time per time unit of the file (e.g. a cycle)"
    )
    tick: float = Field(1.0, gt=0, description="file time units handed over per tick")
    start: datetime | None = Field(
        None, description="plant time of the first sample (UTC); default: when the replay "
        "starts")
    loop: bool = Field(False, description="start again at the end instead of stopping")
    resume: bool = Field(
        True, description="after a restart, continue where the last run stopped (the "
        "position is kept in the outbox file); false: replay from the beginning"
    )


class TableSourceConfig(ReplayOptions):
    """Replay a plant's own CSV or Parquet files through a column mapping."""

    type: Literal["table"]
    table: TableConfig


# --- live sources ----------------------------------------------------------------------


class _Live(_Config):
    assets: list[str] | None = Field(
        None, description="the assets expected (others are counted and dropped); also "
        "sizes the false-alarm budget")
    sample_interval_s: float | None = Field(
        None, gt=0, description="seconds between two samples of one asset, for the "
        "false-alarm budget; default: one second, said in the log")


class TimeFieldConfig(_Config):
    field: str = Field(description="dotted path of the timestamp in the payload")
    format: str = Field(
        "iso", description="'iso' (ISO 8601 text), 'epoch_s', 'epoch_ms', 'epoch_us', "
        "'epoch_ns', or a strptime format; times without a zone are UTC")


_CAPTURE = re.compile(r"^[+#]([A-Za-z_][A-Za-z0-9_]*)?$")


class MqttTopicConfig(_Config):
    """One input topic pattern and how its messages map to assets and channels.

    ``pattern`` is an MQTT filter whose ``+`` and ``#`` levels may be named
    (``plant/+asset/+channel``); the names can be used in ``asset`` (a template such as
    ``press-{station}``). A level named ``asset`` is the asset and one named ``channel`` the
    channel, unless ``asset`` or ``channels`` say otherwise.
    """

    pattern: str
    asset: str | None = Field(
        None, description="template of the asset from named levels, e.g. '{line}-{station}'; "
        "default: the level named 'asset'")
    asset_field: str | None = Field(None, description="dotted path of the asset in the "
                                    "payload, instead of the topic")
    channels: dict[str, str] | None = Field(
        None, description="model channel -> dotted path of its value in the payload; "
        "default: the level named 'channel' holds one channel and `value` its value")
    value: str | None = Field(
        None, description="with one channel per topic: dotted path of the value (default: "
        "the payload is the bare number, or an object with 'value')")
    time: TimeFieldConfig | None = Field(
        None, description="timestamp in the payload; default: when the message arrived")
    rate_hz: float | None = Field(
        None, gt=0, description="a value that is a JSON array is a block of samples this "
        "far apart, from the timestamp on; default: the model card's rate_hz")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        levels = value.split("/")
        for i, level in enumerate(levels):
            if level[:1] in "+#" and level and not _CAPTURE.match(level):
                raise ValueError(f"level {level!r}: a wildcard is '+' or '#', optionally "
                                 "followed by a name")
            if level.startswith("#") and i != len(levels) - 1:
                raise ValueError("'#' must be the last level")
            if ("+" in level[1:] or "#" in level[1:]):
                raise ValueError(f"level {level!r}: a wildcard takes a whole level")
        return value

    @model_validator(mode="after")
    def _mapping(self) -> MqttTopicConfig:
        names = [lv[1:] for lv in self.pattern.split("/") if lv[:1] in "+#" and lv[1:]]
        if self.asset is None and self.asset_field is None and "asset" not in names:
            raise ValueError("say where the asset is: a level named '+asset', `asset` (a "
                             "template of named levels) or `asset_field`")
        if self.asset is not None:
            used = re.findall(r"{([^}:!]*)", self.asset)
            unknown = [u for u in used if u not in names]
            if unknown:
                raise ValueError(f"asset template names levels {unknown} that the pattern "
                                 "does not name")
        if self.channels is None and "channel" not in names:
            raise ValueError("say where the channels are: `channels` (channel -> JSON path) "
                             "or a level named '+channel'")
        if self.channels is not None and self.value is not None:
            raise ValueError("`value` is for one channel per topic; with `channels` each "
                             "channel has its own path")
        return self


class MqttSourceConfig(_Live, MqttBroker):
    """Readings that sensors or a PLC bridge publish as JSON on an MQTT broker."""

    type: Literal["mqtt"]
    client_id: str | None = Field(None, description="default: linewatch-input-<agent id>")
    username: str | None = None
    ca_file: Path | None = Field(None, description="CA bundle for mqtts://")
    keepalive_s: int = Field(30, ge=5)
    topics: list[MqttTopicConfig] = Field(min_length=1)
    max_payload: int = Field(262_144, ge=64, description="bytes; a larger message is "
                             "counted as oversized and dropped")
    align_s: float = Field(
        0.0, ge=0, description="one channel per message: values of one asset this close "
        "in time form one sample (a channel missing from it is a missing value)")


class OpcUaNodeConfig(_Config):
    node: str = Field(description="node id, e.g. 'ns=2;s=Press1.Temperature' or 'ns=2;i=7'")
    asset: str
    channel: str


class OpcUaSourceConfig(_Live, PasswordFromEnv):
    """Values of an OPC UA server's nodes, by subscription (data change notifications)."""

    type: Literal["opcua"]
    url: str = Field(description="opc.tcp://host:port/path")
    nodes: list[OpcUaNodeConfig] = Field(min_length=1)
    timestamp: Literal["source", "server", "arrival"] = Field(
        "source", description="which time a value carries: the device's (source), the "
        "server's, or when the agent received it")
    publishing_interval_ms: float = Field(100.0, gt=0)
    align_s: float = Field(
        0.0, ge=0, description="values of one asset this close in time form one sample")
    retry_max_s: float = Field(30.0, ge=1, description="longest wait between reconnects")
    username: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        u = urlparse(value)
        if u.scheme != "opc.tcp" or not u.hostname:
            raise ValueError("must look like opc.tcp://host:port")
        return value

    @model_validator(mode="after")
    def _unique(self) -> OpcUaSourceConfig:
        seen: set[tuple[str, str]] = set()
        for n in self.nodes:
            if (n.asset, n.channel) in seen:
                raise ValueError(f"two nodes for asset {n.asset!r}, channel {n.channel!r}")
            seen.add((n.asset, n.channel))
        return self
