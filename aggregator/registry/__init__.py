"""The model registry: signed model versions (``store``), their assignments to agents and
the stage machine that moves them (``lifecycle``), what each agent is to run
(``resolve``) and the retained commands that tell it (``publisher``). The tables are in
``models``; the REST routes in ``aggregator.api.routes.registry``."""

__all__: list[str] = []
