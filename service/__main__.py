"""``python -m service``: run one replica of the user service.

Every start-up failure is a :class:`~service.config.StartupError`, printed as
one line on stderr (``error: <what is wrong>; <how to fix it>``, no
traceback) with exit status 2 for a bad setting and 1 for the environment.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from service.config import StartupError, load_config
from service.logs import configure_logging
from service.server import run
from service.tracing import configure_tracing, shutdown_tracing

__all__ = ["main"]


def _refuse(exc: StartupError) -> int:
    print(exc.line(), file=sys.stderr, flush=True)
    return exc.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and environment, serve until SIGTERM; the exit code."""
    try:
        config = load_config(argv)
    except StartupError as exc:
        return _refuse(exc)
    configure_logging(config.log_level)
    tracer_provider = configure_tracing("meshdemo-user-service", instance_default=config.replica)
    try:
        return asyncio.run(run(config, tracer_provider=tracer_provider))
    except StartupError as exc:
        # start_replica has already undone what it had started.
        return _refuse(exc)
    finally:
        shutdown_tracing(tracer_provider)


if __name__ == "__main__":
    sys.exit(main())
