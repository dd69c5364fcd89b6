"""`rung dev` as a command, where it refuses to start (no processes are left behind)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

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
