"""OpenTelemetry tracing set-up from the standard ``OTEL_*`` variables.

One set-up for every process: the replica (``python -m service``) and the
client CLI build their provider here, so both export the same way to the same
``OTEL_EXPORTER_OTLP_ENDPOINT`` (Jaeger in the cluster, the local mesh's
receiver on a laptop). It imports nothing from ``service`` or ``client``.

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

from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

__all__ = ["configure_tracing", "export_enabled", "has_span_processors", "shutdown_tracing"]

_log = logging.getLogger("meshdemo.tracing")

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_TIMEOUT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


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


def _resource(service_name_default: str, instance_default: str | None) -> Resource:
    resource = Resource.create()
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name_default}))
    # Without a name the SDK makes up a UUID; the replica's own name reads
    # better in a trace. A name the user gives in OTEL_RESOURCE_ATTRIBUTES wins.
    named = OTELResourceDetector().detect().attributes.get(SERVICE_INSTANCE_ID)
    if instance_default and not named:
        resource = resource.merge(Resource({SERVICE_INSTANCE_ID: instance_default}))
    return resource


def _export_timeout(default_s: float | None) -> float | None:
    """``default_s`` unless the environment sets the exporter's timeout (None: the SDK's own)."""
    if any(os.environ.get(name, "").strip() for name in _TIMEOUT_VARS):
        return None
    return default_s


def configure_tracing(
    service_name_default: str,
    *,
    instance_default: str | None = None,
    export_timeout_s: float | None = None,
) -> TracerProvider:
    """Build the process's tracer provider from the ``OTEL_*`` variables.

    The provider is returned, not installed globally: pass it to the server
    (and call :func:`shutdown_tracing` on exit so queued spans are flushed).

    Args:
        service_name_default: ``service.name`` when neither ``OTEL_SERVICE_NAME``
            nor ``OTEL_RESOURCE_ATTRIBUTES`` names the service.
        instance_default: ``service.instance.id`` (e.g. the replica's name) when
            ``OTEL_RESOURCE_ATTRIBUTES`` names none; None keeps the SDK's UUID.
        export_timeout_s: Seconds one export may take, retries included, when
            ``OTEL_EXPORTER_OTLP_TIMEOUT`` is unset (None: the SDK's 10 s). A
            short-lived process sets it low, so a collector that is down
            cannot hold up its exit.

    Returns:
        An SDK tracer provider; with an OTLP span processor only when export
        is enabled (see :func:`export_enabled`).
    """
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG) when none is passed.
    provider = TracerProvider(resource=_resource(service_name_default, instance_default))
    if export_enabled():
        # Imported lazily: the exporter pulls in a gRPC channel we only want
        # when spans leave the process. It reads the endpoint, headers,
        # certificates and timeout from the same variables.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(timeout=_export_timeout(export_timeout_s))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def has_span_processors(provider: object) -> bool:
    """Whether spans from ``provider`` go anywhere: False only for an SDK provider without
    span processors (what :func:`configure_tracing` builds when export is off).

    Extra spans that only feed trace ids to the logs are then not worth making.
    Any other provider (an API one, a vendor's) counts as going somewhere.
    """
    if not isinstance(provider, TracerProvider):
        return True
    # The SDK offers no public accessor; a changed internal reads as "has some".
    active = getattr(provider, "_active_span_processor", None)
    processors = getattr(active, "_span_processors", None)
    return processors is None or len(processors) > 0


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
