"""Benchmark 2: GetUser calls/s with every call traced and exported, against tracing off.

Traced: ``OTEL_TRACES_SAMPLER=always_on``, spans exported over OTLP/gRPC by
the production set-up (:func:`service.tracing.configure_tracing`: a
BatchSpanProcessor with its default settings) to a counting collector
(:mod:`bench.service._collector`) in its own process on 127.0.0.1.

Baseline: ``OTEL_SDK_DISABLED=true``. The SDK then hands out no-op tracers,
the cheapest "off" an operator can choose without a code change; the
``always_off`` sampler still extracts context, creates ids and non-recording
spans, so it would flatter the ratio. Both are measured; the goal applies
to the strict one. Goal: traced/off >= 0.8. Every span sent (two per call:
the RPC and its store call) must reach the collector (the processor and
exporter are not the bottleneck when none is dropped).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.service._common import Bounds, Row, median, seed_user
from bench.service._compare import Target, compare_rates
from bench.service._procs import Spawned, replica_argv, replica_env

__all__ = ["GOAL", "tracing"]

#: Minimum traced/untraced ratio of calls per second.
GOAL = 0.8
#: Spans one traced call makes on the replica: its SERVER span and the store
#: call under it (``store.get_user``, or ``store.create_user`` for the seed).
SPANS_PER_CALL = 2

_SIDES = {
    "traced": {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"},
    "sdk_disabled": {"OTEL_SDK_DISABLED": "true"},
    "always_off": {"OTEL_TRACES_SAMPLER": "always_off"},
}


def _ratio_row(figure: str, mine: list[float], base: list[float], goal: bool) -> Row:
    ratios = [m / b for m, b in zip(mine, base, strict=True)]
    value = median(ratios)
    if not goal:
        return Row("tracing", figure, value, "x", detail={"ratios": ratios})
    return Row("tracing", figure, value, "x", f">= {GOAL}", value >= GOAL, {"ratios": ratios})


async def tracing(bounds: Bounds, *, cwd: str | None = None) -> list[Row]:
    """Run the comparison; ratio rows, rates and the export completeness.

    Args:
        bounds: Rounds and load.
        cwd: Where the replicas import ``service`` from (to measure another tree).
    """
    collector = Spawned([sys.executable, "-m", "bench.service._collector"], replica_env())
    async with collector:
        endpoint = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://{collector.address}"}
        with tempfile.TemporaryDirectory(prefix="meshdemo-bench-") as tmp:
            store = f"sqlite:///{Path(tmp) / 'users.db'}"
            replicas = {
                name: Spawned(
                    replica_argv("127.0.0.1", store),
                    replica_env({**env, **(endpoint if name == "traced" else {})}),
                    cwd=cwd,
                )
                for name, env in _SIDES.items()
            }
            try:
                for replica in replicas.values():
                    await replica.start()
                user_id = await seed_user(replicas["traced"].address)
                targets = {name: Target(r.address, user_id) for name, r in replicas.items()}
                results = await compare_rates(targets, bounds.load, bounds.rounds)
            finally:
                for replica in replicas.values():
                    await replica.stop()  # the traced one flushes its spans on SIGTERM
        await collector.stop()
    rates = {name: [r.rate for r in side] for name, side in results.items()}
    calls = sum(r.sent for r in results["traced"]) + 1  # + the seeding CreateUser
    sent = calls * SPANS_PER_CALL
    received = int(collector.last_json().get("spans", 0))
    return [
        _ratio_row("always_on + OTLP / SDK disabled", rates["traced"], rates["sdk_disabled"], True),
        _ratio_row("always_on + OTLP / always_off", rates["traced"], rates["always_off"], False),
        *(
            Row(
                "tracing",
                f"replica GetUser, {name}",
                median(values),
                "calls/s",
                detail={"rates": values},
            )
            for name, values in rates.items()
        ),
        Row(
            "tracing",
            "spans received / spans sent (traced)",
            received / sent,
            "x",
            "= 1.0",
            received == sent,
            {"received": received, "sent": sent, "calls": calls},
        ),
    ]
