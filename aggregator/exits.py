"""Exit codes of ``python -m aggregator`` and ``linewatch aggregator``.

The same numbers as ``agent.exits`` (the two sides may not import each other; a test keeps
them equal). README.md, section "Exit codes", has the table for every command.
"""

from __future__ import annotations

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_START"]

#: Clean shutdown. (On SIGTERM the aggregator shuts down cleanly, then ends by SIGTERM
#: as a service manager expects: status 143 in a shell.)
EXIT_OK = 0
#: Not used by the aggregator itself; Python exits 1 on an unexpected error, with a
#: traceback: a bug.
EXIT_FAILED = 1
#: Bad command line or settings (invalid value, unknown key, missing or unreadable env
#: file): nothing was started. argparse uses 2 as well.
EXIT_CONFIG = 2
#: Could not start: a port is in use, the database or the series store is unusable.
#: (uvicorn's own "startup failure" code is 3 too.)
EXIT_START = 3
#: Interrupted by Ctrl-C (128 + SIGINT), after a clean shutdown.
EXIT_INTERRUPTED = 130
