"""The async face of a run: ``rung.AsyncContext``, the first argument of an ``async def``
task.

Its operations are ``rung.Context``'s, with the same names, arguments, step ids,
checkpoints, retries, determinism check and history, awaited. Like ``Context`` it
holds nothing but its ``Scope``; the awaiting is in ``rung._durable.aio`` (which also
explains which operations may be passed to ``asyncio.gather``). See docs/async.md.
"""

from __future__ import annotations

import contextlib
import logging
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from rung._durable import aio, children, groups, parallel, steps, waits
from rung._durable.children import ChildVersion
from rung._durable.metadata import Metadata
from rung._durable.offload import io
from rung._durable.state import Replayed, Scope
from rung._durable.waits import DEFAULT_TOKEN_TIMEOUT, Poll
from rung.batch import BatchResult, Completion
from rung.context import _ReplayAwareLogger
from rung.models import ChildResult, RunHandle, Token
from rung.retry import RetryPolicy

if TYPE_CHECKING:
    from rung.app import Task

__all__ = ["AsyncContext"]

P = ParamSpec("P")
R = TypeVar("R")
In = TypeVar("In")  # a task's payload type
S = TypeVar("S")
T = TypeVar("T")


class AsyncContext:
    """Handed to every ``async def`` task as its first argument: ``rung.Context``'s
    operations, awaitable.

    ``await ctx.step(...)``, ``await ctx.map(...)``, ``await ctx.wait(...)`` and so on
    behave as the sync ones do (see ``rung.Context`` for each); ``ctx.group`` is a
    plain ``with``. Step functions may be ``async def`` (awaited on the run's event
    loop) or plain functions (run on a thread, without blocking the loop).

    ``ctx.step``, ``ctx.map`` and ``ctx.parallel`` take their place in the run when
    called, so they may be passed to ``asyncio.gather``; every other operation must be
    awaited by the task body itself (or by the branch function it belongs to), not
    by a task it started. See docs/async.md.

    Attributes:
        run_id: the run's id.
        task_id: the task's id.
        attempt: 1-based; grows only when an attempt fails or crashes.
    """

    def __init__(self, scope: Scope) -> None:
        self._core = scope
        self.run_id = scope.run.run_id
        self.task_id = scope.run.task_id
        self.attempt = scope.run.attempt

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """As ``rung.Context.logger``: each line written once per run."""
        return _ReplayAwareLogger(logging.getLogger(f"rung.tasks.{self.task_id}"), self._core)

    @property
    def metadata(self) -> Metadata:
        """As ``rung.Context.metadata`` (its changes do no I/O: nothing to await)."""
        core = self._core
        return Metadata(core.run.metadata, core.replaying, core.metadata_refusal)

    # As Context.step: checked with ParamSpec unless retry= or at_most_once= is given;
    # an async function's result is what it returns when awaited.
    @overload
    def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        retry: RetryPolicy | None,
        at_most_once: bool = False,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, R]: ...

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
    ) -> Coroutine[Any, Any, R]: ...

    @overload
    def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        at_most_once: bool,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, R]: ...

    @overload
    def step(
        self, name: str, fn: Callable[..., R], /, *args: Any, at_most_once: bool, **kwargs: Any
    ) -> Coroutine[Any, Any, R]: ...

    @overload
    def step(
        self, name: str, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]: ...

    @overload
    def step(
        self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]: ...

    def step(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Run ``fn(*args, **kwargs)`` as a checkpointed step named ``name``; await it.

        As ``rung.Context.step``. ``fn`` may be an ``async def`` (awaited on this
        loop) or a plain function (run on a thread). The step takes its position
        when called, so ``asyncio.gather(ctx.step("a", fa), ctx.step("b", fb))`` runs
        both at once and numbers them in argument order on every replay.

        Example:
            >>> summary = await ctx.step("summarize", summarize, url)
        """
        if "retry" in kwargs or "at_most_once" in kwargs:
            steps.check_own_keywords(name, fn, kwargs)
        retry = kwargs.pop("retry", None)
        at_most_once = kwargs.pop("at_most_once", False)
        steps.check_unwinding(self._core)
        slot = steps.take(self._core, name, fn, retry)
        return steps.run_step(
            self._core, slot, fn, args, kwargs, retry=retry, at_most_once=at_most_once
        )

    @contextlib.contextmanager
    def group(self, name: str) -> Iterator[None]:
        """As ``rung.Context.group``: a naming scope, entered with a plain ``with``."""
        with groups.named(self._core, name):
            yield

    async def checkpointed_group(
        self, name: str, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any
    ) -> R:
        """As ``rung.Context.checkpointed_group``, for ``async def fn(ctx, ...)``."""
        steps.check_unwinding(self._core)
        started = groups.start_checkpointed(self._core, name, fn)
        if isinstance(started, Replayed):
            return typing.cast(R, started.value)
        with started.inside():
            value = await fn(self, *args, **kwargs)
        steps.check_unwinding(self._core)  # a signal the group's code swallowed ends it
        return typing.cast(R, await io(started.returned, value))

    def map(
        self,
        items: Sequence[T],
        fn: Callable[[AsyncContext, T], Awaitable[R]],
        *,
        name: str = "map",
        max_concurrency: int | None = None,
        completion: Completion | None = None,
        item_name: Callable[[T, int], str] | None = None,
    ) -> Coroutine[Any, Any, BatchResult[R]]:
        """As ``rung.Context.map``, with ``async def fn(ctx, item)``: the branches run as
        asyncio tasks on this loop, at most ``max_concurrency`` at once (default
        ``min(len(items), 32)``). Takes its position when called (see ``step``).

        Example:
            >>> summaries = await ctx.map(urls, summarize_one, max_concurrency=5)
        """
        steps.check_unwinding(self._core)
        batch = parallel.map_items(
            self._core,
            items,
            fn,
            name=name,
            max_concurrency=max_concurrency,
            completion=completion,
            item_name=item_name,
            face=AsyncContext,
        )
        return steps.guarded(self._core, batch.run_async(), f"ctx.map(name={name!r})")

    def parallel(
        self,
        fns: Sequence[Callable[[AsyncContext], Awaitable[R]]]
        | Mapping[str, Callable[[AsyncContext], Awaitable[R]]],
        *,
        name: str = "parallel",
        max_concurrency: int | None = None,
        completion: Completion | None = None,
    ) -> Coroutine[Any, Any, BatchResult[R]]:
        """As ``rung.Context.parallel``, each ``fn(ctx)`` returning an awaitable
        (``async def``, or ``lambda c: c.step(...)``); branches as in ``map``.

        Example:
            >>> batch = await ctx.parallel({
            ...     "user": lambda c: c.step("load", load_user, uid),
            ...     "orders": lambda c: c.step("load", load_orders, uid),
            ... })
        """
        steps.check_unwinding(self._core)
        batch = parallel.parallel_fns(
            self._core,
            fns,
            name=name,
            max_concurrency=max_concurrency,
            completion=completion,
            face=AsyncContext,
        )
        return steps.guarded(self._core, batch.run_async(), f"ctx.parallel(name={name!r})")

    async def wait(self, duration: timedelta | float, *, name: str = "wait") -> None:
        """As ``rung.Context.wait``: the run suspends (no worker, no loop, is held)."""
        await aio.offload(self._core, waits.wait, duration, name)

    async def wait_until(self, when: datetime, *, name: str = "wait") -> None:
        """As ``rung.Context.wait_until``."""
        await aio.offload(self._core, waits.wait_until, when, name)

    async def create_token(
        self,
        name: str,
        *,
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
    ) -> Token:
        """As ``rung.Context.create_token``."""
        return await aio.offload(self._core, waits.create_token, name, timeout, heartbeat_timeout)

    async def wait_for_token(self, token: Token, *, result_type: type[S] | None = None) -> Any:
        """As ``rung.Context.wait_for_token``."""
        return await aio.offload(self._core, waits.wait_for_token, token, result_type)

    async def wait_for_callback(
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
        """As ``rung.Context.wait_for_callback``; ``submit`` may be an ``async def``."""
        name, submit = waits.callback_arguments(first, second, name, submit)
        steps.check_unwinding(self._core)
        what = f"ctx.wait_for_callback({name!r})"
        self._core.check_caller(what)
        plan = waits.wait_for_callback(
            self._core, name, submit, timeout, heartbeat_timeout, result_type
        )
        return await steps.guarded(self._core, aio.follow(plan, self.step), what)

    async def wait_for_condition(
        self,
        check: Callable[[S], S] | Callable[[S], Awaitable[S]],
        initial_state: S,
        strategy: Poll[S],
        *,
        name: str = "condition",
    ) -> S:
        """As ``rung.Context.wait_for_condition``; ``check`` may be an ``async def``."""
        steps.check_unwinding(self._core)
        what = f"ctx.wait_for_condition(name={name!r})"
        self._core.check_caller(what)
        plan = waits.wait_for_condition(
            self._core,
            typing.cast(Callable[[S], S], check),
            initial_state,
            strategy,
            name,
        )
        return await steps.guarded(self._core, aio.follow(plan, self.step), what)

    async def trigger(
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
        """As ``rung.Context.trigger``."""
        return await aio.offload(
            self._core,
            children.trigger,
            task,
            payload,
            name=name,
            detached=detached,
            delay=delay,
            tags=tags,
            version=version,
        )

    @overload
    async def trigger_and_wait(
        self,
        task: Task[R, In],
        payload: In | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        timeout: timedelta | float | None = None,
        version: ChildVersion = "latest",
    ) -> R: ...

    @overload
    async def trigger_and_wait(
        self,
        task: str,
        payload: Any = None,
        *,
        name: str | None = None,
        result_type: type[S] | None = None,
        timeout: timedelta | float | None = None,
        version: ChildVersion = "latest",
    ) -> Any: ...

    async def trigger_and_wait(
        self,
        task: str | Task[Any, In],
        payload: In | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        result_type: type[S] | None = None,
        timeout: timedelta | float | None = None,
        version: ChildVersion = "latest",
    ) -> Any:
        """As ``rung.Context.trigger_and_wait``."""
        return await aio.offload(
            self._core,
            children.trigger_and_wait,
            task,
            payload,
            name=name,
            result_type=result_type,
            timeout=timeout,
            version=version,
        )

    async def batch_trigger_and_wait(
        self,
        task: str | Task[Any, In],
        payloads: Iterable[In | Mapping[str, Any]],
        *,
        name: str | None = None,
        result_type: type[S] | None = None,
        timeout: timedelta | float | None = None,
        version: ChildVersion = "latest",
    ) -> list[ChildResult]:
        """As ``rung.Context.batch_trigger_and_wait``."""
        return await aio.offload(
            self._core,
            children.batch_trigger_and_wait,
            task,
            payloads,
            name=name,
            result_type=result_type,
            timeout=timeout,
            version=version,
        )
