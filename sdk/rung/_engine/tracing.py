"""A run's trace in X-Ray: the segments one attempt adds, built as the attempt goes and
sent (``rung._aws.xray``) when it ends, in one request or, on Lambda, one UDP datagram
each to the daemon.

The trace of a run (docs/observability.md):

- the **run segment** (named after the task, from trigger to end; parent: the code that
  triggered the run, when it was traced), sent in progress by the run's first attempt
  and complete by the attempt that ends it;
- one **attempt segment** per invocation that worked on the run (parent: the run
  segment), with a subsegment per step executed (not per step replayed: those are
  counted in the attempt's metadata), per token created, per child run started and per
  flow-control park; an attempt lost to a crash is written by the attempt that takes
  over, with the error ``WorkerLost``;
- one **wait** subsegment per durable wait (timer, token, child runs, condition), under
  the run segment, from the wait's start to its end, sent by the attempt that saw it end.

The same documents go as OpenTelemetry spans to an OTLP collector when the environment
asks for it (``rung._engine.otlp``); X-Ray and OTLP are each on or off on their own.

Every segment carries the annotations ``rung_run_id``, ``rung_task`` and
``rung_attempt`` (``rung_step_id`` on a step's, ``rung_status`` on an attempt's and the
run's), so the X-Ray filter ``annotation.rung_run_id = "run_..."`` finds the run.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rung._aws.xray import XRay
from rung._engine.otlp import OtlpExporter
from rung._util import callbacks
from rung._util.clock import to_ms
from rung._util.traces import LAMBDA_TRACE_ENV, TraceContext, segment_id
from rung.errors import ErrorInfo
from rung.models import Run, StepRecord

#: Checkpoint kinds that are durable waits (their span runs from start to end).
WAIT_KINDS = {"wait": "timer", "token_wait": "token", "child_wait": "children", "deadline": "timer"}
#: Attempt outcomes that are errors (the segment's ``fault``), not the run's plan.
FAULTS = frozenset({"failed", "worker lost", "timed out"})


class AttemptTrace:
    """The segments of one attempt (see the module docstring). Thread-safe: branches of
    ``ctx.map`` record steps from several threads."""

    def __init__(
        self,
        xray: XRay | None,
        run: Run,
        started_at: datetime,
        otlp: OtlpExporter | None = None,
    ) -> None:
        self.context = TraceContext.parse(run.trace)
        self.enabled = (
            (xray is not None or otlp is not None)
            and self.context is not None
            and self.context.sampled
        )
        self._xray = xray
        self._otlp = otlp
        self._run = run
        self._started_at = started_at
        self._id = segment_id()
        self._subsegments: list[dict[str, Any]] = []
        self._documents: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        #: checkpoints read at the start (replayed steps are not spans of their own)
        self.checkpoints_loaded = 0

    @property
    def segment_id(self) -> str:
        return self._id

    def _annotations(self, **extra: Any) -> dict[str, Any]:
        return {
            "rung_run_id": self._run.run_id,
            "rung_task": self._run.task_id,
            "rung_attempt": self._run.attempt,
            **({"rung_version": self._run.version} if self._run.version else {}),
            **extra,
        }

    # -- what happens during the attempt -------------------------------------------

    def checkpoint(self, record: StepRecord) -> None:
        """A checkpoint this attempt wrote: a step executed, a wait ended, a token made."""
        if not self.enabled or record.outcome not in ("succeeded", "failed"):
            return  # a start marker or a wait begun: its end is what is traced
        end = record.finished_at or record.started_at
        if record.kind in WAIT_KINDS:
            self._wait(record, end)
        elif record.kind == "step":
            size = len(record.result_json.encode()) if record.result_json is not None else 0
            self._add(
                _span(
                    f"step {record.step_id}",
                    record.started_at,
                    end,
                    self._annotations(
                        rung_step_id=record.step_id, rung_step_attempt=record.attempt
                    ),
                    {"result_bytes": size, "outcome": record.outcome},
                    record.error,
                )
            )
        elif record.kind == "token":
            self._add(
                _span(
                    f"token {record.step_id}",
                    record.started_at,
                    end,
                    self._annotations(rung_step_id=record.step_id),
                    {"token": callbacks.without_secret(record.result_json)},  # (no URL secret)
                    None,
                )
            )
        else:  # map / parallel / branch / group: the steps inside are spans of their own
            self._add(
                _span(
                    f"{record.kind} {record.step_id}",
                    record.started_at,
                    end,
                    self._annotations(rung_step_id=record.step_id),
                    {"outcome": record.outcome},
                    record.error,
                )
            )

    def timers_passed(self, records: Iterable[StepRecord], woke_at: datetime | None) -> None:
        """The timers (``ctx.wait``) this invocation was woken for. A timer's end writes
        nothing (replay finds its time passed), so its span is sent by the invocation
        that starts at its wake time: the run item's ``available_at``, which the claim
        leaves as the suspension set it."""
        if not self.enabled or woke_at is None:
            return
        for record in records:
            if (
                record.kind == "wait"
                and record.outcome == "waiting"
                and record.wake_at is not None
                and to_ms(record.wake_at) == to_ms(woke_at)
            ):
                self._wait(record, record.wake_at)

    def _wait(self, record: StepRecord, end: datetime) -> None:
        assert self.context is not None
        kind = WAIT_KINDS[record.kind]
        if record.error is None:
            ended = {"timer": "elapsed", "token": "completed"}.get(kind, "ended")
        elif record.error.type == "TokenTimedOut":
            ended = "timed out"
        else:
            ended = f"failed: {record.error.type}"
        document = _span(
            f"wait {record.step_id}",
            record.started_at,
            end,
            self._annotations(rung_step_id=record.step_id, rung_wait_kind=kind),
            {"ended": ended},
            record.error if kind != "timer" else None,
        )
        document.update(
            type="subsegment", trace_id=self.context.trace_id, parent_id=self.context.run_segment
        )
        with self._lock:
            self._documents.append(document)

    def step_failed(
        self,
        step_id: str,
        attempt: int,
        started_at: datetime,
        failed_at: datetime,
        error: ErrorInfo,
    ) -> None:
        """A step failed and will be retried (its failure is no checkpoint)."""
        if self.enabled:
            self._add(
                _span(
                    f"step {step_id}",
                    started_at,
                    failed_at,
                    self._annotations(rung_step_id=step_id, rung_step_attempt=attempt),
                    {"outcome": "retried"},
                    error,
                )
            )

    def child_started(
        self, step_id: str, at: datetime, child_id: str, task_id: str, child: TraceContext
    ) -> None:
        """A child run was started: the span names it and its trace (the child's run
        segment names this run back)."""
        if self.enabled:
            self._add(
                _span(
                    f"child {step_id}",
                    at,
                    at,
                    self._annotations(
                        rung_step_id=step_id, rung_child_run_id=child_id, rung_child_task=task_id
                    ),
                    {"child_run_id": child_id, "child_trace_id": child.trace_id},
                    None,
                )
            )

    def parked(self, queue: str, key: str | None, at: datetime, reason: str) -> None:
        """The run waits for a slot of its flow-control queue (or its rate)."""
        if self.enabled:
            self._add(
                _span(
                    f"park {queue}",
                    at,
                    at,
                    self._annotations(rung_queue=queue),
                    {"queue": queue, "concurrency_key": key, "reason": reason},
                    None,
                )
            )

    def _add(self, subsegment: dict[str, Any]) -> None:
        with self._lock:
            self._subsegments.append(subsegment)

    # -- the end ---------------------------------------------------------------------

    def finish(
        self,
        status: str,
        ended_at: datetime,
        error: ErrorInfo | None = None,
        run_ended: str | None = None,
    ) -> None:
        """Send the attempt's segments. ``status``: how the attempt ended (``completed``,
        ``retrying``, ``waiting``, ``failed``...); ``run_ended``: the run's terminal
        status when this attempt ended the run (its run segment is completed too)."""
        if not self.enabled:
            return
        assert self.context is not None
        context = self.context
        attempt = _span(
            self._run.task_id,
            self._started_at,
            ended_at,
            self._annotations(rung_status=status),
            {
                "checkpoints_loaded": self.checkpoints_loaded,
                # on Lambda: the invocation's own trace (Lambda's segments are there)
                "lambda_trace": os.environ.get(LAMBDA_TRACE_ENV),
            },
            error if status in FAULTS else None,
        )
        attempt.update(trace_id=context.trace_id, parent_id=context.run_segment, id=self._id)
        if error is not None and status not in FAULTS:
            attempt["error"] = True  # the run's plan (a retry), not a fault
            attempt["cause"] = _cause(error)
        with self._lock:
            attempt["subsegments"] = sorted(self._subsegments, key=lambda s: s["start_time"])
            documents = [attempt, *self._documents]
        if self._run.lease_token <= 1 and run_ended is None:
            documents.append(self.run_segment(None, None))  # in progress until the end
        elif run_ended is not None:
            documents.append(self.run_segment(run_ended, ended_at, error))
        if self._xray is not None:
            self._xray.put(_fit(documents))
        if self._otlp is not None:
            self._otlp.export(documents)

    def run_segment(
        self, status: str | None, ended_at: datetime | None, error: ErrorInfo | None = None
    ) -> dict[str, Any]:
        """The run's own segment: in progress while ``status`` is None."""
        assert self.context is not None
        context = self.context
        document = _span(
            self._run.task_id,
            self._run.created_at,
            ended_at,
            {
                "rung_run_id": self._run.run_id,
                "rung_task": self._run.task_id,
                **({"rung_status": status} if status else {}),
            },
            {
                "parent_run_id": self._run.parent_run_id,
                "parent_trace_id": self._run.parent_trace_id,
                "replay_of": self._run.replay_of,
            },
            error if status in ("FAILED", "TIMED_OUT") else None,
        )
        document.update(trace_id=context.trace_id, id=context.run_segment)
        if context.caller is not None:
            document["parent_id"] = context.caller
        return document


def _span(
    name: str,
    start: datetime,
    end: datetime | None,
    annotations: dict[str, Any],
    metadata: dict[str, Any],
    error: ErrorInfo | None,
) -> dict[str, Any]:
    span: dict[str, Any] = {
        "name": _x_ray_name(name),
        "id": segment_id(),
        "start_time": start.timestamp(),
        "annotations": {k: v for k, v in annotations.items() if v is not None},
        "metadata": {"rung": {k: v for k, v in metadata.items() if v is not None}},
    }
    if end is None:
        span["in_progress"] = True
    else:
        span["end_time"] = max(end, start).timestamp()
    if error is not None:
        span["fault"] = True
        span["cause"] = _cause(error)
    return span


def _x_ray_name(name: str) -> str:
    """A name X-Ray takes: at most 200 characters of letters, digits, whitespace and
    ``_ . : / % & # = + \\ - @``; a map branch's ``[3]`` becomes ``.3`` and anything else
    ``_`` (the exact step id is in the ``rung_step_id`` annotation)."""
    name = name.replace("[", ".").replace("]", "")
    return re.sub(r"[^\w\s.:/%&#=+\\@-]", "_", name)[:200]


def _cause(error: ErrorInfo) -> dict[str, Any]:
    return {
        "exceptions": [{"id": segment_id(), "type": error.type, "message": error.message[:1000]}]
    }


def _fit(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents within X-Ray's 64 KB: an attempt with too many subsegments for one
    sends the rest as independent subsegments of it."""
    out: list[dict[str, Any]] = []
    for document in documents:
        subsegments = document.get("subsegments", [])
        if len(json.dumps(document)) <= 60_000 or not subsegments:
            out.append(document)
            continue
        document = {**document, "subsegments": []}
        out.append(document)
        for subsegment in subsegments:
            out.append(
                {
                    **subsegment,
                    "type": "subsegment",
                    "trace_id": document["trace_id"],
                    "parent_id": document["id"],
                }
            )
    return out
