"""Where an async task's durable writes run: a bounded pool of the attempt's own.

The core's operations are synchronous (they read and write DynamoDB through the
session); an async task runs them here, off its event loop. The pool is separate
from the loop's default executor, which runs the task's plain step functions, so
neither starves the other; it is made by ``aio.run_body`` for one attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

R = TypeVar("R")

#: Threads that write an async attempt's checkpoints (at most this many at once).
IO_THREADS = 8

#: True in the core's own calls on the pool: the only threads an async task's scope
#: accepts operations from (``state._check_owner``).
in_core: contextvars.ContextVar[bool] = contextvars.ContextVar("rung_in_core", default=False)

#: The attempt's pool (None: the loop's default executor).
io_pool: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "rung_io_pool", default=None
)


async def io(fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    """``fn(*args, **kwargs)`` on the attempt's pool, in a copy of this context."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, _guarded, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(io_pool.get(), call)


def _guarded(fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    """A StopIteration set on an asyncio future would leave it pending for ever (asyncio
    refuses it and only logs): it comes out as a RuntimeError instead."""
    in_core.set(True)  # (in this call's own copy of the context)
    try:
        return fn(*args, **kwargs)
    except StopIteration as exc:
        raise RuntimeError(f"{getattr(fn, '__qualname__', fn)} raised StopIteration") from exc
