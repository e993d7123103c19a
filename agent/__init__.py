"""linewatch agent: runs on a line-side gateway.

Sources, windows, features, the ONNX model, drift monitors, the outbox and the MQTT publisher.

It stands on ``contract`` (the wire messages and the model card) and imports nothing from
the aggregator or the ``linewatch`` command: a gateway installs only ``linewatch[agent]``.
"""

__all__: list[str] = []
