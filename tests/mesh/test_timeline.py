"""mesh._timeline: the run's data as JSON and its PNG (matplotlib's Agg canvas, real files)."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mesh._timeline import MARK_KINDS, Mark, Sample, Timeline, replica_colour

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (checking the magic bytes first)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def failover_run() -> Timeline:
    """Three replicas at ~33 calls/s, users-1 killed at 20 s, back at 24 s, a fourth at 50 s."""
    timeline = Timeline(title="failover")
    for second in range(1, 61):
        t = float(second)
        names = ["users-0", "users-1", "users-2"] + (["users-3"] if t > 50 else [])
        rates = {name: 100 / len(names) for name in names}
        if 20 < t <= 24:
            rates = {"users-0": 50.0, "users-1": 0.0, "users-2": 50.0}
        timeline.sample(t, rates, 8.0 + (20 if t == 21 else 0), 1 if t == 21 else 0)
    timeline.mark(20, "kill", "SIGKILL users-1")
    timeline.mark(24, "ready", "users-1 ready")
    timeline.mark(50, "scale", "scale to 4")
    return timeline


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    timeline = failover_run()
    timeline.sample(61.0, {"users-0": 1.5}, None, 0)
    timeline.mark(70, "other", "note")
    path = timeline.save(tmp_path / "run.json")
    loaded = Timeline.load(path)
    assert loaded == timeline
    assert loaded.samples[-1].p99_ms is None
    assert json.loads(path.read_text())["version"] == 1


def test_load_rejects_what_is_not_a_timeline(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"version": 99, "samples": [], "marks": []}))
    with pytest.raises(ValueError, match="format"):
        Timeline.load(path)
    path.write_text(json.dumps({"version": 1, "samples": [{"t": 1}], "marks": []}))
    with pytest.raises(ValueError, match="malformed"):
        Timeline.load(path)
    path.write_text(json.dumps({"version": 1, "samples": [], "marks": [{"t": 1, "kind": "x"}]}))
    with pytest.raises(ValueError, match="malformed"):
        Timeline.load(path)


def test_replicas_are_in_natural_order() -> None:
    timeline = Timeline()
    timeline.sample(1, {"users-10": 1, "users-2": 1}, 1.0, 0)
    timeline.sample(2, {"users-0": 1}, 1.0, 0)
    assert timeline.replicas() == ["users-0", "users-2", "users-10"]


def test_colours_are_stable_by_name() -> None:
    colours = [replica_colour(f"users-{n}") for n in range(10)]
    assert len(set(colours)) == 10
    assert replica_colour("users-3") == replica_colour("users-3") == "C3"
    assert replica_colour("other") == replica_colour("other")


@pytest.mark.parametrize("kind", MARK_KINDS)
def test_every_mark_kind_is_accepted(kind: str) -> None:
    assert Timeline().mark(1.0, kind, "x") == Mark(1.0, kind, "x")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Mark(1.0, "explode", "x"), "kind"),
        (lambda: Mark(-1.0, "kill", "x"), "time"),
        (lambda: Sample(math.nan, {}, None, 0), "time"),
        (lambda: Sample(1.0, {"a": -1.0}, None, 0), "rates"),
        (lambda: Sample(1.0, {"a": math.inf}, None, 0), "rates"),
        (lambda: Sample(1.0, {}, -2.0, 0), "p99"),
        (lambda: Sample(1.0, {}, None, -1), "failures"),
    ],
)
def test_bad_values_are_rejected(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_a_sample_keeps_its_own_copy_of_the_rates() -> None:
    rates = {"users-0": 1.0}
    sample = Timeline().sample(1.0, rates, None, 0)
    rates["users-0"] = 5.0
    assert sample.rates == {"users-0": 1.0}


def test_render_a_realistic_run(tmp_path: Path) -> None:
    path = failover_run().render_png(tmp_path / "run.png", title="SIGKILL at 20 s")
    assert png_size(path) == (1100, 700)
    assert path.stat().st_size > 20_000


@pytest.mark.parametrize(
    "fill",
    [
        lambda t: None,  # empty
        lambda t: t.sample(1.0, {"users-0": 3.0}, 2.0, 0),  # one sample
        lambda t: [  # many replicas
            t.sample(float(s), {f"users-{n}": float(n) for n in range(14)}, 1.0, s % 3)
            for s in range(1, 20)
        ],
        lambda t: t.sample(1.0, {}, None, 0),  # a sample without any call
        lambda t: (  # marks outside the sampled range, before and after
            t.sample(10.0, {"users-0": 3.0}, 2.0, 0),
            t.sample(11.0, {"users-0": 3.0}, 2.0, 0),
            t.mark(0.0, "restart", "early"),
            t.mark(99.0, "graceful", "late"),
        ),
        lambda t: t.mark(5.0, "kill", "only a mark"),
    ],
    ids=["empty", "one-sample", "many-replicas", "no-calls", "marks-outside", "marks-only"],
)
def test_render_writes_a_png_whatever_the_data(
    tmp_path: Path, fill: Callable[[Timeline], object]
) -> None:
    timeline = Timeline()
    fill(timeline)
    path = timeline.render_png(tmp_path / "t.png")
    assert png_size(path) == (1100, 700)


def test_importing_mesh_does_not_import_matplotlib() -> None:
    code = "import sys, mesh, mesh._timeline; print('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "False"
