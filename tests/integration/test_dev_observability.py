"""What `rung dev`'s real worker processes write for a run, read back through the
emulator's AWS APIs as on AWS (docs/observability.md)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rung._aws import sessions
from rung._aws.logs import run_events
from rung._dev import DevStack
from rung.cli import main
from tests.integration.test_dev_processes import dev_options, effects, wait_for

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
        logs = sessions.client("logs", dev.endpoint_url, "us-east-1")
        group = dev.stack.outputs["WorkerLogGroupName"]
        lines = [e.fields for e in run_events(logs, group, run.run_id)]
        # Each worker process's lines are shipped on their own: wait for all of them.
        while time.monotonic() < deadline and (
            sum(line.get("message") == "calling upstream" for line in lines) < 2
            or sum("rung_event" in line for line in lines) < 6
        ):
            time.sleep(0.2)
            lines = [e.fields for e in run_events(logs, group, run.run_id)]
        # Lines are stamped when rung dev reads each process's pipe: in order within an
        # attempt (one process at a time), by attempt across processes.
        lines.sort(key=lambda line: int(line.get("attempt", 0)))

    # The task's own lines, one per attempt of the step, carry the run's keys.
    calls = [line for line in lines if line.get("message") == "calling upstream"]
    assert [(c["attempt"], c["step_id"], c["task"]) for c in calls] == [
        (1, "/flaky#1", "traced"),
        (2, "/flaky#1", "traced"),
    ]
    assert all(c["run_id"] == run.run_id and c["trace_id"] == run.trace_id for c in calls)
    assert [line.get("rung_event") for line in lines if line.get("rung_event")] == [
        "AttemptStarted",
        "RetryScheduled",
        "AttemptStarted",
        "Suspended",
        "AttemptResumed",
        "Completed",
    ]
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


# -- logs -------------------------------------------------------------------------------


def _group_lines(endpoint: str, group: str, run_id: str) -> list[dict[str, Any]]:
    """The group's events naming ``run_id``, as ``aws logs filter-log-events`` shows them."""
    logs = sessions.client("logs", endpoint, "us-east-1")
    pages = logs.get_paginator("filter_log_events").paginate(logGroupName=group)
    events = [e for page in pages for e in page["events"] if run_id in e["message"]]
    return sorted(events, key=lambda e: int(e["timestamp"]))


def _user_lines(run_id: str, messages: list[str]) -> list[tuple[str, int, int]]:
    """What the task's own lines say, (where, attempt, pid), in the order given; a JSON
    line's ``message`` field, a plain line as it is (rung's own lines are left out)."""
    found = []
    for message in messages:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            message = str(json.loads(message)["message"])
        said = re.search(rf"{run_id} (body|step) attempt (\d+) pid (\d+)", message)
        if said:
            found.append((said[1], int(said[2]), int(said[3])))
    return found


def _cli(dev: DevStack, *args: str) -> Result:
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": "us-east-1",
        "RUNG_STACK": None,
        "RUNG_APP": None,
    }
    options = ["--stack", dev.stack_name, "--endpoint-url", dev.endpoint_url]
    return CliRunner().invoke(main, [*options, *args], env=env, catch_exceptions=False)


@pytest.mark.timeout(300)
def test_worker_lines_reach_the_log_group_one_stream_per_process_kill_9_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_TEST_EFFECTS", str(tmp_path / "effects.log"))
    gate = tmp_path / "gate"
    with DevStack(dev_options(tmp_path)) as dev:
        group = dev.stack.outputs["WorkerLogGroupName"]
        handle = dev.client.trigger("logged", {"gate": str(gate)})
        killed = int(wait_for(Path(str(gate) + ".pid")))
        os.kill(killed, signal.SIGKILL)  # dies in its step, after writing two lines
        gate.touch()
        run = dev.wait(handle.run_id, timeout=120)
        deadline = time.monotonic() + 30  # shipped within half a second of being read
        lines = _group_lines(dev.endpoint_url, group, run.run_id)
        while time.monotonic() < deadline and len(_user_lines(run.run_id, _texts(lines))) < 4:
            time.sleep(0.2)
            lines = _group_lines(dev.endpoint_url, group, run.run_id)
        shown = _cli(dev, "runs", "logs", run.run_id, "--json")

    assert run.status == "COMPLETED" and run.attempt == 2
    assert group == f"/aws/lambda/{dev.stack_name}-worker"
    said = _user_lines(run.run_id, _texts(lines))
    assert [(where, attempt) for where, attempt, _ in said] == [
        ("body", 1), ("step", 1), ("body", 2), ("step", 2),
    ]  # fmt: skip
    pids = [pid for _, _, pid in said]
    assert pids[0] == pids[1] == killed and pids[2] == pids[3] != killed
    # One stream per process: the killed one's lines in one, the next process's in another.
    streams = {
        pid: {e["logStreamName"] for e in lines if re.search(rf" pid {pid}\b", e["message"])}
        for pid in pids
    }
    assert len(streams[killed]) == 1 and len(streams[pids[2]]) == 1
    assert streams[killed] != streams[pids[2]]
    names = streams[killed] | streams[pids[2]]
    assert all(re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", s) for s in names)
    # Where the lines went before: still there, as written.
    files = "\n".join(f.read_text() for f in (tmp_path / ".rung" / "logs").glob("*.log"))
    assert sorted(_user_lines(run.run_id, files.splitlines())) == sorted(said)
    # `rung runs logs --json`: the same lines, in order, one JSON object each.
    assert shown.exit_code == 0, shown.stderr
    printed = [json.loads(line) for line in shown.stdout.splitlines()]
    assert _user_lines(run.run_id, [str(p["message"]) for p in printed]) == said
    assert {p["stream"] for p in printed if re.search(r" pid \d+\b", str(p["message"]))} == names


def _texts(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["message"]) for e in events]


@pytest.mark.timeout(300)
def test_a_run_on_rung_dev_reports_metrics_events_and_has_the_stacks_alarms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_TEST_EFFECTS", str(tmp_path / "effects.log"))
    with DevStack(dev_options(tmp_path)) as dev:
        endpoint = dev.endpoint_url
        bus = dev.stack.outputs["EventBusName"]
        table = dev.stack.outputs["TableName"]
        sqs = sessions.client("sqs", endpoint, "us-east-1")
        events = sessions.client("events", endpoint, "us-east-1")
        cloudwatch = sessions.client("cloudwatch", endpoint, "us-east-1")
        # A user's rule on the stack's bus: rung's run events to a queue of theirs.
        inbox = sqs.create_queue(QueueName="run-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        events.put_rule(Name="ends", EventBusName=bus, EventPattern='{"source": ["rung"]}')
        events.put_targets(Rule="ends", EventBusName=bus, Targets=[{"Id": "inbox", "Arn": arn}])

        handle = dev.client.trigger("traced", {"seconds": 1})
        run = dev.wait(handle.run_id, timeout=120)
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=1).get("Messages", [])
            received += [json.loads(m["Body"]) for m in got]
            if received and not got:
                break  # the first event came, and nothing after it: no second one
        deadline = time.monotonic() + 30  # EMF lines are shipped within about a second
        while True:  # each attempt's metrics come from its own process's output
            completed = _metric(cloudwatch, "RunsCompleted", table)
            retries = _metric(cloudwatch, "RetriesScheduled", table)
            if (completed and retries) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        alarms = {
            a["AlarmName"]: a
            for a in cloudwatch.describe_alarms(AlarmNamePrefix=dev.stack_name)["MetricAlarms"]
        }
        dashboard = cloudwatch.get_dashboard(DashboardName=dev.stack.outputs["DashboardName"])

    assert run.status == "COMPLETED"
    assert [(e["source"], e["detail-type"]) for e in received] == [("rung", "Run Completed")]
    assert received[0]["detail"]["run_id"] == run.run_id
    assert received[0]["detail"]["trace_id"] == run.trace_id
    assert (completed, retries) == (1, 1)
    stack = dev.stack_name
    assert set(alarms) == {
        f"{stack}-{name}"
        for name in (
            "DeadLetterAlarm",
            "FailedRunsAlarm",
            "StartDelayAlarm",
            "RedrivesAlarm",
            "ThrottlesAlarm",
        )
    }
    failed = alarms[f"{stack}-FailedRunsAlarm"]
    watched = [q["MetricStat"]["Metric"] for q in failed["Metrics"] if "MetricStat" in q]
    assert [(m["Namespace"], m["MetricName"]) for m in watched] == [
        ("rung", "RunsFailed"),
        ("rung", "RunsTimedOut"),
    ]
    assert all(m["Dimensions"] == [{"Name": "table", "Value": table}] for m in watched)
    assert "AlarmActions" not in failed or failed["AlarmActions"] == []  # no topic given
    assert '"RunsCompleted", "table", "' + table + '"' in dashboard["DashboardBody"]


def _metric(cloudwatch: Any, name: str, table: str) -> float:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    out = cloudwatch.get_metric_statistics(
        Namespace="rung",
        MetricName=name,
        Dimensions=[{"Name": "table", "Value": table}],
        StartTime=now - timedelta(hours=1),
        EndTime=now + timedelta(hours=1),
        Period=7200,
        Statistics=["Sum"],
    )
    return float(sum(p["Sum"] for p in out["Datapoints"]))


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_step_shows_as_worker_lost_in_trace_logs_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_TEST_EFFECTS", str(tmp_path / "effects.log"))
    gate = tmp_path / "gate"
    with DevStack(dev_options(tmp_path)) as dev:
        handle = dev.client.trigger("pipeline", {"gate": str(gate)})
        pid = int(wait_for(Path(str(gate) + ".pid")))
        os.kill(pid, signal.SIGKILL)  # the worker dies in the middle of step "slow"
        gate.touch()
        run = dev.wait(handle.run_id, timeout=60)
        assert run.trace_id is not None
        endpoint, table = dev.endpoint_url, dev.stack.outputs["TableName"]
        logs = sessions.client("logs", endpoint, "us-east-1")
        cloudwatch = sessions.client("cloudwatch", endpoint, "us-east-1")
        group = dev.stack.outputs["WorkerLogGroupName"]
        deadline = time.monotonic() + 30  # shipped within about a second of being written
        while True:
            segments = _segments(endpoint, run.trace_id)
            events = [e.fields for e in run_events(logs, group, run.run_id)]
            lost_metric = _metric(cloudwatch, "WorkerLost", table)
            done = any(s["annotations"].get("rung_status") == "completed" for s in segments)
            ended = any(e.get("rung_event") == "Completed" for e in events)
            if (done and lost_metric and ended) or time.monotonic() > deadline:
                break
            time.sleep(0.3)

    assert run.status == "COMPLETED" and run.attempt == 2
    lost = [s for s in segments if s["annotations"].get("rung_status") == "worker lost"]
    assert len(lost) == 1 and lost[0]["annotations"]["rung_attempt"] == 1
    assert lost[0]["cause"]["exceptions"][0]["type"] == "WorkerLost"
    kinds = [(e.get("rung_event"), e.get("attempt")) for e in events if e.get("rung_event")]
    assert ("WorkerLost", 1) in kinds and kinds[-1] == ("Completed", 2)
    assert all(e["run_id"] == run.run_id for e in events if e.get("rung_event"))
    assert lost_metric == 1
