"""``python -m mesh demo`` (``make demo``): failover you can watch, in about a minute and a half.

The demo brings a mesh up, seeds users and runs the load generator with its
live view through a :class:`~client.UserClient` that exports spans to the
mesh. On a schedule it SIGKILLs one replica, later restarts another
gracefully and scales up by one. At the end it prints the load summary, how
traffic moved at each event, the waterfall of a trace that needed a retry (or,
when no call was retried, of one that sent a hedge), and where the timeline
picture is. It exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from rich.console import Console

from client import LoadConfig, LoadSnapshot, LoadSummary, UserClient, mint_token, run_load
from client._live import LiveView, PlainProgress, render_summary
from client._tls import tls_from_env
from mesh._config import MeshConfig, user_otlp_endpoint
from mesh._recorder import DemoRecorder
from mesh._state import STATE_DIR_VARIABLE, StateDir
from mesh._supervisor import Mesh, MeshEvent

__all__ = ["DemoPlan", "DemoResult", "Step", "run_demo", "run_demo_command"]

#: The demo's own state directory inside the default one, so a `mesh up` there is untouched.
DEMO_STATE_DIR = Path(".mesh") / "demo"
#: Files of an earlier demo run that a new one replaces.
_PREVIOUS_RUN = ("users.db", "users.db-wal", "users.db-shm", "spans.jsonl", "spans.jsonl.1",
                 "timeline.json", "timeline.png", "status.json")  # fmt: skip
_MIX = (("get", 80), ("create", 10), ("list", 10))
_CONCURRENCY = 16
_SEED_USERS = 50
# Replica spans leave on a 0.5 s batch schedule; give the last ones time to arrive.
_SPAN_SETTLE_S = 1.5
#: Milliseconds of work each call holds in the service by default (MESH_FAULT_DELAY), as a real
#: service spends them in its database: at 100 calls/s about two calls are in flight, so a
#: SIGKILL catches some and the client's retries show. 0 makes calls take a couple of ms.
DEFAULT_WORK_MS = 20.0


@dataclass(frozen=True, slots=True)
class Step:
    """One scheduled action: at ``at`` seconds into the load, do ``kind`` to ``replica``."""

    at: float
    kind: str  # "kill", "graceful" or "scale"
    replica: str = ""


@dataclass(frozen=True, slots=True)
class DemoResult:
    """How a demo run went: its exit code, the load summary and what the recorder saw."""

    code: int
    summary: LoadSummary
    recorder: DemoRecorder


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """What the demo does when, scaled to its duration."""

    duration: float
    replicas: int
    steps: tuple[Step, ...] = field(default=())

    @classmethod
    def for_run(cls, duration: float, replicas: int) -> DemoPlan:
        """SIGKILL at a quarter, a graceful restart at half, scale up by one at 70 %."""
        victims = [f"users-{n}" for n in range(replicas)]
        killed = victims[1 % len(victims)] if victims else ""
        restarted = victims[2 % len(victims)] if victims else ""
        steps = (
            Step(round(duration * 0.25, 1), "kill", killed),
            Step(round(duration * 0.50, 1), "graceful", restarted),
            Step(round(duration * 0.70, 1), "scale"),
        )
        return cls(duration, replicas, steps if victims else steps[2:])


async def run_demo_command(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    """``python -m mesh demo``: the exit code (1 when a call failed, 130 when interrupted)."""
    root = Path(args.state_dir) if args.state_dir else _default_dir()
    console = Console(file=out, soft_wrap=False, highlight=False)
    live = not args.no_live and out.isatty()
    plan = DemoPlan.for_run(args.duration, args.replicas)
    task = asyncio.current_task()
    assert task is not None
    with _cancel_on_signals(task):
        try:
            result = await run_demo(
                plan,
                StateDir(root.resolve()),
                console,
                live=live,
                rps=args.rps,
                seed=args.seed,
                work_ms=args.work_ms,
                tls=getattr(args, "tls", "off"),
            )
        except asyncio.CancelledError:
            console.print("interrupted: the mesh was stopped; nothing is left running")
            return 130
    return result.code


def _default_dir() -> Path:
    configured = os.environ.get(STATE_DIR_VARIABLE)
    return Path(configured) / "demo" if configured else DEMO_STATE_DIR


@contextlib.contextmanager
def _cancel_on_signals(task: asyncio.Task[Any]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _fresh(state: StateDir) -> None:
    state.create()
    for name in _PREVIOUS_RUN:
        with contextlib.suppress(FileNotFoundError):
            (state.root / name).unlink()


async def run_demo(
    plan: DemoPlan,
    state: StateDir,
    console: Console,
    *,
    live: bool,
    rps: float = 100.0,
    seed: int | None = None,
    work_ms: float = DEFAULT_WORK_MS,
    tls: str = "off",
) -> DemoResult:
    """Run the demo of ``plan`` in ``state``; its result (code 0 when no call failed).

    ``tls`` is the mesh's TLS mode (``MeshConfig.tls``); the load's client dials with it.
    """
    _fresh(state)
    config = MeshConfig(
        state_dir=state.root,
        replicas=plan.replicas,
        port=0,
        scrape_interval=0,  # the load generator's own view feeds the timeline
        forward_to=user_otlp_endpoint(),
        extra_env={"MESH_FAULT_DELAY": str(work_ms / 1000)} if work_ms > 0 else {},
        tls=tls,
    )
    console.print(f"[bold]1. mesh up[/]: {plan.replicas} replicas of the user service, DNS, traces")
    async with Mesh(config) as mesh:
        mesh.timeline.title = "mesh demo"
        console.print(_mesh_lines(mesh))
        recorder = DemoRecorder(mesh, plan)
        announcing = True

        def announce(event: MeshEvent) -> None:
            if announcing and recorder.started.is_set():
                _announce(console, event)

        mesh.subscribe(announce)
        summary = await _load(mesh, plan, recorder, console, live=live, rps=rps, seed=seed)
        announcing = False
        await asyncio.sleep(_SPAN_SETTLE_S)
        code = _report(console, mesh, summary, recorder)
    console.print(f"\nthe mesh is down; timeline picture: [bold]{state.timeline_png}[/]")
    return DemoResult(code, summary, recorder)


def _mesh_lines(mesh: Mesh) -> str:
    rows = [f"   target {mesh.target}", f"   traces {mesh.otlp_endpoint} (kept in the state dir)"]
    rows += [f"   {r.name} {r.address} pid {r.pid} {r.state.value}" for r in mesh.replicas]
    return "\n".join(rows)


def _announce(console: Console, event: MeshEvent) -> None:
    """One line per mesh event, timed like the live view's endpoint events."""
    style = {"kill": "bold red", "graceful": "bold yellow", "scale": "bold blue"}.get(event.kind)
    if style is None and event.kind not in ("ready", "unready"):
        return
    who = f"{event.replica} " if event.replica else ""
    console.print(f"[{style or 'dim'}]{event.t:7.1f}s  mesh: {who}{event.text}[/]")


async def _load(
    mesh: Mesh,
    plan: DemoPlan,
    recorder: DemoRecorder,
    console: Console,
    *,
    live: bool,
    rps: float,
    seed: int | None,
) -> LoadSummary:
    provider = _tracer_provider(mesh.otlp_endpoint)
    token = mint_token(mesh.secret, "demo", ["admin"], plan.duration + 600)
    load = LoadConfig(
        duration=plan.duration,
        rps=rps,
        concurrency=_CONCURRENCY,
        mix=_MIX,
        seed_users=_SEED_USERS,
        seed=seed,
        policy="least_conn",
    )
    label = recorder.label
    console.print(
        f"\n[bold]2. load[/]: {rps:g} calls/s for {plan.duration:g} s "
        f"({', '.join(f'{n} {w}%' for n, w in _MIX)}), least_conn; "
        + "; ".join(f"{s.kind} {s.replica} at {s.at:g} s".replace("  ", " ") for s in plan.steps)
    )
    try:
        tls = tls_from_env(mesh.tls_client_env())
        async with UserClient(
            mesh.target, token=token, tracer_provider=provider, tls=tls
        ) as client:
            view = LiveView(console, label=label) if live else None
            show = (
                view.update
                if view is not None
                else PlainProgress(cast(TextIO, console.file), interval=2.0, label=label).update
            )

            def on_tick(snapshot: LoadSnapshot) -> None:
                recorder.tick(snapshot)
                show(snapshot)

            actions = asyncio.create_task(_act(mesh, plan, recorder), name="demo-actions")
            try:
                with view if view is not None else contextlib.nullcontext():
                    summary = await run_load(client, load, on_tick)
            finally:
                actions.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await actions
            return summary
    finally:
        # The exporter is synchronous and the receiver answers on this loop: flush off it.
        await asyncio.to_thread(provider.shutdown)


def _tracer_provider(endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource({"service.name": "meshdemo-loadgen"}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


async def _act(mesh: Mesh, plan: DemoPlan, recorder: DemoRecorder) -> None:
    """Carry out the plan's steps at their times (run time of the load, after seeding)."""
    await recorder.started.wait()
    for step in plan.steps:
        await asyncio.sleep(max(0.0, step.at - recorder.elapsed()))
        if step.kind == "scale":
            await mesh.scale(len(mesh.replicas) + 1)
        else:
            mesh.kill(step.replica, graceful=step.kind == "graceful")


def _report(console: Console, mesh: Mesh, summary: LoadSummary, recorder: DemoRecorder) -> int:
    console.print("\n[bold]3. summary[/]")
    console.print(render_summary(summary, label=recorder.label))
    console.print(recorder.render(summary))
    names = {r.address: r.name for r in mesh.replicas}
    heading, waterfall = _waterfall(mesh.state.root, names)
    console.print(f"\n[bold]4. {heading}[/]")
    console.print(waterfall, markup=False)
    if summary.failed:
        console.print(f"\n[bold red]{summary.failed} calls failed[/]")
        return 1
    console.print(f"\n[bold green]0 failed calls[/] out of {summary.calls}")
    return 0


#: Said under a waterfall with a hedge (the rows alone do not say what one is).
_HEDGE_NOTE = (
    "A hedge is a copy of the call sent to another replica when the first copy had no\n"
    "answer after the hedge delay, or had failed; the first answer wins and the other\n"
    "copies are cancelled (CANCELLED)."
)


def _waterfall(root: Path, names: dict[str, str]) -> tuple[str, str]:
    """The heading and the body of the demo's trace: the newest trace with a retry,
    else the newest with a hedge (hedged calls recover by a hedge, not a retry)."""
    from mesh._spans import find_trace, has_hedge, has_retry, recent_traces, summarize
    from mesh._waterfall import render_waterfall

    trace = find_trace(root, has_retry, has_hedge)
    if trace is None:
        heading = "a trace that needed a retry or a hedge"
        if not recent_traces(root, limit=1):
            return heading, "no trace reached the receiver"
        return heading, (
            "no call needed a retry or a hedge this run; see `python -m mesh traces` for the others"
        )
    summary = summarize(trace)
    heading = "a trace that needed a retry" if summary.retries else "a trace with a hedge"
    body = render_waterfall(trace, names=names)
    return heading, f"{body}\n{_HEDGE_NOTE}" if summary.hedges else body
