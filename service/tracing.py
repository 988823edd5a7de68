"""The replica's tracing set-up: the shared :mod:`meshdemo.telemetry`, re-exported.

Replicas and the client build their tracer provider the same way (from the
standard ``OTEL_*`` variables), so that one module serves both; this name
stays for the service's callers.
"""

from __future__ import annotations

from meshdemo.telemetry import (
    configure_tracing,
    export_enabled,
    has_span_processors,
    shutdown_tracing,
)

__all__ = ["configure_tracing", "export_enabled", "has_span_processors", "shutdown_tracing"]
