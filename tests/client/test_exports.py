"""The public surface of ``client``: exactly these names, each importable."""

from __future__ import annotations

import inspect

import client

EXPECTED = {
    # The client
    "UserClient", "UserListing", "ChatSession", "ChatReconnect", "ChatMoved", "ChatReconnected",
    "NewUserSpec", "ClientStats", "HedgeStats",
    "DEFAULT_DEADLINES", "DEFAULT_HEDGING", "HEDGEABLE_METHODS",
    "DEFAULT_ATTEMPT_TIMEOUTS", "MAX_BATCH", "ROLES", "mint_token",
    # Configuration
    "PoolConfig", "EjectionConfig", "RetryPolicy", "RetryBudget", "HedgingPolicy",
    "TokenProvider",
    # TLS
    "TlsConfig", "TlsCredentials", "ChannelSecurity", "server_name_for",
    # Discovery
    "Address", "Resolver", "StaticResolver", "DnsResolver", "KubernetesResolver", "TargetError",
    "resolver_for",
    # Balancing and pooling
    "Candidate", "Picker", "PICKERS", "make_picker", "Endpoint", "EndpointSet",
    "EndpointState", "EndpointStats", "NoEndpointError",
    # Metrics
    "CallMetrics", "MethodStats", "LatencyHistogram", "LatencySummary", "LoadConfig",
    "LoadSnapshot", "LoadSummary", "EndpointRow", "OperationRow", "parse_mix", "run_load",
    # Watching a load run
    "EndpointEvent", "endpoint_events", "LiveView", "PlainProgress", "format_event",
    "render_summary",
    # Errors
    "MeshError", "InvalidArgumentError", "FieldViolation", "NotFoundError",
    "AlreadyExistsError", "UnauthenticatedError", "PermissionDeniedError",
    "ResourceExhaustedError", "UnavailableError", "DeadlineExceededError",
    "CallCancelledError", "InternalError", "from_rpc_error", "UnknownError",
    "FailedPreconditionError", "AbortedError", "OutOfRangeError", "UnimplementedError",
    "DataLossError", "EndpointDrainingError", "error_class", "TARGET_FORMS",
}  # fmt: skip


def test_all_is_exactly_the_public_api() -> None:
    assert set(client.__all__) == EXPECTED
    assert len(client.__all__) == len(EXPECTED)  # No name listed twice.


def test_every_exported_name_exists() -> None:
    for name in client.__all__:
        assert getattr(client, name) is not None, name


def test_exported_classes_and_functions_come_from_private_modules() -> None:
    members = [getattr(client, name) for name in client.__all__]
    defined = [m for m in members if inspect.isclass(m) or inspect.isfunction(m)]
    assert len(defined) > 30
    for member in defined:
        assert member.__module__.startswith("client._"), member
