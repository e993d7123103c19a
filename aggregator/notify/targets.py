"""Webhook targets: where notifications go, and which tickets each one wants.

Configured in the aggregator settings as a JSON list (``LINEWATCH_NOTIFY_TARGETS``); the
secret a target needs (a bearer token, a shared key) is never written there but read from
an environment variable or a file, named by ``secret_env`` or ``secret_file``, and sent in
the header ``secret_header``. A missing variable or an unreadable file fails the settings,
so the aggregator does not start with a target it cannot authenticate to.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ANDON", "TICKET_KINDS", "TargetConfig"]

ANDON = "andon"  # the name of the built-in MQTT target; no webhook may take it
TICKET_KINDS = ("maintenance", "sensor", "inspect", "retraining")
_HEADER = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"  # an HTTP field name (RFC 9110 token)


class TargetConfig(BaseModel):
    """One webhook target.

    ``kind`` picks the body: ``json`` (linewatch's own, for scripts and CMMS adapters),
    ``slack`` (``text`` and ``blocks``: an incoming webhook, or ``chat.postMessage`` with
    ``slack_channel`` set, whose answers thread the updates under the first message) or
    ``teams`` (an Adaptive Card, as Teams workflows take it). ``ticket_kinds`` and
    ``sites`` filter the tickets (all when absent).

    >>> t = TargetConfig(name="ops", kind="json", url="https://cmms.example/hook",
    ...                  ticket_kinds=["maintenance"])
    >>> t.wants("maintenance", "plant1"), t.wants("sensor", "plant1")
    (True, False)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                               description="Shown in the delivery log; unique.")]
    kind: Literal["json", "slack", "teams"]
    url: str = Field(description="http(s) URL the notifications are POSTed to.")
    ticket_kinds: list[Literal["maintenance", "sensor", "inspect", "retraining"]] | None = None
    sites: list[Annotated[str, Field(min_length=1)]] | None = None
    secret_header: Annotated[str, Field(pattern=_HEADER)] | None = Field(
        None, description="Header that carries the secret, e.g. Authorization.")
    secret_env: str | None = Field(None, description="Environment variable with the secret.")
    secret_file: Path | None = Field(None, description="File with the secret (one line).")
    slack_channel: str | None = Field(
        None, description="For Slack's chat.postMessage: the channel; updates then go into "
        "the thread of the incident's first message.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("no credentials in the URL; use secret_header with secret_env "
                             "or secret_file")
        return value

    @model_validator(mode="after")
    def _check_secret(self) -> TargetConfig:
        if self.name == ANDON:
            raise ValueError(f"the target name {ANDON!r} is the MQTT andon's")
        given = [s for s in (self.secret_env, self.secret_file) if s is not None]
        if self.secret_header is None and given:
            raise ValueError("secret_env or secret_file needs secret_header")
        if self.secret_header is not None and len(given) != 1:
            raise ValueError("secret_header needs exactly one of secret_env and secret_file")
        self.headers()  # a missing variable or file fails now, not at the first incident
        return self

    def wants(self, kind: str, site: str) -> bool:
        """Whether this target is told about a ticket of ``kind`` at ``site``."""
        return ((self.ticket_kinds is None or kind in self.ticket_kinds)
                and (self.sites is None or site in self.sites))

    def headers(self) -> dict[str, str]:
        """The secret header, read now (a rotated secret is picked up); ``{}`` if none."""
        if self.secret_header is None:
            return {}
        if self.secret_env is not None:
            value = os.environ.get(self.secret_env)
            if not value:
                raise ValueError(f"target {self.name!r}: environment variable "
                                 f"{self.secret_env} is not set")
        else:
            assert self.secret_file is not None
            try:
                value = self.secret_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"target {self.name!r}: cannot read secret_file "
                                 f"{str(self.secret_file)!r}: {exc.strerror}") from exc
            if not value:
                raise ValueError(f"target {self.name!r}: secret_file "
                                 f"{str(self.secret_file)!r} is empty")
        return {self.secret_header: value}
