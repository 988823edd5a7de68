"""``python -m service``: run one replica of the user service."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from service.config import ConfigError, load_config
from service.logs import configure_logging
from service.server import run
from service.store import StoreUnavailable
from service.tracing import configure_tracing, shutdown_tracing

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and environment, serve until SIGTERM; the exit code."""
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    log = logging.getLogger("meshdemo.server")
    tracer_provider = configure_tracing("meshdemo-user-service", instance_default=config.replica)
    try:
        return asyncio.run(run(config, tracer_provider=tracer_provider))
    except ConfigError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    except (StoreUnavailable, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    finally:
        shutdown_tracing(tracer_provider)


if __name__ == "__main__":
    sys.exit(main())
