"""linewatch: predictive-maintenance monitoring for assembly lines.

Import packages: ``agent`` (line-side gateway), ``aggregator`` (central service) and this
one, which holds the command line, the demo and the model factory.
"""

__all__: list[str] = []
