"""A chaos soak on `rung dev`: worker processes SIGKILLed a few times a second while
duplicate messages are injected. Nothing may be lost, no completed step may run
twice, and the dead-letter queue must end up holding the poison sent on purpose and
nothing else: a message that only met dead workers, busy runs or its own copies is
not poison (docs/architecture.md, "Only poison reaches the dead-letter queue").
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rung._dev import DevStack
from tests.integration.test_dev_processes import alive, dev_options

pytestmark = pytest.mark.slow

RUNS = 120
#: Injected copies of run messages on top of the one each trigger sends.
DUPLICATES = 240
#: A kill every KILL_EVERY seconds or so, of a random worker process (busy or idle,
#: handling a batch or still starting up).
KILL_EVERY = (0.2, 0.8)


@dataclass
class Chaos:
    """What the soak did, for the assertions and for the failure messages."""

    killed: list[int] = field(default_factory=list)
    duplicates: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def worker_function_pids(dev: DevStack) -> list[int]:
    """Worker processes of the worker function (not the reconciler's)."""
    pids = []
    for pid in dev.worker_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"worker.lambda_handler" in cmdline:
            pids.append(pid)
    return pids


def kill_workers(dev: DevStack, chaos: Chaos, rng: random.Random) -> None:
    while not chaos.stop.wait(rng.uniform(*KILL_EVERY)):
        pids = worker_function_pids(dev)
        if pids:
            pid = rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            chaos.killed.append(pid)


def inject_duplicates(
    dev: DevStack, chaos: Chaos, run_ids: list[str], unfinished: set[str], rng: random.Random
) -> None:
    """Send copies of run messages, for runs still in flight, through SQS's SendMessage."""
    queue_url = dev.stack.outputs["QueueUrl"]
    while chaos.duplicates < DUPLICATES and not chaos.stop.wait(0.1):
        candidates = [r for r in run_ids if r in unfinished]
        if not candidates:
            return
        body = json.dumps({"v": 1, "run_id": rng.choice(candidates)})
        dev.sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        chaos.duplicates += 1


def queue_depth(dev: DevStack, url: str) -> int:
    attributes = dev.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def dead_letters(dev: DevStack) -> list[dict[str, Any]]:
    """Every message in the DLQ, read through SQS (each received once, then left hidden)."""
    url = dev.stack.outputs["DeadLetterQueueUrl"]
    found: list[dict[str, Any]] = []
    while True:
        out = dev.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=600,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = out.get("Messages", [])
        if not messages:
            return found
        found.extend(messages)


@pytest.mark.timeout(400)
def test_a_soak_with_kill_9_and_duplicates_loses_nothing_and_dead_letters_only_poison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    effects_file = tmp_path / "effects.log"
    monkeypatch.setenv("RUNG_TEST_EFFECTS", str(effects_file))
    # The template as shipped: its batches of 10 (a kill takes the whole batch down, as
    # on Lambda) and its MaxReceiveCount. A 4-second lease (a killed run is taken over
    # quickly, a live one renews in time on a loaded machine), and a reconciler grace
    # longer than the soak, so that every copy in flight is the test's or the engine's.
    options = dev_options(tmp_path, workers=3, lease_seconds=4, reconcile_grace=600)
    rng = random.Random(9)
    chaos = Chaos()
    garbage = "this is not a rung message"
    unknown = '{"v":1,"run_id":"run_00000000000000000000000000"}'
    with DevStack(options) as dev:
        queue_url = dev.stack.outputs["QueueUrl"]
        dead_letter_url = dev.stack.outputs["DeadLetterQueueUrl"]
        # Poison, as a control: the DLQ must keep working for what really is poison.
        for body in (garbage, unknown):
            dev.sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        run_ids = [dev.client.trigger("soak", n).run_id for n in range(RUNS)]
        unfinished = set(run_ids)
        threads = [
            threading.Thread(target=kill_workers, args=(dev, chaos, rng), daemon=True),
            threading.Thread(
                target=inject_duplicates,
                args=(dev, chaos, run_ids, unfinished, random.Random(10)),
                daemon=True,
            ),
        ]
        for thread in threads:
            thread.start()
        runs = {}
        started = time.monotonic()
        deadline = started + 300
        try:
            while unfinished and time.monotonic() < deadline:
                for run_id in sorted(unfinished):
                    run = dev.client.get_run(run_id)
                    if run.status.is_terminal:
                        runs[run_id] = run
                        unfinished.discard(run_id)
                time.sleep(0.2)
        finally:
            chaos.stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert not unfinished, f"{len(unfinished)} runs never ended: {sorted(unfinished)[:5]}"
        ran_for = time.monotonic() - started
        # Every copy still in the queue is now either a stale duplicate (acked on its
        # next receive) or the poison on its way to the DLQ: wait until none is left.
        deadline = time.monotonic() + 90
        while queue_depth(dev, queue_url) and time.monotonic() < deadline:
            time.sleep(0.5)
        left_in_queue = queue_depth(dev, queue_url)
        dead = dead_letters(dev)
        histories = {run_id: dev.client.history(run_id) for run_id in run_ids}
        assert queue_depth(dev, dead_letter_url) == len(dead)

    dead_bodies = Counter(m["Body"] for m in dead)
    receive_counts = Counter(m["Attributes"]["ApproximateReceiveCount"] for m in dead)
    summary = (
        f"{len(chaos.killed)} kills, {chaos.duplicates} duplicates, "
        f"{len(dead)} dead letters (receive counts {dict(receive_counts)}), "
        f"{left_in_queue} left in the work queue; the runs took {ran_for:.0f} s"
    )
    print(summary)
    assert len(chaos.killed) >= 10, summary  # the chaos really happened
    assert chaos.duplicates >= RUNS, summary
    assert [str(r.status) for r in runs.values()] == ["COMPLETED"] * RUNS, summary
    assert all(r.output == 0 + 1 + 2 + 3 for r in runs.values())
    assert left_in_queue == 0, summary
    # Only the poison, each once: no message of a healthy run reached the DLQ.
    assert dead_bodies == {garbage: 1, unknown: 1}, summary

    # No completed step ran twice. A step runs again only after a kill cut it off
    # between its side effect and its checkpoint: such an execution is the last one
    # of a killed process, in an earlier attempt than the one that checkpointed it.
    lines = [line.split() for line in effects_file.read_text().splitlines()]
    last_of: dict[int, int] = {}
    for index, (_, _, _, pid, _) in enumerate(lines):
        last_of[int(pid)] = index
    cut_off = {last_of[pid] for pid in chaos.killed if pid in last_of}
    executions: defaultdict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for index, (ran_run, step, _, _, attempt) in enumerate(lines):
        executions[(ran_run, step)].append((index, int(attempt)))
    for run_id in run_ids:
        recorded = {
            str(e.step): int(e.attempt or 0)
            for e in histories[run_id]
            if str(e.type) == "StepSucceeded"
        }
        assert sorted(recorded) == [f"/s{n}#1" for n in range(4)]
        for step_id, checkpointed_by in recorded.items():
            ran = executions[(run_id, step_id)]
            assert [a for _, a in ran].count(checkpointed_by) == 1, (run_id, step_id, ran)
            repeats = [i for i, a in ran if a != checkpointed_by]
            assert all(i in cut_off for i in repeats), (run_id, step_id, ran, summary)


@pytest.mark.timeout(300)
def test_a_worker_process_that_died_idle_is_replaced_before_it_is_given_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_TEST_EFFECTS", str(tmp_path / "effects.log"))
    with DevStack(dev_options(tmp_path, workers=1)) as dev:
        [pid] = worker_function_pids(dev)
        os.kill(pid, signal.SIGKILL)  # dies between invocations, holding no message
        deadline = time.monotonic() + 30
        while alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} did not die"
            time.sleep(0.05)
        run = dev.wait(dev.client.trigger("resume", {"x": 1}).run_id, timeout=90)
        crashes = list(dev.crashes)
    # Lambda gives a batch to a live execution environment only: the run's message was
    # not handed to the dead process (which would count as a crash holding it, and
    # raise its receive count for nothing).
    assert crashes == []
    assert run.status == "COMPLETED" and run.output == 11
    assert run.attempt == 2  # its first attempt's deliberate error, not a lost worker
