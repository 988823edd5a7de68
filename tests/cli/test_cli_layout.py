"""The package's seams: load's options made from LoadConfig, connection options declared once."""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from typing import Any

import pytest

from client._load import DEFAULT_MIX, Bounds, LoadConfig, flag_of
from client.cli import COMMANDS, build_parser, hoist_connection_options
from client.cli._common import connection_parent
from client.cli.load import load_config

FIELDS = dataclasses.fields(LoadConfig)


def _load_parser() -> argparse.ArgumentParser:
    parser = build_parser({})
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    load: argparse.ArgumentParser = action.choices["load"]
    return load


def _options(parser: argparse.ArgumentParser) -> Counter[str]:
    return Counter(flag for action in parser._actions for flag in action.option_strings)


def test_every_load_config_field_has_exactly_one_flag() -> None:
    options = _options(_load_parser())
    flags = [flag_of(f) for f in FIELDS]
    assert len(set(flags)) == len(flags)
    for flag in flags:
        assert options[flag] == 1, flag
    # And the load command adds only its own two beyond them and the connection options.
    extra = set(options) - set(flags) - set(_options(connection_parent({})))
    assert extra == {"-h", "--help", "--summary", "--no-live"}


def test_cli_defaults_are_the_engine_defaults() -> None:
    args = _load_parser().parse_args(["--duration", "7"])
    config = load_config(args)
    assert config == LoadConfig(duration=7.0, policy="least_conn")
    assert config.seed_users == 10  # the engine's default, and the CLI's
    assert config.mix == DEFAULT_MIX


def test_shared_fields_come_from_the_connection_options() -> None:
    shared = {flag_of(f) for f in FIELDS if f.metadata["shared"]}
    assert shared == {"--timeout", "--policy"}
    args = _load_parser().parse_args(["--duration", "1", "--timeout", "2.5", "--policy", "random"])
    config = load_config(args)
    assert (config.call_timeout, config.policy) == (2.5, "random")


@pytest.mark.parametrize(
    "setting", [f for f in FIELDS if f.metadata["bounds"] is not None], ids=lambda f: f.name
)
def test_the_flag_and_the_engine_refuse_the_same_values(
    setting: dataclasses.Field[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    bounds: Bounds = setting.metadata["bounds"]
    assert bounds.low is not None
    below = bounds.low if bounds.low_open else bounds.low - 1
    kind = setting.metadata["parse"]
    with pytest.raises(ValueError, match=rf"^{setting.name} must be "):
        LoadConfig(**{"duration": 1.0, setting.name: kind(below)})
    if setting.metadata["shared"]:
        return
    with pytest.raises(SystemExit):
        _load_parser().parse_args(["--duration", "1", flag_of(setting), str(kind(below))])
    assert f"argument {flag_of(setting)}: must be {bounds.text()}" in capsys.readouterr().err
    if bounds.high is not None:
        with pytest.raises(ValueError, match=setting.name):
            LoadConfig(**{"duration": 1.0, setting.name: kind(bounds.high + 1)})


def test_help_shows_each_bound_and_default_once() -> None:
    text = " ".join(_load_parser().format_help().split())
    seed_users = "create N users before the run so gets hit real ids; in [0, 100000] (default: 10)"
    assert f"--seed-users N {seed_users}" in text
    assert "--duration SECONDS how long the load runs, in seconds; in (0, 86400] (required)" in text
    assert "(default: get=80,create=10,list=10)" in text


@pytest.mark.parametrize(
    ("bounds", "text"),
    [
        (Bounds(0, low_open=True), "positive"),
        (Bounds(0), "at least 0"),
        (Bounds(1, 1000), "in [1, 1000]"),
        (Bounds(0, 0.5, low_open=True), "in (0, 0.5]"),
    ],
)
def test_bounds_read_as_people_write_them(bounds: Bounds, text: str) -> None:
    assert bounds.text() == text
    assert bounds.problem(bounds.high or 1.0) == ""
    assert bounds.problem(-1) == f"must be {text}, got -1"


def test_every_connection_option_can_come_before_the_command() -> None:
    # Read from the one declaration: a flag added there is hoisted without another edit.
    for action in connection_parent({})._actions:
        for flag in action.option_strings:
            if flag in ("-h", "--help"):
                continue
            before = [flag] if action.nargs == 0 else [flag, "v"]
            assert hoist_connection_options([*before, "get", "u1"]) == ["get", *before, "u1"]


def test_each_command_module_names_itself() -> None:
    assert list(COMMANDS) == [
        "get", "create", "list", "batch", "chat", "token", "stats", "load", "chaos", "certs",
    ]  # fmt: skip
    for name, module in COMMANDS.items():
        assert name == module.NAME
