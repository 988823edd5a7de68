"""Client library for the meshdemo user service: discovery, balancing, pooling, retries.

The public surface lives here; the modules behind it (``client._name``) are private.
"""

from client._chat import ChatMoved, ChatReconnect, ChatReconnected, ChatSession
from client._client import (
    DEFAULT_ATTEMPT_TIMEOUTS,
    DEFAULT_DEADLINES,
    DEFAULT_HEDGING,
    HEDGEABLE_METHODS,
    MAX_BATCH,
    ROLES,
    ClientStats,
    HedgeStats,
    NewUserSpec,
    UserClient,
    UserListing,
)
from client._dns import DnsResolver
from client._endpoint import (
    EjectionConfig,
    Endpoint,
    EndpointDrainingError,
    EndpointState,
    EndpointStats,
    PoolConfig,
)
from client._errors import (
    AbortedError,
    AlreadyExistsError,
    CallCancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    error_class,
    from_rpc_error,
)
from client._events import EndpointEvent, endpoint_events
from client._hedge import HedgingPolicy
from client._histogram import LatencyHistogram, LatencySummary
from client._interceptors import CallMetrics, MethodStats, TokenProvider
from client._live import LiveView, PlainProgress, format_event, render_summary
from client._load import (
    EndpointRow,
    LoadConfig,
    LoadSnapshot,
    LoadSummary,
    OperationRow,
    parse_mix,
    run_load,
)
from client._picker import PICKERS, Candidate, Picker, make_picker
from client._pool import EndpointSet, NoEndpointError
from client._resolver import (
    TARGET_FORMS,
    Address,
    Resolver,
    StaticResolver,
    TargetError,
    resolver_for,
)
from client._retry import RetryBudget, RetryPolicy
from client._tls import ChannelSecurity, TlsConfig, TlsCredentials, server_name_for
from client._token import mint_token

__all__ = [  # noqa: RUF022 -- grouped by concept, as the modules are
    # The client
    "UserClient",
    "UserListing",
    "ChatSession",
    "ChatReconnect",
    "ChatMoved",
    "ChatReconnected",
    "NewUserSpec",
    "ClientStats",
    "HedgeStats",
    "DEFAULT_DEADLINES",
    "DEFAULT_HEDGING",
    "HEDGEABLE_METHODS",
    "DEFAULT_ATTEMPT_TIMEOUTS",
    "MAX_BATCH",
    "ROLES",
    "mint_token",
    # Configuration
    "PoolConfig",
    "EjectionConfig",
    "RetryPolicy",
    "RetryBudget",
    "HedgingPolicy",
    "TokenProvider",
    # TLS
    "TlsConfig",
    "TlsCredentials",
    "ChannelSecurity",
    "server_name_for",
    # Discovery
    "Address",
    "Resolver",
    "StaticResolver",
    "DnsResolver",
    "KubernetesResolver",
    "TargetError",
    "resolver_for",
    "TARGET_FORMS",
    # Balancing and pooling
    "Candidate",
    "Picker",
    "PICKERS",
    "make_picker",
    "Endpoint",
    "EndpointSet",
    "EndpointState",
    "EndpointStats",
    "NoEndpointError",
    # Metrics and load
    "CallMetrics",
    "MethodStats",
    "LatencyHistogram",
    "LatencySummary",
    "LoadConfig",
    "LoadSnapshot",
    "LoadSummary",
    "EndpointRow",
    "OperationRow",
    "parse_mix",
    "run_load",
    # Watching a load run
    "EndpointEvent",
    "endpoint_events",
    "LiveView",
    "PlainProgress",
    "format_event",
    "render_summary",
    # Errors: one class per non-OK status code
    "MeshError",
    "CallCancelledError",
    "UnknownError",
    "InvalidArgumentError",
    "FieldViolation",
    "DeadlineExceededError",
    "NotFoundError",
    "AlreadyExistsError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "FailedPreconditionError",
    "AbortedError",
    "OutOfRangeError",
    "UnimplementedError",
    "InternalError",
    "UnavailableError",
    "DataLossError",
    "UnauthenticatedError",
    "EndpointDrainingError",
    "error_class",
    "from_rpc_error",
]


def __getattr__(name: str) -> object:
    # The kubernetes package is heavy: import it only for k8s:/// users.
    if name == "KubernetesResolver":
        from client._k8s import KubernetesResolver

        return KubernetesResolver
    raise AttributeError(f"module 'client' has no attribute {name!r}")
