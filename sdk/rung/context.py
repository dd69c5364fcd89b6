"""The sync face of a run: ``rung.Context`` (a task's first argument), ``@rung.step``
and ``rung.current_step()``.

Every operation is implemented once, in ``rung._durable`` (the replay rules are at the
top of ``rung._durable.state``); ``Context`` checks nothing the core does not and holds
no state of its own beyond its ``Scope``: each method delegates, calling user code
where the core asks for it (a step's function, a group's body, a callback's
``submit``).
"""

from __future__ import annotations

import contextlib
import logging
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from rung._durable import children, groups, parallel, steps, waits
from rung._durable.children import ChildVersion
from rung._durable.metadata import Metadata
from rung._durable.state import (
    AttemptSession,
    Replayed,
    Scope,
    StepInfo,
    current_step,
)
from rung._durable.steps import step
from rung._durable.waits import DEFAULT_TOKEN_TIMEOUT, MAX_WAIT, Poll, StepCall
from rung.batch import BatchResult, Completion
from rung.models import ChildResult, RunHandle, Token
from rung.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Generator

    from rung.app import Task

__all__ = [
    "DEFAULT_TOKEN_TIMEOUT",
    "MAX_WAIT",
    "AttemptSession",
    "Context",
    "Metadata",
    "Poll",
    "StepInfo",
    "current_step",
    "step",
]

P = ParamSpec("P")
R = TypeVar("R")
In = TypeVar("In")  # a task's payload type
S = TypeVar("S")
T = TypeVar("T")


class Context:
    """Handed to every task as its first argument.

    Attributes:
        run_id: the run's id.
        task_id: the task's id.
        attempt: 1-based; grows only when an attempt fails or crashes.
    """

    def __init__(self, scope: Scope) -> None:
        # Made by the engine (over the attempt's top scope) and by ctx.map/ctx.parallel
        # (over each branch's): a face over the core's Scope, holding nothing else.
        self._core = scope
        self.run_id = scope.run.run_id
        self.task_id = scope.run.task_id
        self.attempt = scope.run.attempt

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger for the task body that writes each line once per run.

        A task body runs again on every attempt and after every wait, replaying the
        steps it passed; a line logged with ``ctx.logger`` before a point the run had
        already passed is not written again (``logging`` called directly would be).
        Lines are written under the logger ``rung.tasks.<task id>`` and carry the
        run's keys (``run_id``, ``task``, ``attempt``; ``step_id`` inside a step) as
        ``extra``; on Lambda, ``rung dev`` and ``LocalEngine`` they are JSON lines in
        the worker's log group (docs/observability.md). Inside a step function, every
        call writes (the step really runs).
        """
        return _ReplayAwareLogger(logging.getLogger(f"rung.tasks.{self.task_id}"), self._core)

    @property
    def metadata(self) -> Metadata:
        """Small JSON values about this run for whoever watches it (progress, a phase,
        counts): ``set``, ``update``, ``delete`` and read (docs/metadata.md). Shown by
        ``get_run(...).metadata``, ``rung runs show`` and the HTTP API; the values given
        at trigger (``metadata=``) are where every attempt starts. Durable with the
        run, and written with writes the run makes anyway (no write per change)."""
        core = self._core
        return Metadata(core.run.metadata, core.replaying, core.metadata_refusal)

    def _follow(self, plan: Generator[StepCall, Any, R]) -> R:
        """Run a core plan: each step it asks for is a step of this ctx."""
        try:
            request = next(plan)
            while True:
                value = self.step(request.name, request.fn, *request.args)
                request = plan.send(value)
        except StopIteration as done:
            return typing.cast(R, done.value)
        finally:
            plan.close()

    # The arguments are checked against ``fn``'s parameters (ParamSpec), unless the call
    # passes ``retry`` or ``at_most_once``: a ParamSpec leaves no room for keywords of
    # the step's own beside the function's.
    @overload
    def step(
        self,
        name: str,
        fn: Callable[..., R],
        /,
        *args: Any,
        retry: RetryPolicy | None,
        at_most_once: bool = False,
        **kwargs: Any,
    ) -> R: ...

    @overload
    def step(
        self, name: str, fn: Callable[..., R], /, *args: Any, at_most_once: bool, **kwargs: Any
    ) -> R: ...

    @overload
    def step(self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def step(self, name: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run ``fn(*args, **kwargs)`` as a checkpointed step named ``name``.

        The first successful result is recorded once; later attempts and replays
        return it without calling ``fn``. A failure is retried under ``retry`` (or the
        task's policy); when attempts run out, ``StepFailed`` is raised here.

        Args:
            name: the step's name; unique names make the trace readable. Must not
                contain "/" or "#".
            fn: the function to call.
            retry: this step's policy, overriding the task's.
            at_most_once: record the start first; after a crash mid-step the step is
                not run again and fails with a "StepInterrupted" error.

        Example:
            >>> charge = ctx.step("charge", charge_card, order, retry=RetryPolicy(max_attempts=5))
        """
        if "retry" in kwargs or "at_most_once" in kwargs:
            steps.check_own_keywords(name, fn, kwargs)
        retry = kwargs.pop("retry", None)
        at_most_once = kwargs.pop("at_most_once", False)
        return typing.cast(
            R,
            steps.call(self._core, name, fn, args, kwargs, retry=retry, at_most_once=at_most_once),
        )

    @contextlib.contextmanager
    def group(self, name: str) -> Iterator[None]:
        """Run the enclosed steps in a named scope: their ids become ``"<name>/<step>#<n>"``.

        Groups nest (``"a/b/step#1"``); re-entering a group continues its numbering,
        so ids never collide. The trace shows the structure.

        Example:
            >>> with ctx.group("billing"):
            ...     ctx.step("charge", charge_card, order)   # id "billing/charge#1"
        """
        with groups.named(self._core, name):
            yield

    def checkpointed_group(
        self, name: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any
    ) -> R:
        """Run ``fn(ctx, *args, **kwargs)`` as one unit whose result is checkpointed.

        Unlike ``ctx.group`` (a naming scope whose body runs again on every replay, its
        steps returning their checkpoints), once a checkpointed group has returned, its
        result is recorded and replays return it **without running the body**: a long
        run with many steps replays faster when they are grouped so. Inside, it is like
        a task body: steps, waits, tokens, child runs and ``ctx.map`` are checkpointed
        in the group's scope ``"<scope>/<name>#<n>"`` (``"/enrich#1/fetch#1"``), the
        group taking a position like a step does. The body may wait or retry: until it
        has returned, each attempt runs it again from the top, replaying its own
        checkpoints. An error it raises passes through unrecorded, as from the task
        body itself (a ``StepFailed`` of a step inside, or your exception under the
        task's retry policy); only a return ends the group.

        Args:
            name: the group's name (no "/" or "#").
            fn: called as ``fn(ctx, *args, **kwargs)`` with this ctx; its return value
                is stored as JSON (its annotated return type revives models).

        Example:
            >>> def enrich(ctx: rung.Context, user_id: str) -> Profile:
            ...     user = ctx.step("user", load_user, user_id)
            ...     ctx.wait(timedelta(minutes=5))
            ...     return ctx.step("score", score, user)
            >>> profile = ctx.checkpointed_group("enrich", enrich, "u-7")
        """
        started = groups.start_checkpointed(self._core, name, fn)
        if isinstance(started, Replayed):
            return typing.cast(R, started.value)
        with started.inside():
            value = fn(self, *args, **kwargs)
        return typing.cast(R, started.returned(value))

    def map(
        self,
        items: Sequence[T],
        fn: Callable[[Context, T], R],
        *,
        name: str = "map",
        max_concurrency: int | None = None,
        completion: Completion | None = None,
        item_name: Callable[[T, int], str] | None = None,
    ) -> BatchResult[R]:
        """Run ``fn(branch_ctx, item)`` for every item, on threads, each a branch.

        Each branch gets its own ctx: its steps, waits and tokens are checkpointed
        in the branch's scope ``"<batch id>[<index>]"``, e.g. ``"/map#1[3]/charge#1"``,
        so branches never collide. When a branch returns or raises, one record keeps
        its result or error; replays never call a finished branch again. Results come
        back in input order. See docs/parallel.md.

        A branch that waits (``ctx.wait``, a token) frees its thread; once every
        branch has finished or waits, the run suspends, and on resume only the
        unfinished branches run again (replaying their checkpoints).

        Args:
            items: a list (or other sequence) of at most 10,000 items, handed to
                ``fn`` as they are (not through JSON).
            fn: called as ``fn(ctx, item)`` with the branch's ctx; use that ctx, not
                the task's, inside it. Its return value must be JSON-serializable
                (its annotated return type revives models and dataclasses).
            name: names the batch: its id is ``"<scope>/<name>#<n>"``.
            max_concurrency: branches executing at once (threads); default
                ``min(len(items), 32)``.
            completion: when the batch is decided and whether it succeeded
                (default: every item must succeed). See ``rung.Completion``.
            item_name: ``(item, index) -> str`` names each item's branch: its scope is
                ``"<batch id>[<name>]"`` (``"/orders#1[o-17]/charge#1"``) instead of
                ``"<batch id>[<index>]"``, in step ids, history and the trace. Names must
                be unique, without "/", "#", "[" or "]", and the same on every replay.

        Returns:
            A ``BatchResult``: per item its status, result or error, in input order.

        Raises:
            BatchFailed: the completion rule was broken (too many items failed);
                it carries the ``BatchResult``.

        Example:
            >>> def ship(ctx: rung.Context, order: dict) -> str:
            ...     label = ctx.step("label", make_label, order)
            ...     return ctx.step("send", send_parcel, label)
            >>> batch = ctx.map(orders, ship, max_concurrency=8,
            ...                 completion=rung.Completion(tolerated_failures=5))
            >>> tracking = batch.results()
        """
        return parallel.map_items(
            self._core,
            items,
            fn,
            name=name,
            max_concurrency=max_concurrency,
            completion=completion,
            item_name=item_name,
            face=Context,
        ).run()

    def parallel(
        self,
        fns: Sequence[Callable[[Context], R]] | Mapping[str, Callable[[Context], R]],
        *,
        name: str = "parallel",
        max_concurrency: int | None = None,
        completion: Completion | None = None,
    ) -> BatchResult[R]:
        """Run each ``fn(branch_ctx)`` as a branch, on threads; like ``map`` otherwise.

        Branch ``i`` is ``fns[i]``; its scope is ``"<batch id>[<i>]"``
        (``"/parallel#1[0]/fetch#1"``). Results come back in the order of ``fns``.
        Given a mapping of name -> function, each branch is named: its scope is
        ``"<batch id>[<name>]"`` (``"/parallel#1[user]/fetch#1"``), its ``BatchItem``
        carries the name, and ``results_by_name()`` returns the values by name.

        Example:
            >>> batch = ctx.parallel([
            ...     lambda c: c.step("user", load_user, uid),
            ...     lambda c: c.step("orders", load_orders, uid),
            ... ])
            >>> user, orders = batch.results()
            >>> batch = ctx.parallel({
            ...     "user": lambda c: c.step("load", load_user, uid),
            ...     "orders": lambda c: c.step("load", load_orders, uid),
            ... })
            >>> found = batch.results_by_name()   # {"user": ..., "orders": ...}
        """
        return parallel.parallel_fns(
            self._core,
            fns,
            name=name,
            max_concurrency=max_concurrency,
            completion=completion,
            face=Context,
        ).run()

    def wait(self, duration: timedelta | float, *, name: str = "wait") -> None:
        """Suspend the run for ``duration``; no worker is held while it waits.

        The wake time is fixed when the wait is first reached; replays pass a wait
        whose time has come without waiting again. Any length works (up to a year):
        waits longer than SQS's limits are chained (see docs/waits.md).

        Example:
            >>> ctx.wait(timedelta(hours=20))
        """
        waits.wait(self._core, duration, name)

    def wait_until(self, when: datetime, *, name: str = "wait") -> None:
        """Suspend the run until ``when`` (timezone-aware); a past time does not wait."""
        waits.wait_until(self._core, when, name)

    def create_token(
        self,
        name: str,
        *,
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
    ) -> Token:
        """Create a token someone outside the run answers; a checkpoint like a step.

        Hand ``token.id`` to a person or system (in a step: an email, a ticket);
        they call ``Client.complete_token(id, value)`` / ``fail_token`` or run
        ``rung tokens complete ID``; the run gets the answer from ``wait_for_token``.
        Or hand out ``token.url``: an outside system POSTs the value to it, with no AWS
        credentials (None where no callback URL is configured; docs/http.md).

        Args:
            name: names the token and its checkpoint (and its wait's, ``"<name>:wait"``:
                at most 195 characters).
            timeout: after this the token times out (default 7 days; at most 366 days).
            heartbeat_timeout: if set, the token also times out when no
                ``Client.heartbeat_token`` arrives within this long.

        Example:
            >>> token = ctx.create_token("approval", timeout=timedelta(days=3))
            >>> ctx.step("ask", send_approval_mail, token.id)
            >>> decision = ctx.wait_for_token(token)
        """
        return waits.create_token(self._core, name, timeout, heartbeat_timeout)

    def wait_for_token(self, token: Token, *, result_type: type[S] | None = None) -> Any:
        """Suspend until ``token`` is completed (returns its value) or failed (raises).

        Raises:
            TokenFailed: it was failed with ``Client.fail_token``; carries that error.
            TokenTimedOut: it reached its timeout or missed a heartbeat.

        Args:
            result_type: revive the value as this type (a pydantic model, dataclass).
        """
        return waits.wait_for_token(self._core, token, result_type)

    @overload
    def wait_for_callback(
        self,
        submit: Callable[[str], Any],
        /,
        *,
        name: str = "callback",
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
        result_type: type[S] | None = None,
    ) -> Any: ...

    @overload
    def wait_for_callback(
        self,
        name: str,
        submit: Callable[[str], Any],
        /,
        *,
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
        result_type: type[S] | None = None,
    ) -> Any: ...

    @overload
    def wait_for_callback(
        self,
        positional_name: str | None = None,
        /,
        *,
        name: str | None = None,
        submit: Callable[[str], Any],
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
        result_type: type[S] | None = None,
    ) -> Any: ...

    def wait_for_callback(
        self,
        first: str | Callable[[str], Any] | None = None,
        second: Callable[[str], Any] | None = None,
        /,
        *,
        name: str | None = None,
        submit: Callable[[str], Any] | None = None,
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
        result_type: type[S] | None = None,
    ) -> Any:
        """Create a token, call ``submit(token_id)`` as a step, and wait for the answer.

        Called as ``wait_for_callback(submit)`` (the name defaults to ``"callback"``, as a
        step's defaults to its function's), ``wait_for_callback("approval", submit)``,
        ``wait_for_callback("approval", submit=submit)``
        (or ``name=``). In a group of that name: ``approval/token#1``,
        ``approval/submit#1``, ``approval/token:wait#1``; a second callback of the same
        name continues the numbering (``approval/token#2`` ...).

        Example:
            >>> decision = ctx.wait_for_callback(
            ...     lambda tid: send_mail(boss, link(tid)), timeout=timedelta(days=3))
            >>> decision = ctx.wait_for_callback("approval", lambda tid: send_mail(boss, tid))
        """
        name, submit = waits.callback_arguments(first, second, name, submit)
        plan = waits.wait_for_callback(
            self._core, name, submit, timeout, heartbeat_timeout, result_type
        )
        return self._follow(plan)

    def wait_for_condition(
        self,
        check: Callable[[S], S],
        initial_state: S,
        strategy: Poll[S],
        *,
        name: str = "condition",
    ) -> S:
        """Poll ``check(state) -> state`` as a step on a durable schedule until done.

        Each poll is a checkpointed step; between polls the run suspends (no worker
        held). Returns the state for which ``strategy.until(state)`` is true.

        Raises:
            ConditionNotMet: ``strategy.max_polls`` polls did not satisfy it.

        Example:
            >>> job = ctx.wait_for_condition(
            ...     lambda s: get_job(s["id"]), {"id": job_id},
            ...     rung.Poll(until=lambda s: s["state"] == "done", interval=30))
        """
        return self._follow(
            waits.wait_for_condition(self._core, check, initial_state, strategy, name)
        )

    def trigger(
        self,
        task: str | Task[Any, In],
        payload: In | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        detached: bool = False,
        delay: timedelta | float | None = None,
        tags: Iterable[str] | None = None,
        version: ChildVersion = "latest",
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
            UnknownTask, InvalidPayload, PayloadTooLarge: as ``Client.trigger`` (the
                payload, and with a queue its concurrency key and priority, are
                checked before the child is created).
            InvalidConfig: a bad ``delay`` or ``tags`` (as ``Client.trigger``'s).

        ``version``: the code version the child runs on (docs/versioning.md):
        ``"latest"`` (the default), the one deployed when it starts; ``"parent"``, this
        run's own, for a child that must run the code its parent was written against.

        Example:
            >>> ctx.trigger(send_receipt, {"order_id": order.id}, detached=True)
        """
        return children.trigger(
            self._core,
            task,
            payload,
            name=name,
            detached=detached,
            delay=delay,
            tags=tags,
            version=version,
        )

    @overload
    def trigger_and_wait(
        self,
        task: Task[R, In],
        payload: In | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        timeout: timedelta | float | None = None,
        version: ChildVersion = "latest",
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
        version: ChildVersion = "latest",
    ) -> Any: ...

    def trigger_and_wait(
        self,
        task: str | Task[Any, In],
        payload: In | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        result_type: type[S] | None = None,
        timeout: timedelta | float | None = None,
        version: ChildVersion = "latest",
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
            UnknownTask, InvalidPayload, PayloadTooLarge: as for ``trigger``.
            UsageError: ``name`` leaves no room for its wait's ``":wait"`` (at most
                195 characters).

        ``version``: as for ``trigger``.

        Example:
            >>> try:
            ...     receipt = ctx.trigger_and_wait(charge, {"order_id": "o-1"})
            ... except rung.ChildRunFailed as exc:
            ...     receipt = None  # exc.run_id, exc.status, exc.message
        """
        return children.trigger_and_wait(
            self._core,
            task,
            payload,
            name=name,
            result_type=result_type,
            timeout=timeout,
            version=version,
        )

    def batch_trigger_and_wait(
        self,
        task: str | Task[Any, In],
        payloads: Iterable[In | Mapping[str, Any]],
        *,
        name: str | None = None,
        result_type: type[S] | None = None,
        timeout: timedelta | float | None = None,
        version: ChildVersion = "latest",
    ) -> list[ChildResult]:
        """Start one child run of ``task`` per payload; suspend until all have ended.

        Returns one ``ChildResult`` per payload, in input order; a failed child does
        not raise here: inspect ``result.ok``/``result.error`` or call
        ``result.unwrap()``. Checkpoints: ``"/<name>#1"`` ... ``"/<name>#N"`` (the
        children) and one ``"/<name>:wait#<n>"`` holding every outcome. Every payload
        is validated before any child starts. ``timeout``: as for ``trigger_and_wait``,
        counted from the first child's start; children not ended by then are canceled
        and come back with status CANCELED (the others keep their outcomes).
        ``version``: as for ``trigger``.

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge: as for ``trigger``, for any
                payload; no child is started then.
            UsageError: ``payloads`` is not a list, or ``name`` is too long (as for
                ``trigger_and_wait``).

        Example:
            >>> results = ctx.batch_trigger_and_wait(resize, [{"id": i} for i in ids])
            >>> failed = [r.run_id for r in results if not r.ok]
        """
        return children.batch_trigger_and_wait(
            self._core,
            task,
            payloads,
            name=name,
            result_type=result_type,
            timeout=timeout,
            version=version,
        )


class _ReplayAwareLogger(logging.LoggerAdapter[logging.Logger]):
    """``ctx.logger``: silent while its scope replays what an earlier attempt did."""

    def __init__(self, logger: logging.Logger, scope: Scope) -> None:
        run = scope.run
        super().__init__(
            logger, {"run_id": run.run_id, "task": run.task_id, "attempt": run.attempt}
        )
        self._scope = scope

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return not self._scope.replaying() and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs
