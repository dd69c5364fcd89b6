"""`rung dev` as a command, where it refuses to start (no processes are left behind)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import rung._dev
from rung._dev import worker_count, workers_for
from rung.cli import main

APP = "tests.integration.dev_app:app"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on (not an AWS emulator)."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def test_a_port_in_use_says_so_and_how_to_pick_another(busy_port: int, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["dev", "--app", APP, "--port", str(busy_port), "--state-dir", str(tmp_path / ".rung")],
    )

    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: port {busy_port} is in use; pass --port"), lines[0]
    assert not (tmp_path / ".rung" / "emulator.json").exists()


GiB = 1024**3


@pytest.mark.parametrize(
    ("cpus", "memory", "maximum", "expected"),
    [
        (2, 8 * GiB, 10, 2),  # two cores: two workers, not the template's ten
        (1, 8 * GiB, 10, 2),  # at least two: a blocked task does not stop the rest
        (16, 8 * GiB, 10, 10),  # never above the event source's MaximumConcurrency
        (16, 1 * GiB, 100, 4),  # memory: 256 MiB a worker process
        (8, None, 100, 8),  # memory unknown: by CPUs
    ],
)
def test_the_default_worker_count_is_what_the_machine_can_run(
    cpus: int, memory: int | None, maximum: int, expected: int
) -> None:
    assert workers_for(maximum, cpus, memory).count == expected


@pytest.mark.parametrize(
    ("cpus", "memory", "maximum", "reason"),
    [
        (2, 8 * GiB, 10, "2 for 2 CPU(s)"),
        (1, 8 * GiB, 10, "2 for 1 CPU(s) (at least 2)"),
        (16, 8 * GiB, 10, "10 for the event source's MaximumConcurrency 10"),
        (16, 1 * GiB, 100, "4 for 1.0 GiB of available memory at 256 MiB each"),
    ],
)
def test_the_default_worker_count_says_what_limited_it(
    cpus: int, memory: int, maximum: int, reason: str
) -> None:
    assert str(workers_for(maximum, cpus, memory)) == reason


def test_the_worker_count_message_names_memory_when_memory_limited_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This machine's CPUs and free memory cannot be chosen by a test: the two readings
    # are replaced (a machine with 16 CPUs and 1 GiB free), the rest is rung's own.
    monkeypatch.setattr(rung._dev, "_usable_cpus", lambda: 16)
    monkeypatch.setattr(rung._dev, "_available_memory", lambda: GiB)

    chosen = worker_count(maximum=100, requested=None)
    asked = worker_count(maximum=100, requested=3)
    capped = worker_count(maximum=2, requested=3)

    assert (chosen.count, str(chosen)) == (4, "4 for 1.0 GiB of available memory at 256 MiB each")
    assert "CPU" not in str(chosen)
    assert str(asked) == "3 for --workers"
    assert str(capped) == "2 for the event source's MaximumConcurrency 2 (--workers 3)"
