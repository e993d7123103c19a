"""linewatch agent: runs on a line-side gateway.

Sources, windows, features, the ONNX model, drift monitors, the outbox and the MQTT publisher.

Imports nothing heavy here: the aggregator imports ``agent.wire`` and ``agent.card``.
"""

__all__: list[str] = []
