"""REST API of the aggregator: ``create_app(settings)`` builds it (see ``app.py``)."""

__all__: list[str] = []
