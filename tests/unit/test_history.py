"""History order: attempt by attempt; within an attempt, checkpoints' events in time
order, ties broken by nesting (parents first) and position, whatever order the
checkpoints are read in."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

from rung._engine.history import build_history
from rung.models import Run, RunStatus, StepRecord

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
SAME = T0 + timedelta(milliseconds=5)  # one millisecond for everything below


def _run(finished_at: datetime = T0 + timedelta(seconds=10)) -> Run:
    return Run(
        run_id="run_x",
        task_id="t",
        status=RunStatus.COMPLETED,
        attempt=1,
        payload=None,
        created_at=T0,
        updated_at=T0,
        attempt_started_at=T0,
        finished_at=finished_at,
    )


def _step(step_id: str, seq: int, start: datetime, end: datetime, kind: str = "step") -> StepRecord:
    return StepRecord.ended(
        step_id, seq, run_attempt=1, started_at=start, finished_at=end, kind=kind
    )


# A step, then a map whose batch, branch and inner step all fall in one millisecond
# (stored with milliseconds, as checkpoints written before microseconds were).
MAP_IN_ONE_MS = [
    _step("/a#1", 1, T0, T0 + timedelta(milliseconds=1)),
    _step("/map#1", 2, SAME, SAME, kind="map"),
    _step("/map#1[0]", 2, SAME, SAME, kind="branch"),
    _step("/map#1[0]/s#1", 1, SAME, SAME),
    _step("/map#1[1]", 2, SAME, SAME, kind="branch"),
    _step("/map#1[1]/s#1", 1, SAME, SAME),
]

EXPECTED = [
    ("RunTriggered", None),
    ("AttemptStarted", None),
    ("StepStarted", "/a#1"),
    ("StepSucceeded", "/a#1"),
    ("StepStarted", "/map#1"),
    ("StepStarted", "/map#1[0]"),
    ("StepStarted", "/map#1[0]/s#1"),
    ("StepSucceeded", "/map#1[0]/s#1"),
    ("StepSucceeded", "/map#1[0]"),
    ("StepStarted", "/map#1[1]"),
    ("StepStarted", "/map#1[1]/s#1"),
    ("StepSucceeded", "/map#1[1]/s#1"),
    ("StepSucceeded", "/map#1[1]"),
    ("StepSucceeded", "/map#1"),
    ("RunCompleted", None),
]


def _shape(records: list[StepRecord]) -> list[tuple[str, str | None]]:
    return [(str(e.type), e.step) for e in build_history(_run(), records)]


def test_parents_come_before_children_and_end_after_them_within_one_millisecond() -> None:
    assert _shape(MAP_IN_ONE_MS) == EXPECTED


def test_the_order_does_not_depend_on_the_order_checkpoints_are_read_in() -> None:
    rand = random.Random(7)
    for _ in range(50):
        shuffled = MAP_IN_ONE_MS[:]
        rand.shuffle(shuffled)
        assert _shape(shuffled) == EXPECTED


def test_events_are_in_time_order_across_interleaved_checkpoints() -> None:
    # Two branches running at once: their events interleave by time.
    at = [T0 + timedelta(milliseconds=n) for n in range(10)]
    records = [
        _step("/map#1", 1, at[1], at[8], kind="map"),
        _step("/map#1[0]", 1, at[1], at[6], kind="branch"),
        _step("/map#1[0]/s#1", 1, at[2], at[5]),
        _step("/map#1[1]", 1, at[1], at[7], kind="branch"),
        _step("/map#1[1]/s#1", 1, at[3], at[4]),
    ]
    for permutation in itertools.permutations(records):
        history = build_history(_run(), list(permutation))
        stamps = [e.timestamp for e in history]
        assert stamps == sorted(stamps)
        assert [(str(e.type), e.step) for e in history][2:6] == [
            ("StepStarted", "/map#1"),
            ("StepStarted", "/map#1[0]"),
            ("StepStarted", "/map#1[1]"),
            ("StepStarted", "/map#1[0]/s#1"),
        ]


def test_a_token_that_timed_out_during_a_longer_wait_ends_first() -> None:
    token_deadline = T0 + timedelta(seconds=3)
    wait_end = T0 + timedelta(seconds=6)
    records = [
        _step("/answer#1", 1, T0, T0, kind="token"),
        StepRecord(
            step_id="/wait#1",
            seq=2,
            outcome="succeeded",
            attempt=1,
            run_attempt=1,
            started_at=T0,
            finished_at=wait_end,
            kind="wait",
            wake_at=wait_end,
        ),
        _step("/answer:wait#1", 3, T0, token_deadline, kind="token_wait"),
    ]
    history = build_history(_run(finished_at=wait_end), records)
    assert [(str(e.type), e.step) for e in history if e.step] == [
        ("TokenCreated", "/answer#1"),
        ("WaitStarted", "/wait#1"),
        ("WaitStarted", "/answer:wait#1"),
        ("WaitEnded", "/answer:wait#1"),
        ("WaitEnded", "/wait#1"),
    ]
