"""linewatch's shared contract: what the agent, the aggregator and training all read.

- ``contract.wire``: MQTT topics and payloads (envelopes, predictions, drift events,
  health, status), encode and decode, limits;
- ``contract.card``: the model card that travels beside every ``model.onnx``;
- ``contract.errors``: one root, ``ContractError``, for both.

Imports the standard library and pydantic only, so a gateway, the central service and any
tool on the plant floor can read it without each other's runtime. ``agent`` and
``aggregator`` stand side by side on this package and never import each other.
"""

__all__: list[str] = []
