"""The frozen config: precedence, conversion and every validator."""

from __future__ import annotations

import dataclasses

import pytest

from service.config import ConfigError, ServiceConfig, load_config


def test_flags_beat_variables_beat_defaults() -> None:
    config = load_config(["--port", "7"], {"MESH_PORT": "8", "MESH_HOST": "127.0.0.9"})
    assert config.port == 7
    assert config.host == "127.0.0.9"
    assert config.store == "sqlite:///meshdemo.db"


def test_booleans_from_variables_and_flags() -> None:
    assert load_config([], {"MESH_AUTH_DISABLED": "true"}).auth_disabled
    assert load_config(["--no-auth"], {}).auth_disabled
    assert not load_config(["--no-reflection"], {}).reflection
    with pytest.raises(ConfigError, match="MESH_REFLECTION"):
        load_config([], {"MESH_REFLECTION": "maybe"})


def test_config_is_frozen_and_hides_the_secret() -> None:
    config = load_config([], {"MESH_AUTH_SECRET": "s3cret"})
    assert "s3cret" not in repr(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 65536),
        ("port", -1),
        ("metrics_port", -2),
        ("store", "mysql://x"),
        ("drain_delay", -1.0),
        ("shutdown_grace", -0.1),
        ("max_connection_age", -5.0),
        ("keepalive_min_ping_interval", 0.5),
        ("max_concurrent_rpcs", 0),
        ("health_interval", 0.0),
        ("log_level", "LOUD"),
    ],
)
def test_each_validator_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        ServiceConfig(**{field: value})  # type: ignore[arg-type]


def test_unparsable_variable_names_it() -> None:
    with pytest.raises(ConfigError, match="MESH_PORT"):
        load_config([], {"MESH_PORT": "eighty"})


def test_secret_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "secret"
    path.write_text("from-file\n")
    assert load_config([], {"MESH_AUTH_SECRET_FILE": str(path)}).jwt_secret() == "from-file"
    with pytest.raises(ConfigError):
        load_config([], {"MESH_AUTH_SECRET_FILE": str(path) + ".missing"}).jwt_secret()
