"""The semantics suite once, for sync and async tasks: the ``flavor`` fixture.

A test writes its task body once, in async syntax (``await ctx.step(...)``), and
registers it with ``flavor.task(app, id=...)``:

* ``async``: the body is the task, as a user writes an async task (``rung.AsyncContext``).
* ``sync``: the body runs over the real sync ``rung.Context``: every operation is called
  synchronously, when the body reaches it, and its value comes back as an awaitable that
  is already done, so the coroutine never suspends and is driven to its end in the
  worker's thread. What runs is the sync API with the same arguments, in the same order.

Branch functions of ``ctx.map``/``ctx.parallel`` and the bodies of checkpointed groups are
``async def``s too; the sync flavor drives them the same way. Step functions stay plain
``def``s (an async task runs them without blocking its loop), or are written with
``flavor.step`` when a test needs ``@rung.step``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any

import pytest

import rung


class Ready:
    """An awaitable that is already done: the sync flavor's value of an operation."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # (a generator: awaiting it returns at once)


def drive(awaitable: Awaitable[Any]) -> Any:
    """Run a body that awaits only ``Ready`` values to its end, synchronously (or take
    the value of a ``Ready``, as a branch ``lambda c: c.step(...)`` returns)."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    steps.close()
    raise AssertionError(
        "a sync-flavored body awaited something that is not a ctx operation "
        "(asyncio.sleep, gather ...): mark the test async-only"
    )


def _driven(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """A sync function (with ``fn``'s annotations) that drives ``fn`` over a ``SyncFace``."""
    if not callable(fn):
        return fn  # for the sync operation to refuse ("fn must be callable")

    @functools.wraps(fn)
    def run(ctx: rung.Context, *args: Any, **kwargs: Any) -> Any:
        return drive(fn(SyncFace(ctx), *args, **kwargs))

    return run


class SyncFace:
    """The sync ``rung.Context`` with awaitable results (see the module docstring)."""

    def __init__(self, ctx: rung.Context) -> None:
        self._ctx = ctx
        self.run_id = ctx.run_id
        self.task_id = ctx.task_id
        self.attempt = ctx.attempt

    @property
    def logger(self) -> Any:
        return self._ctx.logger

    def group(self, name: str) -> Any:
        return self._ctx.group(name)

    def map(self, items: Any, fn: Callable[..., Any], **options: Any) -> Ready:
        return Ready(self._ctx.map(items, _driven(fn), **options))

    def parallel(self, fns: Any, **options: Any) -> Ready:
        if isinstance(fns, Mapping):
            return Ready(self._ctx.parallel({k: _driven(f) for k, f in fns.items()}, **options))
        return Ready(self._ctx.parallel([_driven(f) for f in fns], **options))

    def checkpointed_group(self, name: str, fn: Callable[..., Any], /, *a: Any, **k: Any) -> Ready:
        return Ready(self._ctx.checkpointed_group(name, _driven(fn), *a, **k))

    def __getattr__(self, name: str) -> Callable[..., Ready]:
        operation = getattr(self._ctx, name)

        def call(*args: Any, **kwargs: Any) -> Ready:
            return Ready(operation(*args, **kwargs))

        return call


class Flavor:
    """How a test's async-syntax body becomes a task (``sync`` or ``async``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def is_async(self) -> bool:
        return self.name == "async"

    def __repr__(self) -> str:
        return self.name

    def task(self, app: rung.App, **options: Any) -> Callable[[Callable[..., Any]], Any]:
        """``app.task(**options)`` for a body written ``async def body(ctx, payload)``."""

        def register(body: Callable[..., Coroutine[Any, Any, Any]]) -> Any:
            if self.is_async:
                return app.task(**options)(body)
            options.setdefault("id", body.__name__)
            return app.task(**options)(_driven(body))

        return register

    def step(self, fn: Callable[..., Awaitable[Any]] | None = None, /, **options: Any) -> Any:
        """``@rung.step`` for an ``async def`` step function: awaited in both flavors.

        ``sync``: the step is a plain function (``asyncio.run`` of yours, under your
        function's name) and its call comes back ``Ready``."""

        def decorate(func: Callable[..., Awaitable[Any]]) -> Any:
            if self.is_async:
                return rung.step(**options)(func)
            options.setdefault("name", func.__qualname__)

            @functools.wraps(func)
            def plain(*args: Any, **kwargs: Any) -> Any:
                return asyncio.run(_awaited(func(*args, **kwargs)))

            stepped = rung.step(**options)(plain)

            @functools.wraps(func)
            def call(*args: Any, **kwargs: Any) -> Ready:
                return Ready(stepped(*args, **kwargs))

            return call

        return decorate(fn) if fn is not None else decorate


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> Flavor:
    """Run the test once with a sync task and once with an async one."""
    return Flavor(request.param)
