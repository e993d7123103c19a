"""Exit codes of ``python -m agent`` and ``linewatch agent``.

The same numbers as ``aggregator.exits`` (the two sides may not import each other; a test
keeps them equal). README.md, section "Exit codes", has the table for every command.
"""

from __future__ import annotations

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_START"]

#: The command did its job (the agent: replay ended and the outbox drained).
EXIT_OK = 0
#: It ran but did not finish its job (the agent: messages left in the outbox, kept for the
#: next start). Python also exits 1 on an unexpected error, with a traceback: a bug.
EXIT_FAILED = 1
#: Bad command line or configuration: nothing was started. argparse uses 2 as well.
EXIT_CONFIG = 2
#: Could not start: something the configuration names is missing or unusable (model
#: directory, model card, data file, outbox directory).
EXIT_START = 3
#: Interrupted by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
