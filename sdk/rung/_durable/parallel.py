"""In-run concurrency: the branches of ``ctx.map`` and ``ctx.parallel``.

Ids. A batch takes a position in its scope like a step does, and its id is a step id:
``"<scope>/<name>#<n>"`` (``"/orders#1"``; ``"billing/orders#1"`` in a group). Branch
``i`` runs in the scope ``"<batch id>[<i>]"``, so its steps are
``"/orders#1[3]/charge#1"`` and a map inside it is ``"/orders#1[3]/inner#1"``. Step and
group names cannot contain "/" or "#", and ``n`` counts every use of a name in a
scope, so a second batch of the same name gets ``"/orders#2[...]"`` and no id of one
batch can equal an id of another, or of a step.

Records, each written once:

* a branch record (kind "branch", id = the branch's scope, ``"/orders#1[3]"``) when
  the branch returns (its result as JSON) or raises (its error as data). A replay
  never calls a recorded branch again. It shares the batch's position (``seq``) and
  is not a position of its own (``RunState`` leaves it out of the determinism check).
* a batch record (kind "map" or "parallel", at the batch's position, id = the batch
  id) when the batch is decided: the counts and, if it failed, the ``BatchFailed``
  error. It is what the determinism check meets at that position and what the trace
  shows as the batch's span. It does not repeat the results (they are in the branch
  records, and 10,000 of them would not fit in one item), and a replay does not need
  it: every record of the run comes in the one query that starts an attempt, so a
  replay of a finished batch rebuilds its result from memory without starting a
  thread.

Replay. The ``BatchResult`` is a pure function of the branch records and the
completion rule: a branch with a record has its recorded outcome; if the records
already decide the rule, every branch without one is "skipped" (whether it never
started or was left waiting); otherwise the branches without a record run (again),
replaying whatever checkpoints they have. The rule is monotone in the records, so the
first execution and every replay agree.

Threads. Branches run on a thread pool of ``max_concurrency`` threads (default
``min(count, 32)``), each in a copy of the caller's ``contextvars`` context with the
branch's ctx current, so ``@rung.step`` functions called in branch code land in the
branch's scope. Signals: a branch that suspends (a wait) frees its thread and the
batch goes on starting branches; when every branch has finished or suspended, the
batch raises one combined ``Suspend`` (earliest wake time, every token). A step that
asks for a retry (``RetryStep``) or anything that ends the attempt (time running
out, ``max_duration``, a lost lease, a non-determinism error, a crash) stops new
branches; the running ones finish, then the signal propagates (for retries: the one
of the lowest branch index, and the whole run backs off).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Any

from rung._durable.offload import io
from rung._durable.signals import RetryStep, Suspend, combine, most_severe, resolve
from rung._durable.state import Scope, current_scope, encoded, error_info, return_type
from rung._durable.steps import check_unwinding
from rung._util import serde
from rung.batch import MAX_ITEMS, BatchFailed, BatchItem, BatchResult, Completion
from rung.errors import (
    ErrorInfo,
    InvalidConfig,
    LeaseLost,
    NonDeterminismError,
    StepFailed,
    UsageError,
    is_misuse,
)
from rung.models import StepRecord

#: Threads per batch when ``max_concurrency`` is not given (fewer for fewer items).
DEFAULT_MAX_CONCURRENCY = 32

#: A branch that returned or raised has a record; any other outcome is a signal.
_Outcome = StepRecord | BaseException


def check_items(items: object, what: str, noun: str = "items") -> Sequence[Any]:
    """``items`` as a sequence of at most ``MAX_ITEMS``, or a clear error."""
    if isinstance(items, str | bytes | bytearray) or not isinstance(items, Sequence):
        hint = (
            "sort it first (a set's order differs between processes, and replays must see "
            "the same order)"
            if isinstance(items, set | frozenset)
            else "pass a list, e.g. list(...)"
        )
        raise UsageError(f"{what} needs a list of {noun}, got {type(items).__name__}; {hint}")
    if len(items) > MAX_ITEMS:
        raise InvalidConfig(
            f"{what} got {len(items):,} {noun}; one batch takes at most {MAX_ITEMS:,}. "
            "Split them into chunks and map over the chunks (a map inside each branch), "
            "or spread the work over child runs"
        )
    return items


def map_items(
    scope: Scope,
    items: Sequence[Any],
    fn: Callable[[Any, Any], Any],
    *,
    name: str,
    max_concurrency: int | None,
    completion: Completion | None,
    item_name: Callable[[Any, int], str] | None,
    face: Callable[[Scope], Any],
) -> Batch:
    """``ctx.map``: ``fn(face(branch_scope), item)`` per item, each a branch; the
    batch has its position, and the face runs it (``run`` or ``run_async``)."""
    what = f"ctx.map(name={name!r})"
    scope.check_caller(what)
    if not callable(fn):
        raise UsageError(f"ctx.map(items, fn): fn must be callable, got {fn!r}")
    listed = check_items(items, what)
    names = None
    if item_name is not None:
        if not callable(item_name):
            raise UsageError(f"{what}: item_name must be a function (item, index) -> str")
        names = check_names(
            [_call_namer(item_name, item, index, what) for index, item in enumerate(listed)],
            what,
        )
    revive = return_type(fn)
    return plan_batch(
        scope,
        kind="map",
        name=name,
        count=len(listed),
        call=lambda branch, index: fn(face(branch), listed[index]),
        return_type=lambda index: revive,
        max_concurrency=max_concurrency,
        completion=completion,
        names=names,
    )


def parallel_fns(
    scope: Scope,
    fns: Sequence[Callable[[Any], Any]] | Mapping[str, Callable[[Any], Any]],
    *,
    name: str,
    max_concurrency: int | None,
    completion: Completion | None,
    face: Callable[[Scope], Any],
) -> Batch:
    """``ctx.parallel``: ``fns[i](face(branch_scope))`` per function (named by a mapping's
    keys), each a branch; positioned like ``map_items``'s."""
    what = f"ctx.parallel(name={name!r})"
    scope.check_caller(what)
    names = None
    if isinstance(fns, Mapping):
        names = check_names(list(fns.keys()), what)
        fns = list(fns.values())
    listed = check_items(fns, what, "functions")
    for index, fn in enumerate(listed):
        if not callable(fn):
            raise UsageError(
                f"ctx.parallel(fns): fns[{index}] must be callable (called as fn(ctx)), got {fn!r}"
            )
    return plan_batch(
        scope,
        kind="parallel",
        name=name,
        count=len(listed),
        call=lambda branch, index: listed[index](face(branch)),
        return_type=lambda index: return_type(listed[index]),
        max_concurrency=max_concurrency,
        completion=completion,
        names=names,
    )


def _call_namer(namer: Callable[[Any, int], object], item: Any, index: int, what: str) -> object:
    try:
        return namer(item, index)
    except Exception as exc:
        raise UsageError(
            f"{what}: item_name raised {type(exc).__name__} for item {index}: {exc}"
        ) from None


#: The longest branch name.
MAX_BRANCH_NAME = 100
_NOT_IN_NAMES = "/#[]"


def check_names(names: list[object], what: str) -> list[str]:
    """Branch names as given (``ctx.parallel``'s keys, ``ctx.map``'s ``item_name``), or
    ``UsageError``: each a non-empty string without "/", "#", "[" or "]" (they appear
    in step ids), at most ``MAX_BRANCH_NAME`` characters, and no two alike."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise UsageError(f"{what}: branch {index}'s name must be a non-empty str, got {name!r}")
        if any(c in name for c in _NOT_IN_NAMES) or len(name) > MAX_BRANCH_NAME:
            raise UsageError(
                f"{what}: branch name {name!r} must be at most {MAX_BRANCH_NAME} characters "
                f"without {', '.join(repr(c) for c in _NOT_IN_NAMES)} (names go into step ids)"
            )
        if name in seen:
            raise UsageError(
                f"{what}: branches {seen[name]} and {index} are both named {name!r}; branch "
                "names must be unique within a batch (they identify each branch's checkpoints)"
            )
        seen[name] = index
    return [str(name) for name in names]


def plan_batch(
    parent: Scope,
    *,
    kind: str,
    name: str,
    count: int,
    call: Callable[[Scope, int], Any],
    return_type: Callable[[int], Any],
    max_concurrency: int | None,
    completion: Completion | None,
    names: list[str] | None = None,
) -> Batch:
    """Check one ``ctx.map`` / ``ctx.parallel`` and take its position; the face then
    runs or replays it (see the module docstring).

    ``names``: the branches' names (checked with ``check_names``), used in their ids
    instead of their indexes."""
    what = f"ctx.{kind}(name={name!r})"
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        raise InvalidConfig(
            f"{what}: max_concurrency must be an int >= 1 (branches running at once), "
            f"got {max_concurrency!r}"
        )
    if completion is not None and not isinstance(completion, Completion):
        raise InvalidConfig(f"{what}: completion must be a rung.Completion, got {completion!r}")
    rule = completion or Completion()
    rule.check_size(count, f"{what} in run {parent.run_id}")
    batch = Batch(parent, kind, count, call, return_type, rule, names)
    batch.id, batch.seq = parent.position(name, kind)
    batch.limit = max_concurrency or DEFAULT_MAX_CONCURRENCY
    return batch


class Batch:
    """One ``ctx.map`` / ``ctx.parallel`` at its position: ``run`` executes its branches
    on threads, ``run_async`` as asyncio tasks; both decide and record alike."""

    def __init__(
        self,
        parent: Scope,
        kind: str,
        count: int,
        call: Callable[[Scope, int], Any],
        return_type: Callable[[int], Any],
        rule: Completion,
        names: list[str] | None,
    ) -> None:
        self.parent = parent
        self.names = names
        #: each branch's key in its id: its name, or its index
        self.keys = names if names is not None else [str(i) for i in range(count)]
        self.session = parent.session
        self.kind = kind
        self.count = count
        self.call = call
        self.return_type = return_type
        self.rule = rule
        self.done: dict[int, StepRecord] = {}
        self.succeeded = 0
        self.failed = 0
        self.id = ""
        self.seq = 0
        self.limit = DEFAULT_MAX_CONCURRENCY
        self.first_start: dict[int, datetime] = {}

    # -- the batch ---------------------------------------------------------------------

    def run(self) -> BatchResult[Any]:
        """Run or replay the batch, its branches on threads."""
        started, todo = self._open()
        signals = self._execute(todo, min(self.limit, len(todo))) if todo else []
        return self._close(signals, started)

    async def run_async(self) -> BatchResult[Any]:
        """Run or replay the batch, its branches as asyncio tasks on this loop (at most
        ``limit`` at once); its writes on the loop's threads."""
        task = asyncio.current_task()
        assert task is not None
        self.parent.run.batches_running.add(task)  # (the body's end waits for it)
        try:
            check_unwinding(self.parent)
            started, todo = await io(self._open)
            signals = await self._execute_async(todo) if todo else []
            return await io(self._close, signals, started)
        finally:
            self.parent.run.batches_running.discard(task)

    def _open(self) -> tuple[datetime, list[int]]:
        """The recorded branches; the ones to run (none once the rule is decided)."""
        started = self.session.now()
        records = self.parent.run.records
        self._check_recorded_branches(records)
        for index in range(self.count):
            record = records.get(self._branch_id(index))
            if record is not None and record.kind == "branch":
                self._add(index, record)
        self._note_first_starts(records)
        if self._verdict() is not None:
            return started, []
        return started, [index for index in range(self.count) if index not in self.done]

    def _close(
        self, signals: list[tuple[int, BaseException]], started: datetime
    ) -> BatchResult[Any]:
        """Decide from the records and the branches' signals: the result, or the signal
        that ends (or suspends, or retries) the attempt."""
        ending = [(i, s) for i, s in signals if not isinstance(s, Suspend | RetryStep)]
        if ending:
            raise most_severe([s for _, s in ending])
        verdict = self._verdict()
        if verdict is None:
            # Not decided: some branches asked for a retry or wait. (Once decided, they
            # do not matter: they are skipped, and a replay decides the same way.)
            retries = [(i, s) for i, s in signals if isinstance(s, RetryStep)]
            if retries:
                raise min(retries, key=lambda pair: pair[0])[1]
            waits = [s for _, s in signals if isinstance(s, Suspend)]
            assert waits, "an undecided batch must have unfinished branches"
            raise combine(waits, f"waiting branches of {self.id}")
        return self._finish(verdict, min([started, *self.first_start.values()]))

    def _execute(self, todo: list[int], threads: int) -> list[tuple[int, BaseException]]:
        """Run branches ``todo`` on ``threads`` threads until decided, done or stopped."""
        pending = deque(todo)
        running: dict[Future[_Outcome], int] = {}
        signals: list[tuple[int, BaseException]] = []
        stop = False
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rung-branch") as pool:
            while running or (pending and not stop):
                while pending and not stop and len(running) < threads:
                    try:
                        # Like before a step: time left, max_duration, lease renewal.
                        self.session.before_step()
                    except BaseException as exc:
                        signals.append((-1, exc))
                        stop = True
                        break
                    index = pending.popleft()
                    # Each branch in its own copy of this thread's contextvars.
                    context = contextvars.copy_context()
                    running[pool.submit(context.run, self._branch, index)] = index
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    # (_branch returns what it raised)
                    stop = self._ended(running.pop(future), future.result(), signals) or stop
        return signals

    async def _execute_async(self, todo: list[int]) -> list[tuple[int, BaseException]]:
        """``_execute`` with branches as asyncio tasks, each in a copy of the caller's
        contextvars context (the branch's scope set in it, and owned by its task)."""
        pending = deque(todo)
        running: dict[asyncio.Task[_Outcome], int] = {}
        signals: list[tuple[int, BaseException]] = []
        stop = False
        run = self.parent.run
        while running or (pending and not stop):
            ending = run.ending or run.canceled_operation
            if ending is not None and not stop:  # the attempt ends: start no more branches
                signals.append((-1, ending))
                stop = True
            free = min(len(pending), self.limit - len(running)) if not stop else 0
            # Like before a step, for each branch to start (in one trip to the pool).
            admitted, signal = await io(self._admit, free) if free else (0, None)
            if signal is not None:
                signals.append((-1, signal))
                stop = True
            for _ in range(admitted):
                index = pending.popleft()
                branch = self._branch_async(index)
                running[asyncio.create_task(branch, context=contextvars.copy_context())] = index
            if not running:
                break
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                stop = self._ended(running.pop(task), task.result(), signals) or stop
        return signals

    def _admit(self, count: int) -> tuple[int, BaseException | None]:
        """``session.before_step`` for up to ``count`` branches: how many may start,
        and the signal that stopped the rest (time running out, a cancel ...)."""
        for admitted in range(count):
            try:
                self.session.before_step()
            except BaseException as exc:
                return admitted, exc
        return count, None

    def _ended(
        self, index: int, outcome: _Outcome, signals: list[tuple[int, BaseException]]
    ) -> bool:
        """Take in a branch's outcome; whether to start no more branches."""
        if isinstance(outcome, StepRecord):
            self._add(index, outcome)
            return self._verdict() is not None  # decided: start nothing more
        signals.append((index, outcome))
        # A waiting branch frees its thread; others go on. A retry or the end of the
        # attempt stops new branches.
        return not isinstance(outcome, Suspend)

    def _verdict(self) -> bool | None:
        return self.rule.verdict(total=self.count, succeeded=self.succeeded, failed=self.failed)

    def _add(self, index: int, record: StepRecord) -> None:
        self.done[index] = record
        if record.outcome == "succeeded":
            self.succeeded += 1
        else:
            self.failed += 1

    def _branch_id(self, index: int) -> str:
        return f"{self.id}[{self.keys[index]}]"

    def _check_recorded_branches(self, records: dict[str, StepRecord]) -> None:
        """Every branch recorded under this batch must still be one of its branches."""
        current = set(self.keys)
        prefix = self.id + "["
        unknown = sorted(
            (
                r.step_id[len(prefix) : -1]
                for r in list(records.values())  # (a snapshot: enclosing branches add to it)
                if r.kind == "branch"
                and r.step_id.startswith(prefix)
                and r.step_id.endswith("]")
                and "/" not in r.step_id[len(prefix) :]
                and r.step_id[len(prefix) : -1] not in current
            ),
            key=lambda key: (0, int(key), key) if key.isdigit() else (1, 0, key),
        )
        if not unknown:
            return
        if self.names is None and all(key.isdigit() for key in unknown):
            first = f"{self.id}[{unknown[0]}]"
            raise NonDeterminismError(
                f"run {self.parent.run_id}: ctx.{self.kind} {self.id!r} had more than "
                f"{self.count} items when first executed (branch {first!r} "
                f"is recorded), but the code now passes {self.count}. The items must be the "
                "same on every replay: compute them from the payload or from step results. "
                "See docs/parallel.md."
            )
        raise NonDeterminismError(
            f"run {self.parent.run_id}: ctx.{self.kind} {self.id!r} had a branch "
            f"{unknown[0]!r} when first executed, which the code no longer has (its branches "
            f"now: {', '.join(self.keys[:5])}{', ...' if self.count > 5 else ''}). Branch "
            "names and items must be the same on every replay: compute them from the payload "
            "or from step results, not from time or randomness. See docs/parallel.md."
        )

    def _note_first_starts(self, records: dict[str, StepRecord]) -> None:
        """When each branch first started (from its checkpoints), for the trace."""
        prefix = self.id + "["
        index_of = {key: index for index, key in enumerate(self.keys)}
        # A snapshot: branches of an enclosing batch may add records meanwhile.
        for record in list(records.values()):
            if not record.step_id.startswith(prefix):
                continue
            end = record.step_id.find("]", len(prefix))
            index = index_of.get(record.step_id[len(prefix) : end])
            if index is None:
                continue
            first = self.first_start.get(index)
            if first is None or record.started_at < first:
                self.first_start[index] = record.started_at

    # -- one branch, on a pool thread --------------------------------------------------

    def _branch(self, index: int) -> _Outcome:
        """Run branch ``index``; its record, or the signal (or crash) that stopped it."""
        scope = self.parent.for_branch(self._branch_id(index))
        token = current_scope.set(scope)
        started = self.first_start.get(index) or self.session.now()
        try:
            value = self.call(scope, index)
        except BaseException as exc:
            stopped = self._stopped(exc, index, started)
            assert not isinstance(stopped, ErrorInfo)  # (recorded)
            return stopped
        finally:
            current_scope.reset(token)
        return self._record(index, started, value, None)

    async def _branch_async(self, index: int) -> _Outcome:
        """``_branch`` as an asyncio task (its own contextvars context)."""
        scope = self.parent.for_branch(self._branch_id(index))
        scope.owner = asyncio.current_task()
        current_scope.set(scope)
        started = self.first_start.get(index) or self.session.now()
        try:
            value = self.call(scope, index)
            if inspect.isawaitable(value):
                value = await value
            check_unwinding(scope)  # a signal the branch's code swallowed ends it
        except BaseException as raised:
            # (a signal it swallowed, or one in an exception group, decides)
            exc = resolve(raised, scope.unwinding, [], None, "waits of the branch")
            outcome = self._stopped(exc, index, started, recording=False)
            if not isinstance(outcome, ErrorInfo):
                return outcome
            return await io(self._record, index, started, None, outcome)
        return await io(self._record, index, started, value, None)

    def _stopped(
        self, exc: BaseException, index: int, started: datetime, *, recording: bool = True
    ) -> _Outcome | ErrorInfo:
        """What a branch that raised ends with: a signal that ends the attempt (as
        itself), or an error recorded as the branch's outcome (``recording=False``:
        the error, for the caller to record)."""
        if isinstance(exc, LeaseLost | NonDeterminismError):  # the attempt ends
            return exc
        if isinstance(exc, StepFailed):  # a step in it failed for good (or a nested batch)
            error = ErrorInfo(
                exc.error_type, f"step {exc.step_id!r} failed: {exc.message}", exc.traceback
            )
        elif isinstance(exc, Exception) and not is_misuse(exc):
            error = error_info(exc)
        else:  # misuse (no tolerance or retry can fix it), a wait, a retry, a crash
            return exc
        return self._record(index, started, None, error) if recording else error

    def _record(
        self, index: int, started: datetime, value: Any, error: ErrorInfo | None
    ) -> _Outcome:
        """Write the branch record of a branch that returned (or raised ``error``)."""
        branch_id = self._branch_id(index)
        try:
            text: str | None = None
            if error is None:
                what = f"the result of branch {branch_id!r} in run {self.parent.run_id}"
                text, error = encoded(value, what)
            stored = self.session.record_step(
                StepRecord.ended(
                    branch_id,
                    self.seq,
                    run_attempt=self.parent.run.attempt,
                    started_at=started,
                    finished_at=self.session.now(),
                    result_json=text,
                    error=error,
                    kind="branch",
                )
            )
        except BaseException as exc:  # storage failed: the attempt ends
            return exc
        return self.parent.run.remember(stored)

    # -- endings -----------------------------------------------------------------------

    def _finish(self, verdict: bool, started: datetime) -> BatchResult[Any]:
        items: list[BatchItem[Any]] = []
        for index in range(self.count):
            record = self.done.get(index)
            name = self.names[index] if self.names is not None else None
            if record is None:
                items.append(BatchItem(index, "skipped", name=name))
            elif record.outcome == "succeeded":
                value = serde.loads(record.result_json, self.return_type(index))
                items.append(BatchItem(index, "succeeded", result=value, name=name))
            else:
                error = record.error or ErrorInfo("Error", "")
                items.append(BatchItem(index, "failed", error=error, name=name))
        result = BatchResult(items)
        recorded = self.parent.run.records.get(self.id)
        if recorded is None:
            failure = None if verdict else self._failure(result)
            recorded = self.parent.run.remember(
                self.session.record_step(
                    StepRecord.ended(
                        self.id,
                        self.seq,
                        run_attempt=self.parent.run.attempt,
                        started_at=started,
                        finished_at=self.session.now(),
                        result_json=serde.dumps(
                            {
                                "items": self.count,
                                "succeeded": result.succeeded,
                                "failed": result.failed,
                                "skipped": result.skipped,
                            },
                            "a batch summary",
                        ),
                        error=failure,
                        kind=self.kind,
                    )
                )
            )
        # The recorded verdict stands on replay, as a step's recorded outcome does.
        if recorded.outcome == "failed":
            raise BatchFailed(self.id, recorded.error or self._failure(result), result)
        return result

    def _failure(self, result: BatchResult[Any]) -> ErrorInfo:
        why = self.rule.explain_failure(
            total=self.count, succeeded=result.succeeded, failed=result.failed
        )
        first = next((item for item in result.items if item.status == "failed"), None)
        text = f"ctx.{self.kind} {self.id!r}: {why}"
        if result.skipped:
            text += f"; {result.skipped} skipped"
        if first is not None:
            which = f"{first.name!r}" if first.name is not None else str(first.index)
            text += f"; first failure: item {which}: {first.error}"
        return ErrorInfo("BatchFailed", text)
