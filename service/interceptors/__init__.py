"""Server interceptors of the user service, one per concern, in a fixed chain.

:func:`build_server_interceptors` returns them outermost first:

1. **tracing** (:mod:`._tracing`): one OpenTelemetry SERVER span per RPC,
   covering whole streams, following the semantic conventions for gRPC;
   health checks are not traced;
2. **error mapping** (:mod:`._errors`): the one place where exceptions become
   wire statuses, with ``google.rpc`` details; unexpected ones become
   INTERNAL, never UNKNOWN;
3. **logging** (:mod:`._logging`): one record per RPC when it ends;
4. **metrics** (:mod:`._metrics`): ``grpc_server_*`` Prometheus series;
5. **auth** (:mod:`._auth`): bearer-token check and role policy;
6. **admission** (:mod:`._admission`): caps on UserService calls at once
   (total, per method, open streams per principal) and the Chat idle
   timeout; health and reflection are never counted.

Auth and admission are innermost so that refused calls are still traced,
logged and counted; admission runs after auth because it caps streams per
authenticated principal, and unauthenticated calls never take a slot.
Logging and metrics sit inside error mapping so they see the
original exception and classify it with the same :func:`code_of` that the
mapper's status follows. All six layers share :mod:`._base`, which wraps all
four RPC kinds around a per-method hook and caches the wrapped handler per
method name, and decodes requests itself once every layer began (so a
message that does not decode is INVALID_ARGUMENT after auth, seen by all).
"""

from __future__ import annotations

import logging

import grpc.aio
from opentelemetry.trace import TracerProvider

from service.auth import TokenVerifier
from service.interceptors._admission import (
    Admission,
    AdmissionInterceptor,
    AdmissionLimits,
    CallKind,
    DefaultDeadlineInterceptor,
    IdleTimeout,
)
from service.interceptors._auth import AuthInterceptor
from service.interceptors._base import (
    CallHook,
    DeferredDecoding,
    HookInterceptor,
    MethodInfo,
    wrap_handler,
)
from service.interceptors._errors import INTERNAL_MESSAGE, ErrorMappingInterceptor, code_of
from service.interceptors._logging import LoggingInterceptor
from service.interceptors._metrics import MetricsInterceptor
from service.interceptors._tracing import (
    SERVER_FAULTS,
    UNTRACED_PREFIXES,
    TracingInterceptor,
    tracing_interceptor,
)
from service.metrics import ServerMetrics

__all__ = [
    "INTERNAL_MESSAGE",
    "RPC_LOGGER",
    "SERVER_FAULTS",
    "UNTRACED_PREFIXES",
    "Admission",
    "AdmissionInterceptor",
    "AdmissionLimits",
    "AuthInterceptor",
    "CallHook",
    "CallKind",
    "DefaultDeadlineInterceptor",
    "DeferredDecoding",
    "ErrorMappingInterceptor",
    "HookInterceptor",
    "IdleTimeout",
    "LoggingInterceptor",
    "MethodInfo",
    "MetricsInterceptor",
    "TracingInterceptor",
    "build_server_interceptors",
    "code_of",
    "tracing_interceptor",
    "wrap_handler",
]

#: The default logger of access lines and unexpected-error tracebacks.
RPC_LOGGER = "meshdemo.rpc"


def build_server_interceptors(
    *,
    verifier: TokenVerifier | None,
    metrics: ServerMetrics | None,
    tracer_provider: TracerProvider | None,
    logger: logging.Logger | None = None,
    admission: AdmissionInterceptor | None = None,
) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """The server's interceptor chain, outermost first (see the module doc).

    Args:
        verifier: Checks bearer tokens; None switches auth off (explicitly).
        metrics: Where RPC metrics go; None records none.
        tracer_provider: Source of spans; None uses the global provider.
        logger: Access and error logger; default ``meshdemo.rpc``.
        admission: The caps on UserService calls; None admits every call.

    Returns:
        Interceptors for ``grpc.aio.server(interceptors=...)``.
    """
    log = logging.getLogger(RPC_LOGGER) if logger is None else logger
    chain: list[grpc.aio.ServerInterceptor] = [  # type: ignore[type-arg]
        tracing_interceptor(tracer_provider),
        ErrorMappingInterceptor(log),
        LoggingInterceptor(log),
    ]
    if metrics is not None:
        chain.append(MetricsInterceptor(metrics))
    if verifier is not None:
        chain.append(AuthInterceptor(verifier))
    if admission is not None:
        chain.append(admission)
    return chain
