"""A tiny OTLP/gRPC trace collector that counts what it receives.

``python -m bench.service._collector [--host H]`` binds port 0, prints
``{"message": "serving", "address": ...}``, accepts every export and, on
SIGTERM, prints ``{"message": "stopped", "requests": N, "spans": M}``. It
only counts: the benchmark asks whether every span arrived, not what it says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

__all__ = ["CountingCollector", "main", "serve"]


class CountingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts export requests and the spans in them."""

    def __init__(self) -> None:
        self.requests = 0
        self.spans = 0

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests += 1
        self.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(host: str) -> None:
    """Collect on ``host`` port 0 until SIGTERM or SIGINT, then print the counts."""
    collector = CountingCollector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(json.dumps({"message": "serving", "address": f"{host}:{port}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)
    report = {"message": "stopped", "requests": collector.requests, "spans": collector.spans}
    print(json.dumps(report), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--host`` and collect."""
    parser = argparse.ArgumentParser(prog="python -m bench.service._collector")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
