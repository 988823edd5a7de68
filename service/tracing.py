"""OpenTelemetry tracing set-up from the standard ``OTEL_*`` variables.

The SDK reads ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` itself. Spans are
exported over OTLP/gRPC only when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and ``OTEL_TRACES_EXPORTER`` does not say
``none``: without an endpoint nothing is exported and nothing connects
anywhere, yet spans still exist so trace ids reach the logs. An exporter
that is down costs lost spans, never a failed call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

__all__ = ["configure_tracing", "export_enabled", "shutdown_tracing"]

_log = logging.getLogger("meshdemo.tracing")

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def export_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for OTLP export of spans.

    True when an OTLP endpoint variable is set and ``OTEL_TRACES_EXPORTER``
    is unset or lists ``otlp``; ``none`` always wins.
    """
    env = os.environ if environ is None else environ
    if not any(env.get(name, "").strip() for name in _ENDPOINT_VARS):
        return False
    exporters = {
        name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
    }
    if "none" in exporters:
        return False
    if "otlp" not in exporters:
        _log.warning(
            "only the otlp trace exporter is supported; spans are not exported",
            extra={"otel_traces_exporter": sorted(exporters)},
        )
        return False
    return True


def _resource(service_name_default: str) -> Resource:
    resource = Resource.create()
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name_default}))
    return resource


def configure_tracing(service_name_default: str) -> TracerProvider:
    """Build the process's tracer provider from the ``OTEL_*`` variables.

    The provider is returned, not installed globally: pass it to the server
    (and call :func:`shutdown_tracing` on exit so queued spans are flushed).

    Args:
        service_name_default: ``service.name`` when neither ``OTEL_SERVICE_NAME``
            nor ``OTEL_RESOURCE_ATTRIBUTES`` names the service.

    Returns:
        An SDK tracer provider; with an OTLP span processor only when export
        is enabled (see :func:`export_enabled`).
    """
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG) when none is passed.
    provider = TracerProvider(resource=_resource(service_name_default))
    if export_enabled():
        # Imported lazily: the exporter pulls in a gRPC channel we only want
        # when spans leave the process. It reads the endpoint, headers,
        # certificates and timeout from the same variables.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def shutdown_tracing(provider: TracerProvider, timeout_s: float = 5.0) -> None:
    """Flush queued spans for at most ``timeout_s`` seconds, then shut down.

    Never raises: a collector that is down only loses spans.
    """
    try:
        if not provider.force_flush(timeout_millis=int(timeout_s * 1000)):
            _log.warning("spans not flushed within %.1f s", timeout_s)
        provider.shutdown()
    except Exception:
        _log.exception("tracing shutdown failed")
