"""linewatch agent: runs on a line-side gateway (sources, features, ONNX model, drift monitors, outbox, MQTT publisher).

Imports nothing heavy here: the aggregator imports ``agent.wire`` and ``agent.card``.
"""
