"""``load``: bounded load with a live view and a summary; its options come from LoadConfig.

Every :class:`~client._load.LoadConfig` field declares its flag, help, bounds and
default once (``client/_load.py``); :func:`add_load_options` turns them into
options here, so the command and the engine cannot disagree. The fields whose
flag is a connection option (``--timeout``, ``--policy``) are read from there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import grpc
from rich.console import Console

from client._client import UserClient
from client._live import LiveView, PlainProgress, render_summary
from client._load import LoadConfig, LoadSnapshot, LoadSummary, flag_of, run_load
from client.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    SETUP_GRACE_S,
    Io,
    UsageError,
    add_command,
    exit_code_for,
    run_with_client,
)

NAME = "load"


def _dest(setting: dataclasses.Field[Any]) -> str:
    return flag_of(setting).lstrip("-").replace("-", "_")


def _converter(setting: dataclasses.Field[Any]) -> Callable[[str], Any]:
    """The option's ``type``: the field's parser, then its bounds (the engine's own check)."""
    parse = setting.metadata["parse"]
    bounds = setting.metadata["bounds"]

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        problem = "" if bounds is None else bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _help(setting: dataclasses.Field[Any]) -> str:
    text = setting.metadata["help"]
    if setting.metadata["bounds"] is not None:
        text += f"; {setting.metadata['bounds'].text()}"
    if setting.default is dataclasses.MISSING:
        return f"{text} (required)"
    shown = setting.metadata["default_text"] or str(setting.default)
    return f"{text} (default: {shown.replace('%', '%%')})"


def add_load_options(cmd: argparse.ArgumentParser) -> None:
    """One option per :class:`LoadConfig` field, except those of the connection options."""
    group = cmd.add_argument_group("load (the engine's settings)")
    for setting in dataclasses.fields(LoadConfig):
        if setting.metadata["shared"]:
            continue
        required = setting.default is dataclasses.MISSING
        group.add_argument(
            flag_of(setting),
            dest=_dest(setting),
            type=_converter(setting),
            required=required,
            default=None if required else setting.default,
            metavar=setting.metadata["metavar"],
            help=_help(setting),
        )


def add_parser(commands: Any, parent: argparse.ArgumentParser) -> None:
    cmd = add_command(
        commands,
        NAME,
        parent,
        "generate bounded load and show it live; print a summary at the end",
        epilog_extra="--timeout is the deadline of each operation; the whole command ends\n"
        "within the seeding (a --timeout per 500 users), --duration and a drain of\n"
        "--timeout + 1 s. With --rps the load is an open loop: calls are scheduled at\n"
        "the rate whatever the server does, and calls that start late (all workers\n"
        "busy) are counted as late. Without it, a closed loop.\n\n"
        "While it runs: a live view when stdout is a terminal (rate and share per\n"
        "endpoint, its state, an event line for each endpoint lost, ejected,\n"
        "re-admitted, draining, added or removed); otherwise plain lines on stderr\n"
        "(the same events as they happen, figures per endpoint each interval).\n"
        "At the end: a human summary on stdout (calls, latency per operation, per\n"
        "endpoint calls, failures, ejections and final state, the seed); with --json\n"
        "the summary JSON on one line instead. --summary FILE also writes the JSON.\n"
        "Ctrl-C stops the run: the summary of what finished, then exit 130.",
    )
    add_load_options(cmd)
    cmd.add_argument(
        "--summary",
        default=None,
        metavar="FILE",
        help="write the summary JSON to FILE (default: none; --json prints it on stdout)",
    )
    cmd.add_argument(
        "--no-live",
        action="store_true",
        help="plain progress lines on stderr instead of the live view "
        "(default: live view when stdout is a terminal)",
    )


def load_config(args: argparse.Namespace) -> LoadConfig:
    """The engine's configuration from parsed options (connection options included)."""
    values = {s.name: getattr(args, _dest(s)) for s in dataclasses.fields(LoadConfig)}
    try:
        return LoadConfig(**values)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def budget(args: argparse.Namespace) -> float:
    """The run's longest (seeding, duration, drain), plus the set-up grace."""
    return load_config(args).longest + SETUP_GRACE_S


def _load_exit(summary: LoadSummary) -> int:
    """130 after Ctrl-C; else 0 when any call succeeded, or the code of the commonest error."""
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.ok or not summary.failed:
        return EXIT_OK
    commonest = max(summary.errors_by_code.items(), key=lambda item: item[1])[0]
    code = grpc.StatusCode.__members__.get(commonest, grpc.StatusCode.UNKNOWN)
    return exit_code_for(code)


def _live_console(args: argparse.Namespace, io: Io) -> Console | None:
    """The terminal console the live view draws on; None for plain lines."""
    if args.no_live or not io.stdout.isatty():
        return None
    return Console(file=io.stdout)


@contextlib.contextmanager
def _reporter(
    args: argparse.Namespace, io: Io, console: Console | None
) -> Iterator[Callable[[LoadSnapshot], None]]:
    if console is None:
        yield PlainProgress(io.stderr, interval=max(args.refresh, 1.0)).update
        return
    with LiveView(console) as view:
        yield view.update


def _open_summary(path: str | None) -> TextIO | None:
    if path is None:
        return None
    try:
        return open(path, "w", encoding="utf-8")  # closed by the caller
    except OSError as exc:
        raise UsageError(f"cannot write --summary {path}: {exc.strerror or exc}") from exc


async def _load_until_stopped(
    client: UserClient, config: LoadConfig, on_tick: Callable[[LoadSnapshot], None]
) -> LoadSummary:
    """Run the load; Ctrl-C or the deadline (this task cancelled) stops it and returns
    the partial summary."""
    stop = asyncio.Event()
    running = asyncio.create_task(run_load(client, config, on_tick, stop=stop), name="load")
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        # The run ends promptly once stopped: running operations are cancelled.
        stop.set()
        summary = await running
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()  # handled here: the command ends with exit code 130 (or 3)
        return summary


def _print_summary(
    summary: LoadSummary, args: argparse.Namespace, io: Io, console: Console | None
) -> None:
    if args.json:
        io.out(json.dumps(summary.as_dict()))
        return
    (console or Console(file=io.stdout, width=80)).print(render_summary(summary))


async def _load(args: argparse.Namespace, client: UserClient, io: Io) -> int:
    config = load_config(args)
    summary_file = _open_summary(args.summary)
    console = _live_console(args, io)
    try:
        with _reporter(args, io, console) as on_tick:
            summary = await _load_until_stopped(client, config, on_tick)
        if summary_file is not None:
            json.dump(summary.as_dict(), summary_file, indent=2)
            summary_file.write("\n")
    finally:
        if summary_file is not None:
            summary_file.close()
    _print_summary(summary, args, io, console)
    if summary.interrupted and not io.deadline.expired:
        io.err("interrupted: the summary counts the operations that finished")
    return _load_exit(summary)


async def run(args: argparse.Namespace, io: Io) -> int:
    return await run_with_client(args, io, _load)
