"""``python -m mesh``: run the local mesh and act on it from other terminals.

``up`` and ``demo`` run in the foreground; every other command talks to the
supervisor of the state directory (``--state-dir``, ``MESH_STATE_DIR`` or
``.mesh``) through its control socket, or reads the files it keeps there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from mesh._config import DEFAULT_NAME, MAX_REPLICAS, MeshConfig, user_otlp_endpoint
from mesh._control import ControlError, request
from mesh._state import STATE_DIR_VARIABLE, StateDir, pid_alive, resolve_state_dir

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Lifetime of the token ``mesh env`` mints: a working day.
_TOKEN_TTL = 12 * 3600.0


class UsageError(Exception):
    """A command that cannot run as given (exit code 2)."""


# --- the parser ----------------------------------------------------------------------------


def _int_from(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


_replicas = _int_from(0, MAX_REPLICAS)
_port = _int_from(0, 65535)


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _state_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--state-dir",
        metavar="DIR",
        default=None,
        help=f"the mesh's state directory (default: ${STATE_DIR_VARIABLE}, else .mesh)",
    )
    return parent


def _add_up(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser(
        "up",
        parents=[parent],
        help="run the mesh in the foreground (Ctrl-C drains and stops it)",
        description="Start replicas users-0, users-1, ... of `python -m service` on 127.0.0.2, "
        "127.0.0.3, ..., a DNS server publishing the SERVING ones and an OTLP trace receiver; "
        "restart replicas that exit. Ctrl-C or SIGTERM drains and stops everything (a second "
        "Ctrl-C skips the drain delay).",
    )
    cmd.add_argument(
        "--replicas", type=_replicas, default=3, metavar="N", help="replicas (default: 3)"
    )
    cmd.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="the store every replica shares: sqlite:///FILE or postgresql://... "
        "(default: a SQLite file in the state directory)",
    )
    cmd.add_argument(
        "--port",
        type=_port,
        default=50051,
        metavar="P",
        help="the port each replica binds on its own address; 0 picks a free one (default: 50051)",
    )
    cmd.add_argument(
        "--dns-port",
        type=_port,
        default=0,
        metavar="P",
        help="UDP port of the DNS server on 127.0.0.1 (default: a free one)",
    )
    cmd.add_argument(
        "--drain-delay",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="MESH_DRAIN_DELAY of the replicas: NOT_SERVING to stop on SIGTERM (default: 2)",
    )
    _add_tls_options(cmd)


def _add_tls_options(cmd: argparse.ArgumentParser) -> None:
    group = cmd.add_mutually_exclusive_group()
    group.add_argument(
        "--tls",
        dest="tls",
        action="store_const",
        const="on",
        default="off",
        help="replicas serve TLS with a development CA issued into STATE_DIR/tls at start; "
        "the client verifies them against it (`mesh env` prints MESH_TLS_CA_FILE) "
        "(default: plain text)",
    )
    group.add_argument(
        "--mtls",
        dest="tls",
        action="store_const",
        const="mutual",
        help="as --tls, and replicas require client certificates from that CA (mutual TLS; "
        "`mesh env` prints MESH_TLS_CLIENT_CERT_FILE and MESH_TLS_CLIENT_KEY_FILE too)",
    )


def _add_demo(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser(
        "demo",
        parents=[parent],
        help="the narrated demo: load, a SIGKILL, a graceful restart, a scale-up, a summary",
        description="Bring a mesh up, seed users and run the load generator with its live view; "
        "SIGKILL one replica, later restart another gracefully and scale up by one; then print "
        "the summary, the waterfall of a trace with a retry (else of one with a hedge), and "
        "the timeline picture's path. "
        "Exits 1 if any call failed. Leaves nothing running.",
    )
    cmd.add_argument(
        "--duration",
        type=_seconds,
        default=90.0,
        metavar="SECONDS",
        help="seconds of load (default: 90)",
    )
    cmd.add_argument(
        "--replicas", type=_replicas, default=3, metavar="N", help="replicas (default: 3)"
    )
    cmd.add_argument(
        "--rps", type=_seconds, default=100.0, help="calls per second offered (default: 100)"
    )
    cmd.add_argument("--seed", type=int, default=None, help="seed of the load (default: random)")
    cmd.add_argument(
        "--work-ms",
        type=float,
        default=20.0,
        metavar="MS",
        help="work each call holds in the service (MESH_FAULT_DELAY), so that a kill catches "
        "calls in flight as it would in a busy cluster; 0 for bare calls (default: 20)",
    )
    cmd.add_argument(
        "--no-live",
        action="store_true",
        help="plain lines instead of the live view (default: live view on a terminal)",
    )
    _add_tls_options(cmd)


def _add_commands(commands: Any, parent: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status", parents=[parent], help="replicas, their state and restarts, DNS records"
    )
    status.add_argument("--json", action="store_true", help="the status as one JSON document")
    kill = commands.add_parser(
        "kill",
        parents=[parent],
        help="SIGKILL a replica (SIGTERM with --graceful); it is restarted",
    )
    kill.add_argument("replica", help="a replica name (users-1) or `random`")
    kill.add_argument(
        "--graceful", action="store_true", help="SIGTERM: drain, then exit (default: SIGKILL)"
    )
    scale = commands.add_parser(
        "scale", parents=[parent], help="run N replicas (the highest ordinals go first)"
    )
    scale.add_argument("replicas", type=_replicas, metavar="N", help="replicas wanted")
    traces = commands.add_parser(
        "traces",
        parents=[parent],
        help="recent traces; with an id (or its prefix), that trace as a waterfall",
    )
    traces.add_argument("trace_id", nargs="?", default=None, metavar="TRACE_ID")
    traces.add_argument(
        "--limit", type=_replicas, default=20, metavar="N", help="traces listed (default: 20)"
    )
    commands.add_parser(
        "env",
        parents=[parent],
        help="print `export MESH_TARGET=... MESH_TOKEN=...` (and MESH_TLS_* under --tls "
        'or --mtls): eval "$(python -m mesh env)"',
    )
    down = commands.add_parser("down", parents=[parent], help="drain and stop the running mesh")
    down.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for it to stop (default: 60)",
    )
    commands.add_parser(
        "tour",
        parents=[parent],
        help="one replica, every RPC narrated (no mesh; the old `client.demo`)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m mesh`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m mesh",
        description="The local mesh: replicas of the user service on 127.0.0.x, DNS of the "
        "ready ones, traces, restarts and failover on a laptop, with no cluster.",
        epilog=f"The DNS name is {DEFAULT_NAME}. Tracing: spans go to the mesh's own OTLP "
        "receiver and are kept in the state directory; when OTEL_EXPORTER_OTLP_ENDPOINT is "
        "set (a Jaeger on this machine), they are forwarded there too.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = _state_option()
    _add_up(commands, parent)
    _add_commands(commands, parent)
    _add_demo(commands, parent)
    return parser


# --- commands that talk to the supervisor --------------------------------------------------


def _socket(state: StateDir) -> Path:
    info = state.running_supervisor()
    if info is None:
        raise ControlError(
            f"no mesh is running in {state.root} (start one with `python -m mesh up`)"
        )
    return Path(str(info.get("socket") or state.control_socket()))


async def _call(state: StateDir, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
    return await request(_socket(state), command, arguments)


async def _cmd_status(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    status = await _call(state, "status")
    if args.json:
        print(json.dumps(status, indent=2), file=out)
    else:
        print(format_status(status), file=out)
    return EXIT_OK


def format_status(status: Mapping[str, Any]) -> str:
    """The human form of ``mesh status``."""
    records = " ".join(status.get("records") or ()) or "(none)"
    lines = [
        f"mesh in {status['state_dir']}: {status['state']}, up {status['uptime_s']:.0f} s "
        f"(supervisor pid {status['supervisor_pid']})",
        f"target  {status['target']}",
        f"DNS     {status['name']} -> {records}  (TTL {status['ttl']} s, server {status['dns']})",
        f"store   {status['store']}",
        f"tls     {_tls_line(status)}",
        f"traces  {status['otlp']}"
        + (f" (forwarded to {status['forward_to']})" if status.get("forward_to") else ""),
        "",
        f"{'NAME':<10} {'ADDRESS':<22} {'PID':>7}  {'STATE':<12} {'RESTARTS':>8}",
    ]
    for replica in status["replicas"]:
        pid = replica["pid"] if replica["pid"] is not None else "-"
        lines.append(
            f"{replica['name']:<10} {replica['address']:<22} {pid!s:>7}  "
            f"{replica['state']:<12} {replica['restarts']:>8}"
        )
    return "\n".join(lines)


def _tls_line(status: Mapping[str, Any]) -> str:
    mode = status.get("tls", "off")
    ca = status.get("tls_client_env", {}).get("MESH_TLS_CA_FILE")
    return {"on": f"on (CA {ca})", "mutual": f"mutual (CA {ca}; clients need a certificate)"}.get(
        mode, "off (plain text)"
    )


async def _cmd_kill(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    result = await _call(state, "kill", {"replica": args.replica, "graceful": args.graceful})
    print(f"{result['signal']} {result['replica']} (pid {result['pid']})", file=out)
    return EXIT_OK


async def _cmd_scale(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    result = await _call(state, "scale", {"replicas": args.replicas})
    print(f"scaled from {result['from']} to {result['to']} replicas", file=out)
    return EXIT_OK


async def _cmd_env(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    from client import mint_token

    status = await _call(state, "status")
    token = mint_token(state.secret(), "mesh-dev", ["admin"], _TOKEN_TTL)
    exports = {
        "MESH_TARGET": status["target"],
        "MESH_TOKEN": token,
        "OTEL_EXPORTER_OTLP_ENDPOINT": status["otlp"],
        **status.get("tls_client_env", {}),
    }
    print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items()), file=out)
    return EXIT_OK


async def _cmd_down(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    result = await _call(state, "down")
    pid = int(result["pid"])
    print(f"draining and stopping the mesh (supervisor pid {pid})...", file=out, flush=True)
    deadline = time.monotonic() + args.timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise ControlError(f"the supervisor (pid {pid}) still runs after {args.timeout:g} s")
        await asyncio.sleep(0.1)
    print("stopped", file=out)
    return EXIT_OK


async def _cmd_traces(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    from mesh._spans import TraceLookupError, load_trace, recent_traces
    from mesh._waterfall import render_trace_list, render_waterfall

    if args.trace_id is None:
        summaries = recent_traces(state.root, limit=args.limit)
        if not summaries:
            print(f"no traces in {state.root} yet", file=out)
            return EXIT_OK
        print(render_trace_list(summaries), file=out)
        return EXIT_OK
    try:
        trace = load_trace(state.root, args.trace_id)
    except TraceLookupError as exc:
        raise UsageError(f"{exc} (in {state.root})") from exc
    print(render_waterfall(trace, names=_replica_names(state)), file=out)
    return EXIT_OK


def _replica_names(state: StateDir) -> dict[str, str]:
    """Replica names by address, from the last status the supervisor wrote."""
    status = state.read_json(state.status_file) or {}
    replicas = status.get("replicas")
    if not isinstance(replicas, list):
        return {}
    return {str(r.get("address")): str(r.get("name")) for r in replicas if isinstance(r, dict)}


# --- up --------------------------------------------------------------------------------------


def _mesh_config(args: argparse.Namespace, root: Path) -> MeshConfig:
    try:
        return MeshConfig(
            state_dir=root,
            replicas=args.replicas,
            store=args.store,
            port=args.port,
            dns_port=args.dns_port,
            drain_delay=args.drain_delay,
            forward_to=user_otlp_endpoint(),
            tls=args.tls,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _on_signals(first: Callable[[], None], again: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    seen = {"count": 0}

    def handler() -> None:
        seen["count"] += 1
        (first if seen["count"] == 1 else again)()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handler)


async def _cmd_up(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    from mesh._supervisor import Mesh

    mesh = Mesh(_mesh_config(args, state.root))
    _on_signals(mesh.request_stop, mesh.skip_drain)
    print(f"starting {args.replicas} replicas in {state.root} ...", file=out, flush=True)
    async with mesh:
        print(_banner(mesh), file=out, flush=True)
        await mesh.wait_stopped()
        print("draining and stopping ...", file=out, flush=True)
    print(f"stopped; timeline: {mesh.state.timeline_png}", file=out)
    return EXIT_OK


def _banner(mesh: Any) -> str:
    status = mesh.status()
    forward = f" (forwarded to {mesh.config.forward_to})" if mesh.config.forward_to else ""
    state_flag = (
        ""
        if mesh.state.root == resolve_state_dir(None)
        else f" --state-dir {shlex.quote(str(mesh.state.root))}"
    )
    return "\n".join(
        [
            format_status(status),
            f"spans   kept in {mesh.state.root / 'spans.jsonl'}{forward}",
            "",
            "In another terminal:",
            f'  eval "$(python -m mesh env{state_flag})"   # point the client CLI at the mesh',
            "  python -m client load --duration 30 --rps 100",
            f"  python -m mesh kill random{state_flag}      # SIGKILL a replica; it restarts",
            f"  python -m mesh traces{state_flag}           # recent traces; `traces ID` draws one",
            "Ctrl-C drains and stops everything.",
        ]
    )


# --- dispatch --------------------------------------------------------------------------------

_Command = Callable[[argparse.Namespace, StateDir, TextIO], Awaitable[int]]


async def _cmd_demo(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    from mesh._demo import run_demo_command  # the live view and the load engine: only here

    return await run_demo_command(args, state, out)


async def _cmd_tour(args: argparse.Namespace, state: StateDir, out: TextIO) -> int:
    from mesh._tour import run_tour_command

    return await run_tour_command(args, state, out)


_COMMANDS: Mapping[str, _Command] = {
    "up": _cmd_up,
    "status": _cmd_status,
    "kill": _cmd_kill,
    "scale": _cmd_scale,
    "env": _cmd_env,
    "down": _cmd_down,
    "traces": _cmd_traces,
    "demo": _cmd_demo,
    "tour": _cmd_tour,
}


def _configure_logging(command: str) -> None:
    # The supervisor narrates in plain lines on stderr; replicas log JSON to their files.
    level = logging.INFO if command == "up" else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("meshdemo.mesh")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


async def main_async(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run one command; the exit code."""
    stream = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.command)
    state = StateDir(resolve_state_dir(args.state_dir))
    try:
        return await _COMMANDS[args.command](args, state, stream)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m mesh`` entry point."""
    from mesh._supervisor import MeshError

    try:
        return asyncio.run(main_async(argv))
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
