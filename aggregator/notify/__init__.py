"""Notifications: webhooks (linewatch JSON, Slack, Teams) and a line's andon over MQTT.

- ``targets``: where notifications go, from the settings (``LINEWATCH_NOTIFY_TARGETS``);
- ``intents``: what to tell whom about a ticket change, written in the change's own
  transaction (the outbox); one announcement per incident, updates referring to it, past
  incidents recorded and not sent;
- ``bodies``: the bodies each kind of target receives;
- ``andon``: a line's state and its incidents' events (``contract.wire``);
- ``worker``: the thread that sends the outbox with retries and keeps the delivery log.

Import the modules themselves (``aggregator.notify.worker``...): the settings import
``targets``, so this package imports nothing on its own.
"""

from __future__ import annotations

__all__: list[str] = []
