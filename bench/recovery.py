"""Crash recovery: how soon a dead worker's run is retried, and what the heartbeat costs.

1. Recovery on ``rung dev`` (real worker processes, the template's stack on the embedded
   emulator, rung dev's default 10 s lease): one run per way a worker dies, each in a
   step of its first attempt: kill -9 from outside, ``os._exit(1)``, a segfault
   (``ctypes.string_at(0)``), out of memory (resident memory grown past the function's
   MemorySize, then SIGKILL as Lambda's sandbox does: see ``die`` in
   tests/integration/dev_app.py for why it is simulated so) and the function timeout
   (the step outlives the 60 s FunctionTimeout; rung dev kills the process 2 s after
   its deadline, as Lambda stops it). Recovery is measured from the death (the task's
   own mark just before it dies; the kill; for the timeout, the moment rung dev killed
   it) to the retry running the step again (the task's mark on attempt 2).

2. The heartbeat's cost, counted at the botocore layer on the emulator with a short
   lease (1.5 s; beats every 0.5 s) and scaled to the template's 30 s lease (a beat
   every 10 s): DynamoDB renewals (fenced UpdateItems of the run item, with their WRUs
   from the item's size, in the table and in the indexes), and the SQS visibility
   extensions of an invocation's batch of 10 messages (ChangeMessageVisibilityBatch).

Run it: ``.venv/bin/python bench/recovery.py`` (about two minutes). Results go to
bench/results/recovery.json. Nothing here is asserted; tests/integration/
test_dev_processes.py checks that each death is retried and completes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from _dynamo_units import index_writes, item_size, write_units  # bench/ is on the path
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.integration.dev_app, the rung dev test app

import rung  # noqa: E402
import rung.testing  # noqa: E402
from rung._aws.sqs import SqsQueue  # noqa: E402
from rung._dev import DevOptions, DevStack  # noqa: E402
from rung._engine.config import WorkerConfig  # noqa: E402
from rung._engine.heartbeat import Heartbeat  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "recovery.json"
KINDS = ("kill", "exit", "segfault", "oom", "timeout")
PRICE_WRU = 0.625  # $ per million DynamoDB write request units (as bench/api_calls.py)
PRICE_SQS = 0.40  # $ per million SQS requests
AWS_LEASE = 30.0  # template.yaml's RUNG_LEASE_SECONDS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(path: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear")


def recovery() -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="rung-recovery-"))
    os.environ["RUNG_TEST_EFFECTS"] = str(work / "effects.log")
    options = DevOptions(
        app="tests.integration.dev_app:app",
        port=_free_port(),
        state_dir=work / ".rung",
        workers=len(KINDS),
        reload=False,
        print_events=False,
        parameters={"BatchSize": "1"},  # a death takes only its own run
        code_root=ROOT,
    )
    marks = {how: work / f"{how}.mark" for how in KINDS}
    with DevStack(options) as dev:
        handles = {
            how: dev.client.trigger("crash", {"how": how, "mark": str(mark)})
            for how, mark in marks.items()
        }
        pid = int(_wait_for(marks["kill"]).split()[0])
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        runs = {how: dev.wait(h.run_id, timeout=300) for how, h in handles.items()}
        seen = {
            body: (how, at)
            for (_, how, bodies), at in zip(dev.crashes, dev.crash_times, strict=True)
            for body in bodies
        }
        histories = {how: dev.client.history(h.run_id) for how, h in handles.items()}
    rows = []
    for how, handle in handles.items():
        ended, detected = next(
            (ended, at) for body, (ended, at) in seen.items() if handle.run_id in body
        )
        if how == "kill":
            died = killed_at
        elif how == "timeout":
            died = detected
        else:
            died = float(marks[how].read_text().split()[1])
        retried = float(Path(f"{marks[how]}.retry").read_text().split()[1])
        errors = [e.error.type for e in histories[how] if e.error is not None]
        rows.append(
            {
                "kind": how,
                "worker": ended,
                "recorded_as": errors[0] if errors else None,
                "recovery_s": round(retried - died, 2),
                "status": str(runs[how].status),
                "attempts": runs[how].attempt,
                "lease_s": options.lease_seconds,
            }
        )
    return rows


def _hold_app() -> rung.App:
    app = rung.App("recoverybench")

    @app.task(id="hold")
    def hold(ctx: rung.Context, seconds: float) -> str:
        def sleep() -> str:
            time.sleep(seconds)
            return "slept"

        return ctx.step("sleep", sleep)

    return app


def heartbeat_cost(seconds: float = 6.0, lease: float = 1.5) -> dict[str, Any]:
    renewals = 0
    lock = threading.Lock()

    def count(params: dict[str, Any], **_: Any) -> None:
        nonlocal renewals
        if params.get("UpdateExpression") == "SET lease_until = :lease":
            with lock:
                renewals += 1

    config = WorkerConfig(lease_duration=timedelta(seconds=lease))
    with rung.testing.LocalEngine(
        _hold_app(), virtual_time=False, lease_duration=config.lease_duration, telemetry=False
    ) as engine:
        engine.dynamodb.meta.events.register("before-parameter-build.dynamodb.UpdateItem", count)
        run_id = engine.trigger("hold", seconds).run_id
        engine.wait(run_id, timeout=120)
        item = engine.dynamodb.get_item(
            TableName=engine.table_name,
            Key={"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": "#RUN"}},
        )["Item"]
        # The batch's visibility: ten messages held by an invocation for as long.
        url, dlq = SqsQueue.create(
            engine.sqs, f"rung-recoverybench-{os.getpid()}", visibility_timeout=timedelta(hours=1)
        )
        queue = SqsQueue(engine.sqs, url)
        for n in range(10):
            queue.send(f"run_{n:026d}")
        batch = queue.receive(max_messages=10, wait_seconds=1)
        changes = queue.hold(batch, config.message_hold)
        extended = [0]

        def beat() -> bool:
            extended[0] += queue.extend(config.message_hold)
            return True

        with Heartbeat(beat, config.heartbeat_interval.total_seconds(), "bench"):
            time.sleep(seconds)
        queue.release_all()
        engine.sqs.delete_queue(QueueUrl=url)
        engine.sqs.delete_queue(QueueUrl=dlq)
    renewed = dict(item, lease_until={"N": "1" + item["lease_until"]["N"]})
    table_wru = write_units(item_size(item))
    index_wru = index_writes(item, renewed)
    beats_per_minute = 60 / (AWS_LEASE / 3)
    return {
        "measured": {
            "lease_s": lease,
            "step_s": seconds,
            "renewals": renewals,
            "expected_renewals": int(seconds / config.heartbeat_interval.total_seconds()),
            "batch_messages": len(batch),
            "visibility_requests": changes + extended[0],
        },
        "per_beat": {
            "update_item": 1,
            "wru_table": table_wru,
            "wru_indexes": index_wru,
            "sqs_requests_per_10_messages": 1,
        },
        "aws_lease_s": AWS_LEASE,
        "beats_per_minute": beats_per_minute,
        "per_minute_of_attempt": {
            "update_item": beats_per_minute,
            "wru": beats_per_minute * (table_wru + index_wru),
            "sqs_requests": beats_per_minute,
        },
        "usd_per_hour_of_attempt": round(
            60 * beats_per_minute * ((table_wru + index_wru) * PRICE_WRU + PRICE_SQS) / 1e6, 6
        ),
    }


def main() -> None:
    console = Console()
    rows = recovery()
    table = Table(title="Crash recovery on rung dev (lease 10 s, heartbeat every 3.3 s)")
    for column in ("death", "rung dev saw", "recorded as", "death -> retry", "run"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["kind"],
            row["worker"],
            str(row["recorded_as"]),
            f"{row['recovery_s']:.1f} s",
            f"{row['status']} in {row['attempts']} attempts",
        )
    console.print(table)
    cost = heartbeat_cost()
    measured = cost["measured"]
    console.print(
        f"heartbeat, measured with a {measured['lease_s']} s lease over a "
        f"{measured['step_s']} s step: {measured['renewals']} lease renewals (expected "
        f"{measured['expected_renewals']}), {measured['visibility_requests']} "
        f"ChangeMessageVisibilityBatch for a batch of {measured['batch_messages']} "
        "(1 + one per beat)"
    )
    per = cost["per_beat"]
    costs = Table(title=f"Heartbeat cost with the template's {AWS_LEASE:g} s lease (a beat / 10 s)")
    for column in ("request", "per beat", "per minute of attempt", "WRU per minute"):
        costs.add_column(column)
    minute = cost["per_minute_of_attempt"]
    costs.add_row(
        "DynamoDB UpdateItem (renew_lease)",
        f"1 ({per['wru_table']} WRU table + {per['wru_indexes']} indexes)",
        f"{minute['update_item']:g}",
        f"{minute['wru']:g}",
    )
    costs.add_row(
        "SQS ChangeMessageVisibilityBatch (per 10 messages in hand)",
        "1 (+1 when the invocation starts)",
        f"{minute['sqs_requests']:g}",
        "-",
    )
    console.print(costs)
    console.print(f"about ${cost['usd_per_hour_of_attempt']:.4f} per hour of running attempt")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"recovery": rows, "heartbeat": cost}, indent=2) + "\n")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
