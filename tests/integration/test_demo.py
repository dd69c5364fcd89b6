"""`make demo`: process-order on the embedded stack, from the user's point of view."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


def test_the_demo_shows_the_retry_resuming_at_the_charge_step(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "examples/orders.py", "--dev"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={
            "PATH": "/usr/bin:/bin",
            "RUNG_DEMO_STATE": str(tmp_path),
            "COLUMNS": "120",
            "HOME": str(tmp_path),
        },
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "fetch_order ran 1x, charge ran 2x (retry resumed at the charge step)" in out
    assert "card charged 1x" in out
    assert "resumes at /charge#1" in out  # rung runs trace, printed by the real CLI
    assert "RetryScheduled  in 1s" in out  # the live event lines of the dev console
    assert not (tmp_path / ".rung" / "emulator.json").exists()  # it shut everything down
