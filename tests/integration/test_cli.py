"""The ``rung`` CLI against template.yaml deployed to the embedded emulator.

The stack's data plane (table, queue, DLQ) is deployed with ``rung._aws.cloudformation`` as
``rung dev`` does; a thread of this process plays the worker (receive, ``Worker.handle``,
delete what is acknowledged), so runs triggered through the CLI really progress. A
task that raises ``SimulatedCrash`` leaves its message in flight, as a killed Lambda
would; the thread then lets the message come back after two seconds instead of the
queue's six minutes, and a one-second lease makes the next delivery take the run over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pty
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rung._aws import sessions
from rung._aws.cloudformation import data_plane, deploy, load_template, translate
from rung._aws.dynamodb import DynamoStore
from rung._aws.emulator import EmbeddedEmulator
from rung._aws.logs import LogStream
from rung._aws.sqs import SqsQueue
from rung._engine.config import WorkerConfig
from rung._engine.worker import Disposition, Worker
from rung._util.clock import SystemClock
from rung.cli import main
from rung.client import Client
from rung.models import Run
from rung.testing import SimulatedCrash
from tests.integration import cli_app

REGION = "us-east-1"
APP = "tests.integration.cli_app:app"
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"


@dataclass
class Deployed:
    name: str
    endpoint_url: str
    client: Client  # read-only, for the tests' own look at the table
    log_group: str = ""  # the worker's (stack output WorkerLogGroupName)
    faults: list[BaseException] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str | None]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_SESSION_TOKEN": None,
            "AWS_PROFILE": None,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": None,
            "RUNG_STACK": None,
            "RUNG_APP": None,
            "COLUMNS": "200",  # rich wraps tables at the terminal width; keep lines whole
        }


def _work(
    queue: SqsQueue, worker: Worker, stop: threading.Event, faults: list[BaseException]
) -> None:
    while not stop.is_set():
        try:
            messages = queue.receive(max_messages=10, wait_seconds=1)
            for message in messages:
                try:
                    disposition = worker.handle(message)
                except SimulatedCrash:
                    # The worker "died": the message stays in flight until its visibility
                    # ends (the stack's is 6 minutes; two seconds here).
                    queue.client.change_message_visibility(
                        QueueUrl=queue.url,
                        ReceiptHandle=message.receipt_handle,
                        VisibilityTimeout=2,
                    )
                    continue
                if disposition == Disposition.ACK:
                    queue.delete(message)
        except Exception as exc:
            if not stop.is_set():
                faults.append(exc)
                time.sleep(0.5)


@pytest.fixture(scope="module")
def stack() -> Iterator[Deployed]:
    emulator = EmbeddedEmulator.shared()
    name = f"rung-clitest-{secrets.token_hex(4)}"
    params = {"RungApp": APP, "FunctionTimeout": "60"}
    plane = data_plane(translate(load_template(TEMPLATE), params, REGION))
    cfn = sessions.client("cloudformation", emulator.endpoint_url, REGION)
    outputs = deploy(cfn, name, plane, params).outputs
    scheduler = sessions.client("scheduler", emulator.endpoint_url, REGION)
    scheduler.create_schedule_group(Name=name)  # as CloudFormation would: moto's skips it
    dynamodb = sessions.client("dynamodb", emulator.endpoint_url, REGION)
    sqs = sessions.client("sqs", emulator.endpoint_url, REGION)
    store = DynamoStore(dynamodb, outputs["TableName"])
    queue = SqsQueue(sqs, outputs["QueueUrl"], max_receive_count=5)
    worker = Worker(
        cli_app.app, store, queue, SystemClock(), WorkerConfig(lease_duration=timedelta(seconds=1))
    )
    deployed = Deployed(
        name=name,
        endpoint_url=emulator.endpoint_url,
        client=Client(
            None,
            table_name=outputs["TableName"],
            queue_url=outputs["QueueUrl"],
            endpoint_url=emulator.endpoint_url,
            region=REGION,
        ),
        log_group=outputs["WorkerLogGroupName"],
    )
    # The worker's warnings (a crashed attempt) must not land in the CLI's stderr.
    quiet = logging.NullHandler()
    logging.getLogger("rung").addHandler(quiet)
    logging.getLogger("rung").propagate = False
    stop = threading.Event()
    thread = threading.Thread(
        target=_work, args=(queue, worker, stop, deployed.faults), name="cli-test-worker"
    )
    thread.start()
    try:
        yield deployed
    finally:
        stop.set()
        thread.join(timeout=10)
        logging.getLogger("rung").removeHandler(quiet)
        logging.getLogger("rung").propagate = True
        cfn.delete_stack(StackName=name)
        scheduler.delete_schedule_group(Name=name)
        with contextlib.suppress(Exception):  # the table is DeletionPolicy: Retain
            dynamodb.delete_table(TableName=outputs["TableName"])
    assert deployed.faults == []


def rung(stack: Deployed, *args: str, app: bool = True, stack_option: bool = True) -> Result:
    """``rung [--app APP] [--stack NAME] ARGS``, its stdout and stderr apart."""
    options = ["--app", APP] if app else []
    options += ["--stack", stack.name] if stack_option else []
    return CliRunner().invoke(
        main, [*options, *args], env=stack.env, catch_exceptions=False, prog_name="rung"
    )


def one_error_line(result: Result) -> str:
    """The failed command's stderr: exactly one line, ``error: ...``, no traceback."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def wait_for(stack: Deployed, run_id: str, timeout: float = 30.0) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = stack.client.get_run(run_id)
        if run.status.is_terminal or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def run_count(stack: Deployed) -> int:
    return len(stack.client.list_runs(limit=1000))


def in_order(text: str, *parts: str) -> bool:
    position = 0
    for part in parts:
        found = text.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return True


# -- trigger ------------------------------------------------------------------------------


def test_trigger_prints_the_run_id_and_the_run_completes(stack: Deployed) -> None:
    result = rung(stack, "trigger", "greet", "--payload", '{"name": "ada"}')

    assert result.exit_code == 0, result.stderr
    run_id = result.stdout.strip()
    assert run_id.startswith("run_")
    run = wait_for(stack, run_id)
    assert (run.task_id, run.status, run.output) == (
        "greet",
        "COMPLETED",
        {"greeting": "hello ada"},
    )


def test_trigger_json_is_the_handle(stack: Deployed) -> None:
    result = rung(
        stack, "trigger", "greet", "--payload", '{"name": "bo"}', "--ttl", "1h", "--json",
        "--metadata", '{"source": "cli"}',
    )  # fmt: skip
    bad_ttl = rung(stack, "trigger", "greet", "--payload", '{"name": "bo"}', "--ttl", "soon")
    bad_meta = rung(stack, "trigger", "greet", "--payload", '{"name": "bo"}', "--metadata", "[1]")

    assert result.exit_code == 0, result.stderr
    handle = json.loads(result.stdout)
    assert handle["task_id"] == "greet"
    assert handle["created"] is True
    run = stack.client.get_run(handle["run_id"])
    assert run.payload == {"name": "bo"}
    assert run.start_by == run.created_at + timedelta(hours=1)
    assert bad_ttl.exit_code == 2 and "--ttl" in bad_ttl.stderr
    assert run.metadata == {"source": "cli"}
    assert bad_meta.exit_code == 2 and "metadata must be a mapping" in bad_meta.stderr


def test_trigger_with_debounce_collapses_into_one_run(stack: Deployed) -> None:
    key = f"k-{secrets.token_hex(3)}"
    burst = ["--debounce", key, "--debounce-window", "10m", "--json"]
    first = rung(stack, "trigger", "greet", "--payload", '{"name": "a"}', *burst)
    second = rung(stack, "trigger", "greet", "--payload", '{"name": "b"}', *burst)
    lone = rung(stack, "trigger", "greet", "--payload", '{"name": "c"}', "--debounce", key)

    assert first.exit_code == second.exit_code == 0, second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["run_id"] == two["run_id"] and (one["created"], two["created"]) == (True, False)
    run = stack.client.get_run(one["run_id"])
    assert (run.status, run.payload, run.triggers) == ("DELAYED", {"name": "b"}, 2)
    assert lone.exit_code == 2 and "--debounce-window" in lone.stderr


def test_schedules_are_created_listed_paused_resumed_and_deleted(stack: Deployed) -> None:
    key = f"tenant-{secrets.token_hex(3)}"
    created = rung(
        stack, "schedules", "create", "nightly", "0 2 * * *", "--timezone", "Europe/Paris",
        "--payload", '{"tenant": "acme"}', "--external-id", key, "--dedup-key", key, "--json",
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["aws_expression"] == "cron(0 2 * * ? *)" and info["timezone"] == "Europe/Paris"
    assert (info["payload"], info["external_id"], info["paused"]) == (
        {"tenant": "acme"},
        key,
        False,
    )
    sid = info["id"]
    listed = rung(stack, "schedules", "list", app=False)
    shown = rung(stack, "schedules", "show", sid, app=False)
    paused = rung(stack, "schedules", "pause", sid, "--json", app=False)
    shown_paused = rung(stack, "schedules", "show", sid, app=False)
    resumed = rung(stack, "schedules", "resume", sid, "--catch-up", app=False)
    deleted = rung(stack, "schedules", "delete", sid, app=False)
    missing = rung(stack, "schedules", "show", sid, app=False)
    bad = rung(stack, "schedules", "create", "nightly", "0 2 1 * MON")
    plain = rung(stack, "schedules", "create", "greet", "0 2 * * *")

    assert listed.exit_code == 0 and sid in listed.stdout and "nightly" in listed.stdout
    assert shown.exit_code == 0 and "0 2 * * *  (Europe/Paris)" in shown.stdout
    assert paused.exit_code == 0 and json.loads(paused.stdout)["paused"] is True
    assert json.loads(paused.stdout)["paused_at"] is not None
    assert "paused since 20" in shown_paused.stdout
    assert resumed.exit_code == 0 and "active" in resumed.stdout
    assert deleted.exit_code == 0 and f"deleted schedule {sid}" in deleted.stdout
    assert missing.exit_code == 1 and f"no schedule {sid!r}" in one_error_line(missing)
    assert bad.exit_code == 2 and "both the day of month" in one_error_line(bad)
    assert plain.exit_code == 2 and "cannot be scheduled" in one_error_line(plain)


def test_batch_trigger_reads_json_lines_and_reports_each_entry(
    stack: Deployed, tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('{"name": "ed"}\n\n{"name": "flo"}\n{"nom": "x"}\n')

    result = rung(stack, "batch-trigger", "greet", str(items), "--json")

    assert result.exit_code == 1  # one entry refused
    assert one_error_line(result) == "error: 1 of 3 entries were refused (see above)"
    entries = json.loads(result.stdout)
    assert [e["index"] for e in entries] == [0, 1, 2]
    assert entries[2]["run_id"] is None and entries[2]["error"]["type"] == "InvalidPayload"
    outputs = [wait_for(stack, e["run_id"]).output for e in entries[:2]]
    assert outputs == [{"greeting": "hello ed"}, {"greeting": "hello flo"}]


def test_batch_trigger_with_options_keys_delays_and_tags_each_entry(
    stack: Deployed, tmp_path: Path
) -> None:
    items = tmp_path / "items.json"
    key = f"k-{secrets.token_hex(3)}"
    items.write_text(
        json.dumps(
            [
                {"payload": {"name": "gus"}, "idempotency_key": key, "tags": ["cli"]},
                {"payload": {"name": "gus"}, "idempotency_key": key},
                {"payload": {"name": "hal"}, "delay": "10m", "ttl": "1h", "metadata": {"m": 1}},
            ]
        )
    )

    result = rung(stack, "batch-trigger", "greet", str(items), "--with-options")
    bad = rung(stack, "batch-trigger", "greet", str(items))  # entries as payloads: refused

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "3 triggered, 0 refused"
    ids = [line.split()[1] for line in lines[1:4]]
    assert ids[0] == ids[1] and "idempotency key matched an existing run" in lines[2]
    assert stack.client.get_run(ids[0]).tags == ("cli",)
    delayed = stack.client.get_run(ids[2])
    assert delayed.status == "DELAYED"
    assert delayed.start_by == delayed.created_at + timedelta(minutes=70)  # ttl after delay
    assert delayed.metadata == {"m": 1}
    assert bad.exit_code == 1 and "3 of 3 entries were refused" in bad.stderr
    unknown = tmp_path / "unknown.json"
    unknown.write_text('[{"payload": {}, "priority": 3}]')
    refused = rung(stack, "batch-trigger", "greet", str(unknown), "--with-options")
    assert refused.exit_code == 2 and "(unknown: priority)" in refused.stderr


def test_runs_list_with_repeated_tags_lists_runs_that_have_them_all(stack: Deployed) -> None:
    mark = f"t-{secrets.token_hex(3)}"
    both = rung(
        stack, "trigger", "greet", "--payload", '{"name": "i"}', "--tag", mark, "--tag", "x"
    )
    one = rung(stack, "trigger", "greet", "--payload", '{"name": "j"}', "--tag", mark)

    listed = rung(stack, "runs", "list", "--tag", mark, "--tag", "x", "--json")
    either = rung(stack, "runs", "list", "--tag", mark, "--json")

    assert both.exit_code == one.exit_code == listed.exit_code == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [both.stdout.strip()]
    assert {r["run_id"] for r in json.loads(either.stdout)} == {
        both.stdout.strip(),
        one.stdout.strip(),
    }


def test_trigger_wait_exits_0_and_shows_the_output(stack: Deployed) -> None:
    result = rung(stack, "trigger", "greet", "--payload", '{"name": "cy"}', "--wait")

    assert result.exit_code == 0, result.stderr
    run_id, summary, output = result.stdout.splitlines()
    assert summary.startswith(f"{run_id}  greet  COMPLETED after 1 attempt in ")
    assert output == 'output: {"greeting": "hello cy"}'


def test_trigger_wait_json_carries_the_finished_run(stack: Deployed) -> None:
    result = rung(stack, "trigger", "greet", "--payload", '{"name": "di"}', "--wait", "--json")

    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["run"]["status"] == "COMPLETED"
    assert data["run"]["output"] == {"greeting": "hello di"}
    assert data["run"]["finished_at"].endswith("+00:00")


def test_a_failing_task_with_wait_exits_1_with_its_error(stack: Deployed) -> None:
    result = rung(stack, "trigger", "decline", "--payload", '{"order_id": "o-9"}', "--wait")

    assert result.exit_code == 1
    run_id = result.stdout.splitlines()[0]
    assert "FAILED after 1 attempt" in result.stdout
    line = one_error_line(result)
    assert line.startswith(f"error: run {run_id} FAILED: ")
    assert "step '/charge#1' failed: card declined for order o-9" in line


def test_wait_gives_up_after_the_timeout_with_exit_3(stack: Deployed) -> None:
    result = rung(
        stack, "trigger", "greet", "--payload", '{"name": "ed"}', "--delay", "1m", "--wait",
        "--timeout", "1s",
    )  # fmt: skip

    assert result.exit_code == 3
    assert "is still DELAYED" in one_error_line(result)


def test_delay_makes_the_run_due_later(stack: Deployed) -> None:
    result = rung(stack, "trigger", "greet", "--payload", '{"name": "fi"}', "--delay", "1h30m")

    run = stack.client.get_run(result.stdout.strip())
    assert run.status == "DELAYED"
    assert run.available_at is not None
    assert run.available_at - run.created_at == timedelta(hours=1, minutes=30)
    trace = rung(stack, "runs", "trace", run.run_id).stdout
    assert in_order(trace, f"{run.run_id}  greet  DELAYED\n", "+1h30m00s", "… first attempt due")


def test_the_same_idempotency_key_gets_the_same_run(stack: Deployed) -> None:
    args = ("trigger", "greet", "--payload", '{"name": "gu"}', "--idempotency-key", "k-1")
    first = rung(stack, *args)
    again = rung(stack, *args)
    again_json = rung(stack, *args, "--json")

    assert again.stdout == first.stdout
    assert again.stderr == (
        "note: idempotency key 'k-1' matched this existing run; nothing new was triggered\n"
    )
    assert json.loads(again_json.stdout) == {
        "run_id": first.stdout.strip(),
        "task_id": "greet",
        "created": False,
    }


def test_tags_are_stored(stack: Deployed) -> None:
    result = rung(
        stack, "trigger", "greet", "--payload", '{"name": "hu"}', "--tag", "a", "--tag", "b"
    )

    assert stack.client.get_run(result.stdout.strip()).tags == ("a", "b")


def test_payload_from_a_file(stack: Deployed, tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"name": "from a file"}')

    result = rung(stack, "trigger", "greet", "--payload", f"@{payload}", "--wait", "--json")

    assert json.loads(result.stdout)["run"]["output"] == {"greeting": "hello from a file"}


# -- refused triggers -------------------------------------------------------------------


def test_an_unknown_task_exits_2_with_one_line_and_stores_nothing(stack: Deployed) -> None:
    before = run_count(stack)

    result = rung(stack, "trigger", "refund", "--payload", "{}")

    assert result.exit_code == 2
    assert one_error_line(result) == (
        "error: app 'clitest' has no task 'refund' "
        "(known tasks: approve, crash-once, decline, family, greet, nap, nap-family, "
        "nightly, pipeline, post, process-order, sign)"
    )
    assert result.stdout == ""
    assert run_count(stack) == before


def test_an_invalid_payload_exits_2_with_one_line_and_stores_nothing(stack: Deployed) -> None:
    before = run_count(stack)

    result = rung(stack, "trigger", "greet", "--payload", '{"nom": 1}', "--wait")

    assert result.exit_code == 2
    assert one_error_line(result) == (
        "error: payload for task 'greet' does not match Greeting: name: Field required"
    )
    assert run_count(stack) == before


def test_a_payload_that_is_not_json_is_a_usage_error(stack: Deployed) -> None:
    result = rung(stack, "trigger", "greet", "--payload", "{name: ada}")

    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith("error: Invalid value for '--payload': not JSON (")
    assert line.endswith("(see 'rung trigger --help')")


@pytest.mark.parametrize("option", ["--delay", "--timeout"])
def test_a_bad_duration_is_a_usage_error(stack: Deployed, option: str) -> None:
    result = rung(stack, "trigger", "greet", "--payload", "{}", "--wait", option, "5 minutes")

    assert result.exit_code == 2
    assert f"Invalid value for '{option}': '5 minutes' is not a duration (use 30s, 5m" in (
        one_error_line(result)
    )


@pytest.mark.parametrize(
    ("delay", "message"),
    [
        ("3000000d", "error: trigger delay must be at most 366d, got 3,000,000 days"),
        ("999999999999d", "error: Invalid value for '--delay': '999999999999d' is far too long"),
        ("367d", "error: trigger delay must be at most 366d, got 367d"),
    ],
)
def test_a_delay_beyond_the_limit_is_one_line_and_exit_2(
    stack: Deployed, delay: str, message: str
) -> None:
    before = run_count(stack)

    result = rung(stack, "trigger", "greet", "--payload", '{"name": "x"}', "--delay", delay)

    assert result.exit_code == 2
    assert one_error_line(result).startswith(message)
    assert "Traceback" not in result.output
    assert run_count(stack) == before


def test_timeout_without_wait_is_a_usage_error(stack: Deployed) -> None:
    result = rung(stack, "trigger", "greet", "--payload", "{}", "--timeout", "5m")

    assert result.exit_code == 2
    assert "--timeout only applies with --wait" in one_error_line(result)


def test_trigger_without_an_app_says_how_to_name_it(stack: Deployed) -> None:
    result = rung(stack, "trigger", "greet", "--payload", "{}", app=False)

    assert result.exit_code == 2
    assert "pass --app module:attr" in one_error_line(result)


def test_an_app_that_is_not_there_is_a_usage_error(stack: Deployed) -> None:
    result = CliRunner().invoke(
        main,
        ["--app", "tests.integration.no_such_module:app", "runs", "list"],
        env=stack.env,
        prog_name="rung",
    )

    assert result.exit_code == 2
    assert "no module named 'tests.integration.no_such_module'" in one_error_line(result)


# -- runs list / show -------------------------------------------------------------------


def test_list_filters_by_status_and_task(stack: Deployed) -> None:
    ok = rung(stack, "trigger", "greet", "--payload", '{"name": "ivy"}', "--wait", "--json")
    bad = rung(stack, "trigger", "decline", "--payload", '{"order_id": "o-2"}', "--wait", "--json")
    ok_id, bad_id = json.loads(ok.stdout)["run_id"], json.loads(bad.stdout)["run_id"]

    failed = json.loads(rung(stack, "runs", "list", "--status", "failed", "--json").stdout)
    greets = json.loads(rung(stack, "runs", "list", "--task", "greet", "--json").stdout)
    both = json.loads(
        rung(stack, "runs", "list", "--task", "decline", "--status", "FAILED", "--json").stdout
    )
    limited = json.loads(rung(stack, "runs", "list", "--limit", "1", "--json").stdout)

    assert bad_id in {r["run_id"] for r in failed}
    assert {r["status"] for r in failed} == {"FAILED"}
    assert ok_id in {r["run_id"] for r in greets}
    assert {r["task_id"] for r in greets} == {"greet"}
    assert bad_id in {r["run_id"] for r in both}
    assert {(r["task_id"], r["status"]) for r in both} == {("decline", "FAILED")}
    assert len(limited) == 1


def test_list_is_a_table_for_people_newest_first(stack: Deployed) -> None:
    first = rung(stack, "trigger", "greet", "--payload", '{"name": "jo"}').stdout.strip()
    second = rung(stack, "trigger", "greet", "--payload", '{"name": "ka"}').stdout.strip()

    result = rung(stack, "runs", "list", "--task", "greet", "--limit", "2")

    assert result.exit_code == 0, result.stderr
    assert in_order(result.stdout, "run", "task", "status", "attempt", second, first)


def piped(stack: Deployed, *args: str, columns: str | None = "80") -> Result:
    """``rung --app APP --stack NAME ARGS`` with stdout not a terminal (as in a pipe)."""
    return CliRunner().invoke(
        main,
        ["--app", APP, "--stack", stack.name, *args],
        env={**stack.env, "COLUMNS": columns},
        catch_exceptions=False,
        prog_name="rung",
    )


LONG_NAME = "a name long enough to make every table wider than eighty columns"


@pytest.mark.parametrize("columns", ["80", None])
def test_piped_tables_are_as_wide_as_their_content_and_cut_no_id(
    stack: Deployed, columns: str | None
) -> None:
    payload = json.dumps({"name": LONG_NAME})
    done = [
        json.loads(rung(stack, "trigger", "greet", "--payload", payload, "--wait", "--json").stdout)
        for _ in range(2)
    ]
    ids = [d["run_id"] for d in done]

    listed = piped(stack, "runs", "list", "--task", "greet", "--limit", "2", columns=columns)
    shown = piped(stack, "runs", "show", ids[0], columns=columns)

    assert listed.exit_code == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert [row.split()[0] for row in rows[2:]] == ids[::-1]  # one line per run, whole id
    assert max(map(len, rows)) > 80  # sized to the content, not to 80 columns
    assert all(row == row.rstrip() for row in rows)  # no padding to a width
    [row] = [line.split(maxsplit=1) for line in shown.stdout.splitlines() if "payload" in line]
    assert row == ["payload", json.dumps({"name": LONG_NAME})]  # one line, whole


def on_a_terminal(stack: Deployed, columns: int, *args: str) -> str:
    """``rung ARGS`` run with its stdout on a terminal ``columns`` wide; what it showed
    (colors removed)."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in {**os.environ, **stack.env}.items() if v is not None}
    process = subprocess.Popen(
        [sys.executable, "-m", "rung.cli", "--app", APP, "--stack", stack.name, *args],
        stdout=terminal,
        stderr=subprocess.PIPE,
        env={**env, "COLUMNS": str(columns), "TERM": "xterm"},
        cwd=ROOT,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode()).replace("\r\n", "\n")


def test_a_narrow_terminal_never_cuts_an_id(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "approve").stdout.strip()
    token_id = token_of(stack, run_id)

    listed = on_a_terminal(stack, 50, "runs", "list", "--task", "approve", "--limit", "3")
    traced = on_a_terminal(stack, 50, "runs", "trace", run_id)
    tokens = on_a_terminal(stack, 40, "tokens", "list", run_id)

    assert run_id in listed.split()
    assert run_id in traced.split() and token_id in traced.split()
    assert token_id in tokens.split()
    rung(stack, "tokens", "complete", token_id, "true")


def test_list_of_an_unknown_task_is_refused_when_the_app_is_known(stack: Deployed) -> None:
    result = rung(stack, "runs", "list", "--task", "refund")

    assert result.exit_code == 2
    assert "has no task 'refund'" in one_error_line(result)


def test_list_without_an_app_reads_the_stack_named_by_stack(stack: Deployed) -> None:
    result = rung(stack, "runs", "list", "--task", "greet", "--limit", "1", "--json", app=False)

    assert result.exit_code == 0, result.stderr
    assert [r["task_id"] for r in json.loads(result.stdout)] == ["greet"]


def test_show_prints_the_run(stack: Deployed) -> None:
    triggered = rung(stack, "trigger", "greet", "--payload", '{"name": "lu"}', "--wait", "--json")
    run_id = json.loads(triggered.stdout)["run_id"]

    shown = rung(stack, "runs", "show", run_id)
    as_json = json.loads(rung(stack, "runs", "show", run_id, "--json").stdout)

    assert shown.exit_code == 0, shown.stderr
    assert in_order(
        shown.stdout, run_id, "greet", "COMPLETED", '{"name": "lu"}', '{"greeting": "hello lu"}'
    )
    assert as_json["run_id"] == run_id
    assert as_json["status"] == "COMPLETED"
    assert as_json["payload"] == {"name": "lu"}
    assert as_json["created_at"] <= as_json["started_at"] <= as_json["finished_at"]
    assert as_json["trace_id"].startswith("1-")  # its X-Ray trace (docs/observability.md)
    assert f"{as_json['trace_id']} (X-Ray)" in shown.stdout


def test_show_of_a_failed_run_shows_its_error(stack: Deployed) -> None:
    triggered = rung(stack, "trigger", "decline", "--payload", '{"order_id": "o-3"}', "--wait")
    run_id = triggered.stdout.splitlines()[0]

    shown = rung(stack, "runs", "show", run_id)

    assert "card declined for order o-3" in shown.stdout


def test_show_of_an_unknown_id_exits_1_with_one_line(stack: Deployed) -> None:
    result = rung(stack, "runs", "show", "run_01NOSUCHRUN", "--json")

    assert result.exit_code == 1
    assert one_error_line(result).startswith("error: no run with id 'run_01NOSUCHRUN'")
    assert result.stdout == ""


# -- runs trace -------------------------------------------------------------------------


def test_trace_shows_the_retry_resuming_at_the_failed_step(stack: Deployed) -> None:
    triggered = rung(
        stack, "trigger", "process-order", "--payload", '{"order_id": "o-1"}', "--wait"
    )
    assert triggered.exit_code == 0, triggered.stderr
    run_id = triggered.stdout.splitlines()[0]

    result = rung(stack, "runs", "trace", run_id)

    assert result.exit_code == 0, result.stderr
    assert in_order(
        result.stdout,
        f"{run_id}  process-order  COMPLETED after 2 attempts",
        "+0.000s",
        "triggered process-order",
        "attempt 1 started",
        "✓ step /fetch_order#1",
        "✗ step /charge#1",
        "ConnectionError: payment gateway timeout",
        "↻ retry in 1s",
        "attempt 2 due at +",
        "attempt 2 started",
        "resumes at /charge#1; 1 completed step replayed from checkpoints",
        "✓ step /charge#1 (try 2)",
        "✓ step /email#1",
        "✓ completed",
        'output: {"order_id": "o-1", "charge_id": "ch_o-1"}',
    ), result.stdout
    assert "fetch_order#1 (try 2)" not in result.stdout


def test_trace_json_has_the_events_and_each_steps_duration(stack: Deployed) -> None:
    triggered = rung(
        stack, "trigger", "process-order", "--payload", '{"order_id": "o-2"}', "--wait", "--json"
    )
    run_id = json.loads(triggered.stdout)["run_id"]

    data = json.loads(rung(stack, "runs", "trace", run_id, "--json").stdout)

    assert data["run"]["status"] == "COMPLETED"
    assert [e["type"] for e in data["events"]] == [
        "RunTriggered",
        "AttemptStarted",
        "StepStarted",
        "StepSucceeded",
        "StepStarted",
        "StepFailed",
        "RetryScheduled",
        "AttemptStarted",
        "StepStarted",
        "StepSucceeded",
        "StepStarted",
        "StepSucceeded",
        "RunCompleted",
    ]
    retry = data["events"][6]
    assert (retry["attempt"], retry["delay_seconds"]) == (1, 1.0)
    assert data["events"][5]["error"]["type"] == "ConnectionError"
    steps = [(s["step"], s["attempt"], s["try"], s["outcome"]) for s in data["steps"]]
    assert steps == [
        ("/fetch_order#1", 1, 1, "succeeded"),
        ("/charge#1", 1, 1, "failed"),
        ("/charge#1", 2, 2, "succeeded"),
        ("/email#1", 2, 1, "succeeded"),
    ]
    assert all(s["duration_seconds"] >= 0 for s in data["steps"])


def test_trace_shows_a_worker_lost_mid_step(stack: Deployed) -> None:
    triggered = rung(stack, "trigger", "crash-once", "--wait", "--timeout", "30s")
    assert triggered.exit_code == 0, triggered.stderr
    run_id = triggered.stdout.splitlines()[0]

    result = rung(stack, "runs", "trace", run_id)

    assert in_order(
        result.stdout,
        "attempt 1 started",
        "✗ worker lost",
        "WorkerLost: the worker running attempt 1",
        "attempt 2 started",
        "runs from the top at /work#1 (no step had completed)",
        "✓ step /work#1",
        "✓ completed",
    ), result.stdout


def test_trace_of_an_unknown_id_exits_1_with_one_line(stack: Deployed) -> None:
    result = rung(stack, "runs", "trace", "run_01NOSUCHRUN")

    assert result.exit_code == 1
    assert one_error_line(result).startswith("error: no run with id 'run_01NOSUCHRUN'")


# -- runs logs --------------------------------------------------------------------------
#
# This module's worker is a thread, not a Lambda function: nothing ships its output. The
# tests write the lines a worker process writes (Powertools JSON, and plain text) to the
# stack's worker log group themselves, through CloudWatch Logs, as Lambda (or rung dev)
# would; test_dev_observability.py has real worker processes ship their own.


def ship(stack: Deployed, *lines: str | dict[str, Any]) -> str:
    """Write ``lines`` (a dict as JSON) to a new stream of the worker log group, in
    order; returns the stream's name."""
    logs = sessions.client("logs", stack.endpoint_url, REGION)
    stream = LogStream(logs, stack.log_group, f"2026/01/01/[$LATEST]{secrets.token_hex(16)}")
    for line in lines:
        stream.write(
            time.time_ns() // 1_000_000, json.dumps(line) if isinstance(line, dict) else line
        )
    stream.flush()
    return stream.stream


def powertools(run_id: str, message: str, **fields: object) -> dict[str, Any]:
    """A line as a worker writes it during a run (Powertools Logger's JSON)."""
    return {
        "level": "INFO",
        "location": "work:12",
        "message": message,
        "timestamp": "2026-01-01 12:00:00,000+0000",
        "service": "clitest",
        "run_id": run_id,
        "task": "greet",
        "attempt": 1,
        **fields,
    }


def test_logs_prints_the_runs_lines_in_order_for_people(stack: Deployed) -> None:
    run_id = rung(
        stack, "trigger", "greet", "--payload", '{"name": "ada"}', "--wait"
    ).stdout.split()[0]
    other = rung(stack, "trigger", "greet", "--payload", '{"name": "bob"}').stdout.strip()
    ship(
        stack,
        powertools(run_id, "attempt started", rung_event="AttemptStarted"),
        powertools(run_id, "composing", step_id="/compose#1", level="WARNING"),
        powertools(other, "not this run"),
        f"a plain line naming {run_id}",
        powertools(run_id, "completed", rung_event="Completed"),
    )

    result = rung(stack, "runs", "logs", run_id)

    assert result.exit_code == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 4, result.stdout
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  attempt 1  INFO     attempt started", rows[0]
    )
    assert rows[1].endswith("  attempt 1  /compose#1  WARNING  composing"), rows[1]
    assert rows[2].endswith(f"  a plain line naming {run_id}"), rows[2]
    assert rows[3].endswith("  attempt 1  INFO     completed"), rows[3]
    assert "not this run" not in result.stdout


def test_logs_json_is_one_object_per_line_with_its_fields_time_and_stream(
    stack: Deployed,
) -> None:
    run_id = rung(
        stack, "trigger", "greet", "--payload", '{"name": "cy"}', "--wait"
    ).stdout.split()[0]
    stream = ship(
        stack,
        powertools(run_id, "composing", step_id="/compose#1"),
        f"Traceback naming {run_id}",
    )

    result = rung(stack, "runs", "logs", run_id, "--json")

    assert result.exit_code == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert {
        k: first[k] for k in ("run_id", "attempt", "step_id", "level", "message", "stream")
    } == {
        "run_id": run_id,
        "attempt": 1,
        "step_id": "/compose#1",
        "level": "INFO",
        "message": "composing",
        "stream": stream,
    }
    assert first["timestamp"].endswith("+00:00")  # the event's time, ISO 8601
    assert second == {
        "message": f"Traceback naming {run_id}",
        "timestamp": second["timestamp"],
        "stream": stream,
    }


def test_logs_of_a_run_with_no_lines_says_so_on_stderr(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "greet", "--payload", '{"name": "di"}').stdout.strip()

    shown = rung(stack, "runs", "logs", run_id)
    as_json = rung(stack, "runs", "logs", run_id, "--json")

    assert (shown.exit_code, shown.stdout) == (0, "")
    assert shown.stderr == f"no log lines for {run_id} in {stack.log_group}\n"
    assert (as_json.exit_code, as_json.stdout, as_json.stderr) == (0, "", "")


def test_logs_of_an_unknown_id_exits_1_with_one_line(stack: Deployed) -> None:
    result = rung(stack, "runs", "logs", "run_01NOSUCHRUN", "--follow")

    assert result.exit_code == 1
    assert one_error_line(result).startswith("error: no run with id 'run_01NOSUCHRUN'")
    assert result.stdout == ""


def test_logs_follow_prints_new_lines_once_and_ends_when_the_run_has_ended(
    stack: Deployed,
) -> None:
    run_id = rung(stack, "trigger", "sign").stdout.strip()
    token_id = token_of(stack, run_id)
    ship(stack, powertools(run_id, "one"))
    env = {k: v for k, v in {**os.environ, **stack.env}.items() if v is not None}
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rung.cli",
            "--stack",
            stack.name,
            "runs",
            "logs",
            run_id,
            "--follow",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        ship(stack, powertools(run_id, "two"))  # while it follows
        second = json.loads(follower.stdout.readline())
        ship(stack, powertools(run_id, "three"))
        stack.client.complete_token(token_id, "signed")
        run = wait_for(stack, run_id)
        rest, errors = follower.communicate(timeout=60)  # it ends on its own
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()

    assert run.status == "COMPLETED"
    assert follower.returncode == 0, errors
    messages = [first["message"], second["message"]]
    messages += [json.loads(line)["message"] for line in rest.decode().splitlines()]
    assert messages == ["one", "two", "three"]  # each once, though polls overlap


def test_trace_logs_shows_each_line_under_its_step_or_its_attempt(stack: Deployed) -> None:
    triggered = rung(
        stack, "trigger", "process-order", "--payload", '{"order_id": "o-9"}', "--wait"
    )
    run_id = triggered.stdout.splitlines()[0]
    ship(
        stack,
        powertools(run_id, "body of attempt 1"),
        powertools(run_id, "gateway timed out", step_id="/charge#1", level="ERROR"),
        powertools(run_id, "charged on try 2", step_id="/charge#1", attempt=2),
        f"a plain line naming {run_id}",  # no fields: the attempt started last
    )

    result = rung(stack, "runs", "trace", run_id, "--logs")
    as_json = json.loads(rung(stack, "runs", "trace", run_id, "--logs", "--json").stdout)
    without = rung(stack, "runs", "trace", run_id)

    assert result.exit_code == 0, result.stderr
    assert in_order(
        result.stdout,
        "attempt 1 started",
        "│ INFO",
        "body of attempt 1",
        "✓ step /fetch_order#1",
        "✗ step /charge#1",
        "│ ERROR",
        "gateway timed out",
        "attempt 2 started",
        "│ log",
        f"a plain line naming {run_id}",
        "✓ step /charge#1 (try 2)",
        "│ INFO",
        "charged on try 2",
        "✓ step /email#1",
        "✓ completed",
    ), result.stdout
    assert [line["message"] for line in as_json["logs"]] == [
        "body of attempt 1",
        "gateway timed out",
        "charged on try 2",
        f"a plain line naming {run_id}",
    ]
    assert "│" not in without.stdout and "logs" not in json.loads(
        rung(stack, "runs", "trace", run_id, "--json").stdout
    )


# -- runs cancel / replay / redrive -------------------------------------------------------


def wait_status(stack: Deployed, run_id: str, status: str, timeout: float = 30.0) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = stack.client.get_run(run_id)
        if run.status == status or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def test_runs_cancel_cancels_a_waiting_run_and_refuses_a_second_time(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "nap").stdout.strip()
    assert wait_status(stack, run_id, "WAITING").status == "WAITING"

    result = rung(stack, "runs", "cancel", run_id, "--reason", "not needed")
    again = rung(stack, "runs", "cancel", run_id)
    again_json = rung(stack, "runs", "cancel", run_id, "--json")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{run_id}  nap  CANCELED after 1 attempt in ")
    run = stack.client.get_run(run_id)
    assert run.status == "CANCELED" and run.error is not None
    assert run.error.message == "not needed"
    assert again.exit_code == 1 and again_json.exit_code == 1
    assert one_error_line(again).startswith(f"error: run {run_id} already finished (CANCELED at ")
    assert again_json.stdout == ""
    trace = rung(stack, "runs", "trace", run_id).stdout
    assert in_order(trace, "attempt 1 started", "✗ canceled", "not needed"), trace


def test_runs_cancel_json_is_the_canceled_run(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "greet", "--payload", '{"name": "x"}', "--delay", "1h").stdout
    result = rung(stack, "runs", "cancel", run_id.strip(), "--json")

    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["status"], data["error"]["type"]) == ("CANCELED", "RunCanceled")


def test_a_delayed_run_canceled_before_it_started_reads_so(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "greet", "--payload", '{"name": "z"}', "--delay", "1h").stdout
    run_id = run_id.strip()

    result = rung(stack, "runs", "cancel", run_id)
    shown = rung(stack, "runs", "show", run_id)

    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{run_id}  greet  CANCELED in ")
    assert result.stdout.rstrip().endswith(", before its first attempt")
    assert "attempt" not in result.stdout.replace("first attempt", "")
    assert in_order(shown.stdout, "status", "CANCELED", "attempt", "none yet")


def test_a_parent_waiting_for_its_child_shows_what_it_waits_for_not_a_due_time(
    stack: Deployed,
) -> None:
    parent_id = rung(stack, "trigger", "nap-family").stdout.strip()
    parent = wait_status(stack, parent_id, "WAITING")
    assert parent.status == "WAITING"
    [child] = stack.client.list_children(parent_id)

    shown = rung(stack, "runs", "show", parent_id)
    data = json.loads(rung(stack, "runs", "show", parent_id, "--json").stdout)
    rung(stack, "runs", "cancel", parent_id)  # and its child

    assert "9999" not in shown.stdout and "due" not in shown.stdout
    assert in_order(shown.stdout, "waiting for", child.run_id)
    assert data["available_at"] is None  # no timer: only the child's end wakes it
    assert child.run_id in data["waiting_for"]


def test_runs_cancel_of_a_completed_run_exits_1_and_changes_nothing(stack: Deployed) -> None:
    done = rung(stack, "trigger", "greet", "--payload", '{"name": "y"}', "--wait", "--json")
    run_id = json.loads(done.stdout)["run_id"]
    before = stack.client.get_run(run_id)

    result = rung(stack, "runs", "cancel", run_id)

    assert result.exit_code == 1
    assert one_error_line(result).startswith(f"error: run {run_id} already finished (COMPLETED")
    assert stack.client.get_run(run_id) == before


@pytest.mark.parametrize("command", ["cancel", "replay", "redrive"])
def test_lifecycle_commands_on_an_unknown_id_exit_1(stack: Deployed, command: str) -> None:
    result = rung(stack, "runs", command, "run_01NOSUCHRUN")

    assert result.exit_code == 1
    assert one_error_line(result).startswith("error: no run with id 'run_01NOSUCHRUN'")
    assert result.stdout == ""


def test_runs_replay_starts_a_new_run_with_the_same_payload(stack: Deployed) -> None:
    done = rung(stack, "trigger", "greet", "--payload", '{"name": "re"}', "--wait", "--json")
    original = json.loads(done.stdout)["run_id"]

    result = rung(stack, "runs", "replay", original)
    as_json = json.loads(rung(stack, "runs", "replay", original, "--json").stdout)

    assert result.exit_code == 0, result.stderr
    new_id = result.stdout.strip()
    assert new_id.startswith("run_") and new_id != original
    run = wait_for(stack, new_id)
    assert (run.status, run.payload, run.output) == (
        "COMPLETED",
        {"name": "re"},
        {"greeting": "hello re"},
    )
    assert run.replay_of == original
    assert as_json["replay_of"] == original and as_json["run_id"] not in (original, new_id)
    assert in_order(rung(stack, "runs", "show", new_id).stdout, "replay of", original)


def test_runs_redrive_resumes_a_failed_run_at_its_failed_step(stack: Deployed) -> None:
    cli_app.FLAGS["bug"] = True
    failed = rung(stack, "trigger", "pipeline", "--wait")
    run_id = failed.stdout.splitlines()[0]
    assert failed.exit_code == 1 and "KeyError" in one_error_line(failed)

    cli_app.FLAGS["bug"] = False  # the fix
    result = rung(stack, "runs", "redrive", run_id)
    run = wait_for(stack, run_id)
    again = rung(stack, "runs", "redrive", run_id)

    assert result.exit_code == 0, result.stderr
    assert in_order(result.stdout, f"{run_id}  pipeline  QUEUED", "resumes at /three#1")
    assert run.status == "COMPLETED" and run.output == ["one", "two", "three"]
    assert again.exit_code == 1
    assert one_error_line(again) == (
        f"error: run {run_id} is COMPLETED, not FAILED; only a failed run can be redriven "
        "(use replay to run it again as a new run)"
    )
    trace = rung(stack, "runs", "trace", run_id).stdout
    assert in_order(
        trace,
        "attempt 1 started",
        "✓ step /one#1",
        "✓ step /two#1",
        "✗ step /three#1",
        "KeyError",
        "✗ failed",
        "↻ redriven",
        "attempt 2 resumes at /three#1",
        "attempt 2 started",
        "resumes at /three#1; 2 completed steps replayed from checkpoints",
        "✓ step /three#1 (try 2)",
        "✓ completed",
    ), trace
    shown = json.loads(rung(stack, "runs", "show", run_id, "--json").stdout)
    assert [r["step"] for r in shown["redrives"]] == ["/three#1"]


def test_runs_show_names_the_parent_and_the_children(stack: Deployed) -> None:
    done = rung(stack, "trigger", "family", "--payload", '{"name": "kid"}', "--wait", "--json")
    parent_id = json.loads(done.stdout)["run_id"]
    assert json.loads(done.stdout)["run"]["output"] == {"greeting": "hello kid"}

    parent = json.loads(rung(stack, "runs", "show", parent_id, "--json").stdout)
    [child] = parent["children"]
    shown_child = rung(stack, "runs", "show", child["run_id"])
    shown_parent = rung(stack, "runs", "show", parent_id)

    assert (child["task_id"], child["status"]) == ("greet", "COMPLETED")
    assert in_order(shown_child.stdout, "parent", parent_id)
    assert in_order(shown_parent.stdout, "children", child["run_id"], "greet", "COMPLETED")
    trace = rung(stack, "runs", "trace", parent_id).stdout
    assert in_order(trace, "→ child /greet#1", child["run_id"], "✓ completed"), trace


# -- tokens -------------------------------------------------------------------------------


def token_of(stack: Deployed, run_id: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = stack.client.list_tokens(run_id)
        if found and stack.client.get_run(run_id).status == "WAITING":
            return found[0].id
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never waited for a token")


def test_tokens_show_and_complete_resume_the_run(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "approve").stdout.strip()
    token_id = token_of(stack, run_id)

    shown = rung(stack, "tokens", "show", token_id)
    shown_json = json.loads(rung(stack, "tokens", "show", token_id, "--json").stdout)
    bad = rung(stack, "tokens", "complete", token_id, "{approved: yes}")
    still_open = stack.client.get_token(token_id).status
    done = rung(stack, "tokens", "complete", token_id, '{"approved": true}', "--json")
    run = wait_for(stack, run_id)
    twice = rung(stack, "tokens", "complete", token_id, "1")

    assert shown.exit_code == 0, shown.stderr
    assert in_order(shown.stdout, token_id, "approval", run_id, "WAITING", "heartbeat")
    assert (shown_json["status"], shown_json["run_id"]) == ("WAITING", run_id)
    assert bad.exit_code == 2
    assert one_error_line(bad).startswith("error: Invalid value for '[VALUE_JSON]': not JSON (")
    assert still_open == "WAITING"  # the bad value wrote nothing
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "COMPLETED"
    assert json.loads(done.stdout)["value"] == {"approved": True}
    assert run.status == "COMPLETED" and run.output == {"answer": {"approved": True}}
    assert twice.exit_code == 1
    assert "was already completed" in one_error_line(twice)


def test_tokens_fail_and_heartbeat(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "approve").stdout.strip()
    token_id = token_of(stack, run_id)
    before = stack.client.get_token(token_id).deadline

    beat = rung(stack, "tokens", "heartbeat", token_id, "--json")
    failed = rung(stack, "tokens", "fail", token_id, "no way")
    run = wait_for(stack, run_id)

    assert beat.exit_code == 0, beat.stderr
    assert json.loads(beat.stdout)["deadline"] >= before.isoformat()
    assert failed.exit_code == 0, failed.stderr
    assert in_order(failed.stdout, token_id, "FAILED", "TokenFailed: no way")
    assert run.output == {"rejected": "no way"}


def test_a_waiting_runs_token_is_in_show_and_trace_json_and_tokens_list(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "approve").stdout.strip()
    token_id = token_of(stack, run_id)

    shown = json.loads(rung(stack, "runs", "show", run_id, "--json").stdout)
    traced = json.loads(rung(stack, "runs", "trace", run_id, "--json").stdout)
    listed = rung(stack, "tokens", "list", run_id)
    listed_json = json.loads(rung(stack, "tokens", "list", run_id, "--json").stdout)
    shown_text = rung(stack, "runs", "show", run_id).stdout
    traced_text = rung(stack, "runs", "trace", run_id).stdout
    rung(stack, "tokens", "complete", token_id, "true")
    done = json.loads(rung(stack, "tokens", "list", run_id, "--json").stdout)

    assert shown["status"] == "WAITING"
    assert shown["waiting_for"].startswith(f"token 'approval' ({token_id}) until ")
    assert shown["available_at"] is not None  # a token wait has its timeout as a timer
    assert [(t["token_id"], t["name"], t["status"]) for t in shown["tokens"]] == [
        (token_id, "approval", "WAITING")
    ]
    assert traced["tokens"] == shown["tokens"]
    assert traced["run"]["waiting_for"] == shown["waiting_for"]
    assert listed.exit_code == 0, listed.stderr
    assert in_order(listed.stdout, "token", "name", "status", token_id, "approval", "WAITING")
    assert [t["token_id"] for t in listed_json] == [token_id]
    assert in_order(shown_text, "waiting for", token_id, "tokens", token_id, "WAITING")
    assert in_order(traced_text, "✓ token /approval#1", token_id, "… waiting for", token_id)
    assert [t["status"] for t in done] == ["COMPLETED"]


def test_tokens_list_of_an_unknown_run_exits_1(stack: Deployed) -> None:
    result = rung(stack, "tokens", "list", "run_01NOSUCHRUN")

    assert result.exit_code == 1
    assert one_error_line(result).startswith("error: no run with id 'run_01NOSUCHRUN'")


def test_a_heartbeat_for_a_token_without_a_heartbeat_timeout_is_refused(stack: Deployed) -> None:
    run_id = rung(stack, "trigger", "sign").stdout.strip()
    token_id = token_of(stack, run_id)
    before = stack.client.get_token(token_id)

    result = rung(stack, "tokens", "heartbeat", token_id)
    rung(stack, "tokens", "complete", token_id, '"signed"')

    assert result.exit_code == 1
    assert one_error_line(result) == (
        f"error: token {token_id} ('signature' of run {run_id}) has no heartbeat timeout, so "
        f"a heartbeat changes nothing: it stays open until its timeout "
        f"({before.timeout_at.isoformat()}); give create_token a heartbeat_timeout to use "
        "heartbeats"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "tok_nosuchtoken"), "error: no token with id 'tok_nosuchtoken'"),
        (("complete", "tok_nosuchtoken", "1"), "error: no token with id 'tok_nosuchtoken'"),
        (("fail", "tok_nosuchtoken", "x"), "error: no token with id 'tok_nosuchtoken'"),
        (("heartbeat", "tok_nosuchtoken"), "error: no token with id 'tok_nosuchtoken'"),
        (("show", "run_123"), "error: 'run_123' is not a token id"),
    ],
)
def test_tokens_of_an_unknown_id_exit_1(
    stack: Deployed, args: tuple[str, ...], message: str
) -> None:
    result = rung(stack, "tokens", *args)

    assert result.exit_code == 1
    assert one_error_line(result).startswith(message)


# -- queues -------------------------------------------------------------------------------


def parked(stack: Deployed, name: str, count: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while stack.client.get_queue(name).parked != count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_queues_list_and_show_the_apps_queue_with_its_limits(stack: Deployed) -> None:
    listed = rung(stack, "queues", "list")
    listed_json = json.loads(rung(stack, "queues", "list", "--json").stdout)
    shown = rung(stack, "queues", "show", "outbox")
    shown_json = json.loads(rung(stack, "queues", "show", "outbox", "--json").stdout)

    assert listed.exit_code == 0, listed.stderr
    assert in_order(listed.stdout, "queue", "state", "running", "parked", "limit", "tasks")
    assert in_order(listed.stdout, "outbox", "active", "0", "0", "2", "none", "post")
    assert [q["name"] for q in listed_json] == ["outbox"]
    assert shown.exit_code == 0, shown.stderr
    assert in_order(shown.stdout, "queue", "outbox", "state", "active", "limit", "2", "post")
    assert shown_json == listed_json[0]
    assert (shown_json["concurrency_limit"], shown_json["tasks"]) == (2, ["post"])


def test_queues_pause_parks_new_runs_and_resume_starts_them(stack: Deployed) -> None:
    paused = rung(stack, "queues", "pause", "outbox", "--json")
    run_ids = [
        rung(stack, "trigger", "post", "--payload", f'{{"name": "p{n}"}}').stdout.strip()
        for n in range(3)
    ]
    all_parked = parked(stack, "outbox", 3)
    shown = rung(stack, "queues", "show", "outbox")
    still = [stack.client.get_run(r).status for r in run_ids]

    resumed = rung(stack, "queues", "resume", "outbox")
    runs = [wait_for(stack, r) for r in run_ids]

    assert paused.exit_code == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    assert all_parked and still == ["QUEUED"] * 3  # none started while paused
    assert in_order(shown.stdout, "state", "paused", "running", "0", "parked", "3")
    assert resumed.exit_code == 0, resumed.stderr
    assert in_order(resumed.stdout, "state", "active")
    assert [r.status for r in runs] == ["COMPLETED"] * 3
    assert [r.output for r in runs] == ["posted to p0", "posted to p1", "posted to p2"]
    assert stack.client.get_queue("outbox").parked == 0


def test_queues_set_limit_overrides_the_code_until_reset(stack: Deployed) -> None:
    raised = rung(stack, "queues", "set-limit", "outbox", "--limit", "5", "--json")
    shown = rung(stack, "queues", "show", "outbox")
    read_only = rung(stack, "queues", "list", app=False)
    too_high = rung(stack, "queues", "set-limit", "outbox", "--per-key-limit", "9")
    kept = stack.client.get_queue("outbox")
    reset = rung(stack, "queues", "set-limit", "outbox", "--reset", "--json")

    assert raised.exit_code == 0, raised.stderr
    data = json.loads(raised.stdout)
    assert (data["concurrency_limit"], data["concurrency_limit_override"]) == (5, 5)
    assert data["code_concurrency_limit"] == 2
    assert in_order(shown.stdout, "limit", "5 (set; code: 2)")
    assert read_only.exit_code == 0, read_only.stderr
    assert in_order(read_only.stdout, "outbox", "5 (set; code: ")  # no --app
    assert too_high.exit_code == 2
    assert one_error_line(too_high) == (
        "error: queue 'outbox': per_key_limit (9) would be above concurrency_limit (5), "
        "the combined cap; nothing changed"
    )
    assert (kept.concurrency_limit, kept.per_key_limit_override) == (5, None)
    assert reset.exit_code == 0, reset.stderr
    assert json.loads(reset.stdout)["concurrency_limit"] == 2
    assert json.loads(reset.stdout)["concurrency_limit_override"] is None


def test_canceled_parked_runs_leave_the_queue_at_once(stack: Deployed) -> None:
    rung(stack, "queues", "pause", "outbox")
    run_ids = [
        rung(stack, "trigger", "post", "--payload", f'{{"name": "c{n}"}}').stdout.strip()
        for n in range(3)
    ]
    all_parked = parked(stack, "outbox", 3)

    with_app = rung(stack, "runs", "cancel", run_ids[0])
    without_app = rung(stack, "runs", "cancel", run_ids[1], app=False)
    after = json.loads(rung(stack, "queues", "show", "outbox", "--json").stdout)
    listed = rung(stack, "queues", "list")
    rung(stack, "queues", "resume", "outbox")
    last = wait_for(stack, run_ids[2])

    assert all_parked
    assert (with_app.exit_code, without_app.exit_code) == (0, 0), without_app.stderr
    assert after["parked"] == 1  # the canceled two wait for no slot
    assert in_order(listed.stdout, "outbox", "paused", "0", "1")
    assert (last.status, last.output) == ("COMPLETED", "posted to c2")
    assert [stack.client.get_run(r).status for r in run_ids[:2]] == ["CANCELED"] * 2
    assert stack.client.get_queue("outbox").parked == 0


def test_queues_without_the_app_show_the_limits_the_code_sets(stack: Deployed) -> None:
    # A worker admits a run of the queue: it records the code's declaration.
    done = rung(stack, "trigger", "post", "--payload", '{"name": "q"}', "--wait")
    listed = rung(stack, "queues", "list", app=False)
    listed_json = json.loads(rung(stack, "queues", "list", "--json", app=False).stdout)
    shown = rung(stack, "queues", "show", "outbox", app=False)

    assert done.exit_code == 0, done.stderr
    [row] = [line.split() for line in listed.stdout.splitlines() if line.startswith("outbox")]
    assert row == ["outbox", "active", "0", "0", "2", "none"]  # limit 2, per key none
    [outbox] = [q for q in listed_json if q["name"] == "outbox"]
    assert (outbox["code_known"], outbox["concurrency_limit"]) == (True, 2)
    assert (outbox["code_concurrency_limit"], outbox["tasks"]) == (2, [])
    assert in_order(shown.stdout, "limit", "2", "per key", "none")


def test_a_queue_whose_code_limits_are_not_known_says_so(stack: Deployed) -> None:
    # A queue item no worker has recorded the code's limits in (an operator paused the
    # queue before any run of it, or an older rung wrote it).
    dynamodb = sessions.client("dynamodb", stack.endpoint_url, REGION)
    table = stack.client._store.table
    DynamoStore(dynamodb, table).set_queue("legacy", paused=True)
    try:
        listed = rung(stack, "queues", "list", app=False)
        shown = json.loads(rung(stack, "queues", "show", "legacy", "--json", app=False).stdout)
    finally:  # the other tests know of one queue
        dynamodb.delete_item(
            TableName=table, Key={"pk": {"S": "QUEUE#legacy"}, "sk": {"S": "#QUEUE"}}
        )

    [row] = [line.split() for line in listed.stdout.splitlines() if line.startswith("legacy")]
    assert row == ["legacy", "paused", "0", "0", "?", "?", "?"]
    assert "?: set in the code; not known until a worker has started or parked a run" in (
        listed.stdout
    )
    assert (shown["code_known"], shown["concurrency_limit"]) == (False, None)


@pytest.mark.parametrize(
    "args",
    [
        ("show", "nope"),
        ("pause", "nope"),
        ("resume", "nope"),
        ("set-limit", "nope", "--limit", "3"),
    ],
)
def test_queues_of_an_unknown_name_exit_1(stack: Deployed, args: tuple[str, ...]) -> None:
    result = rung(stack, "queues", *args)

    assert result.exit_code == 1
    assert one_error_line(result) == "error: no queue 'nope' (known queues: outbox)"
    assert result.stdout == ""


# -- finding the stack ------------------------------------------------------------------


def test_nothing_listening_at_the_endpoint_is_one_line(stack: Deployed) -> None:
    result = rung(stack, "--endpoint-url", "http://127.0.0.1:1", "runs", "list")

    assert result.exit_code == 1
    assert one_error_line(result) == (
        "error: nothing is listening at http://127.0.0.1:1: is `rung dev` running?"
    )


def test_nothing_listening_through_the_environment_too(stack: Deployed) -> None:
    env: dict[str, Any] = {**stack.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    result = CliRunner().invoke(
        main,
        ["--app", APP, "trigger", "greet", "--payload", '{"name": "x"}'],
        env=env,
        prog_name="rung",
    )

    assert result.exit_code == 1
    assert one_error_line(result) == (
        "error: nothing is listening at http://127.0.0.1:1: is `rung dev` running?"
    )


def test_neither_stack_nor_app_asks_for_one(stack: Deployed) -> None:
    result = rung(stack, "runs", "list", app=False, stack_option=False)

    assert result.exit_code == 2
    assert one_error_line(result) == (
        "error: which stack? pass --stack NAME (or set RUNG_STACK), or --app module:attr "
        "(or RUNG_APP) to use the stack rung-<app name>"
    )


def test_the_stack_defaults_to_rung_and_the_app_name(stack: Deployed) -> None:
    result = rung(stack, "runs", "list", stack_option=False)

    assert result.exit_code == 1
    assert one_error_line(result).startswith(
        f"error: no stack 'rung-clitest' at {stack.endpoint_url}"
    )


def test_the_stack_comes_from_rung_stack(stack: Deployed) -> None:
    env = {**stack.env, "RUNG_STACK": stack.name}
    result = CliRunner().invoke(
        main, ["runs", "list", "--limit", "1", "--json"], env=env, prog_name="rung"
    )

    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 1


def test_profile_gives_the_credentials_and_the_region(
    stack: Deployed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "aws-config"
    config.write_text(
        "[profile here]\nregion = us-east-1\naws_access_key_id = test\n"
        "aws_secret_access_key = test\n"
        "[profile elsewhere]\nregion = eu-west-1\naws_access_key_id = test\n"
        "aws_secret_access_key = test\n"
    )
    # The stack is in us-east-1 of the emulator: only the profile says which region.
    env = {
        **stack.env,
        "AWS_CONFIG_FILE": str(config),
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_DEFAULT_REGION": None,
    }
    monkeypatch.setattr(sessions, "_sessions", {})
    monkeypatch.setattr(sessions, "_profile_regions", {})
    monkeypatch.setattr(sessions, "_profile", None)  # (--profile sets it for the process)

    def runs_list(*profile: str) -> Result:
        return CliRunner().invoke(
            main,
            [*profile, "--stack", stack.name, "runs", "list", "--limit", "1", "--json"],
            env=env,
            prog_name="rung",
        )

    here = runs_list("--profile", "here")
    assert here.exit_code == 0, here.stderr
    elsewhere = runs_list("--profile", "elsewhere")
    assert elsewhere.exit_code == 1
    assert f"no stack {stack.name!r}" in one_error_line(elsewhere)  # looked in eu-west-1
    monkeypatch.setattr(sessions, "_profile_regions", {})
    monkeypatch.setattr(sessions, "_profile", None)
    by_env = CliRunner().invoke(
        main,
        ["--stack", stack.name, "runs", "list", "--json"],
        env={**env, "AWS_PROFILE": "here"},
        prog_name="rung",
    )
    assert by_env.exit_code == 0, by_env.stderr
    unknown = runs_list("--profile", "nobody")
    assert unknown.exit_code == 1
    assert "nobody" in one_error_line(unknown) and "could not be found" in unknown.stderr


def test_runs_list_pages_with_the_cursor_it_prints_and_filters_by_time_and_tag(
    stack: Deployed,
) -> None:
    tag = f"page-{secrets.token_hex(4)}"
    ids = [
        json.loads(
            rung(
                stack, "trigger", "greet", "--payload", '{"name": "p"}', "--tag", tag, "--json"
            ).stdout
        )["run_id"]
        for _ in range(3)
    ]

    first = rung(stack, "runs", "list", "--tag", tag, "--limit", "2", "--json")
    cursor = first.stderr.split("--cursor ", 1)[1].strip()
    rest = rung(stack, "runs", "list", "--tag", tag, "--limit", "2", "--cursor", cursor, "--json")
    recent = rung(stack, "runs", "list", "--tag", tag, "--since", "1h", "--json")
    future = rung(stack, "runs", "list", "--tag", tag, "--since", "2999-01-01T00:00:00")
    bad = rung(stack, "runs", "list", "--since", "yesterday")
    wrong = rung(stack, "runs", "list", "--task", "greet", "--cursor", cursor)

    listed = [r["run_id"] for r in json.loads(first.stdout) + json.loads(rest.stdout)]
    assert sorted(listed) == sorted(ids) and len(listed) == 3
    assert "--cursor" not in rest.stderr  # the last page
    assert sorted(r["run_id"] for r in json.loads(recent.stdout)) == sorted(ids)
    assert future.stdout.strip() == "no runs match"
    assert bad.exit_code != 0 and "neither a time" in bad.stderr
    assert "same filters" in one_error_line(wrong)
