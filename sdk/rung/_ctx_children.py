"""The child runs of ``rung.Context``: ``ctx.trigger``, ``ctx.trigger_and_wait`` and
``ctx.batch_trigger_and_wait``. ``Context`` inherits them from ``_Children``; see
docs/children.md."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from rung import _serde
from rung._clock import iso
from rung._ctx_common import MAX_BATCH, MAX_WAIT, _ContextBase
from rung._durations import check_duration
from rung._ids import new_run_id
from rung._signals import Suspend
from rung.errors import ErrorInfo, StepFailed, UsageError
from rung.models import ChildResult, Run, RunHandle, RunStatus, StepRecord

if TYPE_CHECKING:
    from rung.app import Task

R = TypeVar("R")
S = TypeVar("S")

# ``_start_child(batch=...)`` for a batch's first child: the batch is keyed by its id.
_FIRST_OF_BATCH = "*"
_NO = ErrorInfo("", "")


class _Children(_ContextBase):
    """The child runs of ``Context`` (rung.context)."""

    # -- child runs ------------------------------------------------------------------

    def trigger(
        self,
        task: str | Task[Any],
        payload: Any = None,
        *,
        name: str | None = None,
        detached: bool = False,
        delay: timedelta | float | None = None,
        tags: Iterable[str] | None = None,
    ) -> RunHandle:
        """Start a child run of ``task`` and go on without waiting for it.

        A checkpoint like a step (``"/<name>#<n>"``, ``name`` defaulting to the task
        id): the child is created together with it, so replays and retries of this
        run never start a second child. The child records this run as its
        ``parent_run_id``; canceling this run cancels the child too, unless
        ``detached``. The task must belong to this run's app.

        Returns:
            The child's handle (``created`` is False on a replay).

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge: as ``Client.trigger``.

        Example:
            >>> ctx.trigger(send_receipt, {"order_id": order.id}, detached=True)
        """
        self._check_caller("ctx.trigger()")
        found = self._session.task(task)
        wait = (
            check_duration(delay, "ctx.trigger delay", maximum=MAX_WAIT)
            if delay is not None
            else timedelta(0)
        )
        tag_tuple = tuple(tags or ())
        if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tag_tuple):
            raise UsageError("ctx.trigger(tags=...) must be a list of non-empty strings")
        record, created = self._start_child(
            found, name, payload, waits=False, detached=detached, delay=wait, tags=tag_tuple
        )
        data = json.loads(record.result_json or "{}")
        return RunHandle(run_id=data["run_id"], task_id=data["task_id"], created=created)

    @overload
    def trigger_and_wait(
        self,
        task: Task[R],
        payload: Any = None,
        *,
        name: str | None = None,
        timeout: timedelta | float | None = None,
    ) -> R: ...

    @overload
    def trigger_and_wait(
        self,
        task: str,
        payload: Any = None,
        *,
        name: str | None = None,
        result_type: type[S] | None = None,
        timeout: timedelta | float | None = None,
    ) -> Any: ...

    def trigger_and_wait(
        self,
        task: str | Task[Any],
        payload: Any = None,
        *,
        name: str | None = None,
        result_type: type[S] | None = None,
        timeout: timedelta | float | None = None,
    ) -> Any:
        """Start a child run of ``task`` and suspend until it ends; return its output.

        The parent holds no worker while the child runs. Two checkpoints:
        ``"/<name>#<n>"`` (the child, created with it atomically) and
        ``"/<name>:wait#<n>"`` (its outcome, recorded once it has ended); ``name``
        defaults to the task id. The output is revived as the task's return type
        (or ``result_type``).

        ``timeout`` (a ``timedelta`` or seconds, counted from the child's start, waits
        included): a child that has not ended by then is canceled, with its own
        children unless detached, and the parent gets ``ChildRunFailed`` (status
        CANCELED, a message that names the timeout). Without it the parent waits as
        long as the child takes (bounded by the child's own waits and retries).

        Raises:
            ChildRunFailed: the child FAILED, was CANCELED or TIMED_OUT; carries its
                run id, status and error. Catch it to carry on.

        Example:
            >>> try:
            ...     receipt = ctx.trigger_and_wait(charge, {"order_id": "o-1"})
            ... except rung.ChildRunFailed as exc:
            ...     receipt = None  # exc.run_id, exc.status, exc.message
        """
        self._check_caller("ctx.trigger_and_wait()")
        found = self._session.task(task)
        limit = _timeout(timeout, "trigger_and_wait")
        record, _ = self._start_child(found, name, payload, waits=True)
        child = json.loads(record.result_json or "{}")
        # The deadline is fixed by the child's checkpoint: the same on every replay.
        wait = self._wait_children(
            f"{_child_name(found, name)}:wait",
            [child],
            single=True,
            began=record.started_at,
            timeout=limit,
        )
        return self._replay(wait, result_type or found.output_type)

    def batch_trigger_and_wait(
        self,
        task: str | Task[Any],
        payloads: Iterable[Any],
        *,
        name: str | None = None,
        result_type: type[S] | None = None,
        timeout: timedelta | float | None = None,
    ) -> list[ChildResult]:
        """Start one child run of ``task`` per payload; suspend until all have ended.

        Returns one ``ChildResult`` per payload, in input order; a failed child does
        not raise here: inspect ``result.ok``/``result.error`` or call
        ``result.unwrap()``. Checkpoints: ``"/<name>#1"`` ... ``"/<name>#N"`` (the
        children) and one ``"/<name>:wait#<n>"`` holding every outcome. Every payload
        is validated before any child starts. ``timeout``: as for ``trigger_and_wait``,
        counted from the first child's start; children not ended by then are canceled
        and come back with status CANCELED (the others keep their outcomes).

        Example:
            >>> results = ctx.batch_trigger_and_wait(resize, [{"id": i} for i in ids])
            >>> failed = [r.run_id for r in results if not r.ok]
        """
        self._check_caller("ctx.batch_trigger_and_wait()")
        found = self._session.task(task)
        limit = _timeout(timeout, "batch_trigger_and_wait")
        items = list(payloads)
        if not items:
            return []
        if len(items) > MAX_BATCH and not self._batch_started(found, name, len(items)):
            raise UsageError(
                f"ctx.batch_trigger_and_wait got {len(items):,} payloads; one batch starts at "
                f"most {MAX_BATCH:,} children (their outcomes are one checkpoint). Split the "
                "work into several batches, or batches of batches (children that batch-trigger)"
            )
        encoded = [found.encode_payload(p) for p in items]
        children: list[dict[str, Any]] = []
        began: datetime | None = None  # the first child's checkpoint: same on replays
        for text in encoded:
            # The batch's key is its first child's run id (known once that one exists).
            batch = children[0]["run_id"] if children else _FIRST_OF_BATCH
            record, _ = self._start_child(
                found, name, None, waits=True, payload_json=text, batch=batch, size=len(items)
            )
            began = began or record.started_at
            children.append(json.loads(record.result_json or "{}"))
        wait = self._wait_children(
            f"{_child_name(found, name)}:wait", children, single=False, began=began, timeout=limit
        )
        if wait.outcome == "failed":  # the outcomes did not fit one checkpoint
            raise StepFailed(wait.step_id, wait.error or ErrorInfo("Error", ""))
        revive = result_type or found.output_type
        return [
            ChildResult(
                run_id=o["run_id"],
                task_id=o["task_id"],
                status=RunStatus(o["status"]),
                output=_serde.loads(json.dumps(o["output"]), revive)
                if o["status"] == RunStatus.COMPLETED
                else None,
                error=ErrorInfo.from_json(o["error"]) if o.get("error") else None,
                step_id=wait.step_id,
            )
            for o in json.loads(wait.result_json or "[]")
        ]

    def _start_child(
        self,
        task: Task[Any],
        name: str | None,
        payload: Any,
        *,
        waits: bool,
        detached: bool = False,
        delay: timedelta = timedelta(0),
        tags: tuple[str, ...] = (),
        payload_json: str | None = None,
        batch: str | None = None,
        size: int = 0,
    ) -> tuple[StepRecord, bool]:
        step_id, seq = self._position(_child_name(task, name), "child")
        record = self._records.get(step_id)
        if record is not None:
            return record, False
        text = payload_json if payload_json is not None else task.encode_payload(payload)
        self._session.before_step()
        now = self._session.now()
        child: dict[str, Any] = {
            "run_id": new_run_id(now),
            "task_id": task.id,
            "detached": bool(detached),
        }
        if batch is not None:
            if batch == _FIRST_OF_BATCH:  # the first child keys the batch and records its size
                child["batch"], child["of"] = child["run_id"], size
            else:
                child["batch"] = batch
        mine = StepRecord.ended(
            step_id,
            seq,
            run_attempt=self.attempt,
            started_at=now,
            finished_at=now,
            kind="child",
            result_json=json.dumps(child),
        )
        stored, created = self._session.start_child(
            mine,
            task_id=task.id,
            payload_json=text,
            waits=waits,
            detached=bool(detached),
            delay=delay,
            tags=tags,
        )
        return self._remember(stored), created

    def _batch_started(self, task: Task[Any], name: str | None, size: int) -> bool:
        """Whether this batch's first child exists: a replay of a batch that started
        (under an older limit) goes on. A refused batch leaves no checkpoint, so a
        later batch may hold the same step id: its recorded size tells them apart."""
        record = self._records.get(self._next_step_id(_child_name(task, name)))
        if record is None or record.kind != "child":
            return False
        first = json.loads(record.result_json or "{}")
        return bool(first.get("of", size) == size)  # (no "of": written before the limit)

    def _wait_children(
        self,
        name: str,
        children: list[dict[str, Any]],
        *,
        single: bool,
        began: datetime | None = None,
        timeout: timedelta | None = None,
    ) -> StepRecord:
        """The outcome checkpoint of waiting for ``children``; suspends until all ended
        (or, with a ``timeout`` from ``began``, cancels those unfinished by then)."""
        step_id, seq = self._position(name, "child_wait")
        record = self._records.get(step_id)
        if record is not None:
            return record
        self._session.before_step()
        ids = [c["run_id"] for c in children]
        runs = self._session.get_runs(ids)
        unfinished = tuple(i for i in ids if i in runs and not runs[i].status.is_terminal)
        due = began + timeout if began is not None and timeout is not None else None
        why = (
            f"not ended within the timeout of {timeout} that its parent {self.run_id} set on "
            f"{step_id}"
        )
        # Past the deadline: cancel what has not ended. A child this timeout canceled
        # is canceled again too: an attempt that crashed inside the cascade left its
        # own children. (Children canceled by someone else were cascaded by them.)
        late = [
            i
            for i in ids
            if i in runs
            and (
                i in unfinished
                or (runs[i].status == RunStatus.CANCELED and (runs[i].error or _NO).message == why)
            )
        ]
        if late and due is not None and self._session.now() >= due:
            for n, child_id in enumerate(late):
                if n:  # many children: keep the lease, and go on in a fresh invocation
                    self._session.before_step()  # if this one runs out of time
                self._session.cancel_child(child_id, why)
            runs = self._session.get_runs(ids)
            unfinished = tuple(i for i in ids if i in runs and not runs[i].status.is_terminal)
        if unfinished:
            what = (
                f"child run {unfinished[0]}"
                if single
                else f"{len(unfinished)} of {len(ids)} child runs ({', '.join(unfinished[:3])}"
                + (", ...)" if len(unfinished) > 3 else ")")
            )
            keys = {c.get("batch") for c in children}
            batch = None
            if not single and len(keys) == 1 and None not in keys:
                # One batch: woken once, by its last child's end, not by every end.
                # (``children`` too: a ctx.map that combines this with other waits
                # falls back to waking on any of them.)
                batch = (str(children[0]["batch"]), len(children))
            if due is not None:  # (LocalEngine's clock treats it as a deadline, see there)
                what += f" (timeout at {iso(due)})"
            raise Suspend(
                due,
                what,
                children=unfinished,
                batch=batch,
                wake_kind="deadline" if due is not None else None,
            )
        now = self._session.now()
        outcomes = [_child_outcome(c, runs.get(c["run_id"])) for c in children]
        started = min(
            (r.created_at for r in runs.values()),
            default=now,
        )
        ended = max((r.finished_at or now for r in runs.values()), default=now)
        error: ErrorInfo | None = None
        if not single:
            result: str | None = json.dumps(outcomes)
            size = len(result.encode()) if result is not None else 0
            if size > _serde.MAX_VALUE_BYTES:
                result, error = (
                    None,
                    ErrorInfo(
                        "PayloadTooLarge",
                        f"the outcomes of the {len(children):,} children of batch {step_id!r} are "
                        f"{size:,} bytes of JSON; rung stores at most {_serde.MAX_VALUE_BYTES:,} "
                        "bytes in one checkpoint. Return smaller outputs from the children (put "
                        "large data in S3 and return its key), or split the batch",
                    ),
                )
        elif outcomes[0]["status"] == RunStatus.COMPLETED:
            result = json.dumps(outcomes[0]["output"])
        else:
            outcome = outcomes[0]
            error = ErrorInfo.from_json(outcome["error"])
            result = json.dumps({k: outcome[k] for k in ("run_id", "task_id", "status")})
        stored = StepRecord.ended(
            step_id,
            seq,
            run_attempt=self.attempt,
            started_at=started,
            finished_at=ended,
            kind="child_wait",
            result_json=result,
            error=error,
        )
        recorded = self._remember(self._session.record_step(stored))
        key = children[0].get("batch")
        if key is not None and recorded is stored:  # recorded now, by this attempt
            self._session.forget_batch(str(key))
        return recorded


def _timeout(timeout: timedelta | float | None, what: str) -> timedelta | None:
    """A ``timeout=`` of the waiting calls, checked."""
    if timeout is None:
        return None
    return check_duration(timeout, f"{what} timeout", positive=True, maximum=MAX_WAIT)


def _child_name(task: Task[Any], name: str | None) -> str:
    return name if name is not None else task.id


def _child_outcome(child: dict[str, Any], run: Run | None) -> dict[str, Any]:
    """How a child ended, as the parent's wait checkpoint keeps it."""
    if run is None:  # cannot happen (children are created with their checkpoint)
        error = ErrorInfo("RunNotFound", f"child run {child['run_id']} does not exist")
        return {**child, "status": RunStatus.FAILED.value, "output": None, "error": error.to_json()}
    if run.status == RunStatus.COMPLETED:
        return {
            "run_id": run.run_id,
            "task_id": run.task_id,
            "status": run.status.value,
            "output": run.output,
            "error": None,
        }
    error = run.error or ErrorInfo(f"Run{run.status.value.title().replace('_', '')}", "")
    return {
        "run_id": run.run_id,
        "task_id": run.task_id,
        "status": run.status.value,
        "output": None,
        "error": error.to_json(),
    }
