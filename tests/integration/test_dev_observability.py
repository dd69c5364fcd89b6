"""What `rung dev`'s real worker processes write for a run, read back through the
emulator's AWS APIs as on AWS (docs/observability.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from rung._aws import sessions
from rung._dev import DevStack
from tests.integration.test_dev_processes import dev_options, effects

pytestmark = pytest.mark.slow


def _segments(endpoint: str, trace_id: str) -> list[dict[str, Any]]:
    xray = sessions.client("xray", endpoint, "us-east-1")
    out = xray.batch_get_traces(TraceIds=[trace_id])
    return [json.loads(s["Document"]) for t in out["Traces"] for s in t["Segments"]]


@pytest.mark.timeout(300)
def test_a_run_on_rung_dev_has_one_trace_across_its_invocations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    effects_file = tmp_path / "effects.log"
    monkeypatch.setenv("RUNG_TEST_EFFECTS", str(effects_file))
    with DevStack(dev_options(tmp_path)) as dev:
        handle = dev.client.trigger("traced", {"seconds": 2})
        run = dev.wait(handle.run_id, timeout=120)
        assert run.trace_id is not None
        deadline = time.monotonic() + 30  # the last segments follow the run's end
        segments = _segments(dev.endpoint_url, run.trace_id)
        while time.monotonic() < deadline and not any(
            s["annotations"].get("rung_status") == "completed" for s in segments
        ):
            time.sleep(0.2)
            segments = _segments(dev.endpoint_url, run.trace_id)

    assert run.status == "COMPLETED" and run.output == "last"
    assert {s["trace_id"] for s in segments} == {run.trace_id}
    assert {s["annotations"]["rung_run_id"] for s in segments} == {run.run_id}
    attempts = sorted(
        (s for s in segments if "rung_attempt" in s["annotations"] and "type" not in s),
        key=lambda s: s["start_time"],
    )
    assert [
        (a["annotations"]["rung_attempt"], a["annotations"]["rung_status"]) for a in attempts
    ] == [
        (1, "retrying"),
        (2, "waiting"),
        (2, "completed"),
    ]
    steps = [s for a in attempts for s in a["subsegments"]]
    assert [s["name"] for s in steps] == [
        "step /first#1", "step /flaky#1", "step /flaky#1", "step /last#1",
    ]  # fmt: skip
    assert steps[1]["cause"]["exceptions"][0]["type"] == "ConnectionError"
    [wait] = [s for s in segments if s.get("type") == "subsegment"]
    assert wait["name"] == "wait /wait#1" and wait["metadata"]["rung"]["ended"] == "elapsed"
    runs = [s for s in segments if "rung_attempt" not in s["annotations"]]
    assert {r["annotations"].get("rung_status") for r in runs} >= {"COMPLETED"}
    counts = effects(effects_file)
    assert counts[(run.run_id, "/flaky#1")] == 1 and counts[(run.run_id, "/last#1")] == 1
