"""How the agent and the aggregator tell about what they depend on being down.

- ``outage.failures``: ``FailureLog``, for anything that fails and is retried (the broker
  link, series-store and SQL writes): loud once per kind of failure, quiet while it
  repeats, a summary now and then, one line when it works again. Standard library only.
- ``outage.mqtt``: ``BrokerLink``, which follows one paho-mqtt client's connection to its
  broker: why each attempt failed, when paho tries again, and whether another client is
  using the same client id.

It sits beside ``contract`` at the bottom of the import graph and imports neither it nor
anything else of the project, so ``agent`` and ``aggregator``, which must not import each
other, share one definition. It is not part of ``contract``: nothing here crosses the wire.
"""

__all__: list[str] = []
