"""``rung.AsyncClient``: the ``Client`` for asyncio apps (FastAPI, aiohttp).

Each method is ``Client``'s, run on a bounded pool of threads of the client's own, so
the event loop never waits on AWS. Why threads and not an async AWS library
(aiobotocore): docs/async.md ("The async client"), measured in bench/async_client.py.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from rung.client import Client
from rung.errors import UsageError

if TYPE_CHECKING:
    from types import TracebackType

    from rung.app import App, Task
    from rung.flow import QueueInfo
    from rung.models import (
        Debounce,
        HistoryEvent,
        Run,
        RunHandle,
        RunPage,
        RunStatus,
        TokenState,
        TriggerItem,
        TriggerResult,
    )
    from rung.schedules import Cron, ScheduleInfo

__all__ = ["AsyncClient"]

R = TypeVar("R")
In = TypeVar("In")  # a task's payload type

#: Calls in flight at once per client (more wait for a thread, not the loop).
DEFAULT_MAX_WORKERS = 16


class AsyncClient:
    """``rung.Client`` with awaitable methods, for code running on an event loop.

    Takes ``Client``'s arguments (``app``, ``table_name``, ``queue_url``,
    ``endpoint_url``, ``region``, ``event_bus``, ``retention``, ``session``), or wraps
    a client you made (``AsyncClient.of(client)``). Every method is the same as
    ``Client``'s, awaited, and raises the same errors.

    Args:
        max_workers: calls in flight at once (the pool's threads, made as needed);
            more calls queue for a thread without blocking the loop.

    Example:
        >>> client = rung.AsyncClient(app, table_name="rung-shop", queue_url=url)
        >>> handle = await client.trigger("process-order", {"order_id": "o-1"})
        >>> run = await client.get_run(handle.run_id)
        >>> await client.close()   # or: async with rung.AsyncClient(...) as client:
    """

    def __init__(
        self,
        app: App | None,
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        **client_options: Any,
    ) -> None:
        self._init(Client(app, **client_options), max_workers)

    @classmethod
    def of(cls, client: Client, *, max_workers: int = DEFAULT_MAX_WORKERS) -> AsyncClient:
        """An async client over ``client`` (made with ``Client(...)`` or
        ``Client.from_stack``); they share their AWS clients."""
        if not isinstance(client, Client):
            raise UsageError(f"AsyncClient.of needs a rung.Client, got {type(client).__name__}")
        made = cls.__new__(cls)
        made._init(client, max_workers)
        return made

    @classmethod
    async def from_stack(
        cls,
        app: App | None,
        stack_name: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: Any = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> AsyncClient:
        """As ``Client.from_stack`` (the stack's outputs are read on a thread)."""
        client = await asyncio.to_thread(
            Client.from_stack,
            app,
            stack_name,
            endpoint_url=endpoint_url,
            region=region,
            session=session,
        )
        return cls.of(client, max_workers=max_workers)

    def _init(self, client: Client, max_workers: int) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise UsageError(
                f"AsyncClient(max_workers=...) must be an int >= 1, got {max_workers!r}"
            )
        self._sync = client
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="rung-client")

    @property
    def sync(self) -> Client:
        """The ``Client`` underneath, for code that is not on the loop."""
        return self._sync

    @property
    def app(self) -> App | None:
        return self._sync.app

    async def close(self) -> None:
        """Wait for calls in flight, then free the pool's threads."""
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, method: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._pool, functools.partial(method, *args, **kwargs)
            )
        except RuntimeError as exc:
            if "after shutdown" in str(exc):
                raise UsageError("this AsyncClient is closed: make a new one") from None
            raise

    async def trigger(
        self,
        task: str | Task[Any, In],
        payload: In | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        delay: timedelta | float | None = None,
        tags: Iterable[str] | None = None,
        idempotency_ttl: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        metadata: Mapping[str, Any] | None = None,
        debounce: Debounce | None = None,
    ) -> RunHandle:
        """As ``Client.trigger``: start a run of ``task`` with ``payload``."""
        return await self._call(
            self._sync.trigger,
            task,
            payload,
            idempotency_key=idempotency_key,
            delay=delay,
            tags=tags,
            idempotency_ttl=idempotency_ttl,
            ttl=ttl,
            metadata=metadata,
            debounce=debounce,
        )

    async def batch_trigger(
        self,
        task: str | Task[Any, In],
        items: Sequence[In | Mapping[str, Any] | TriggerItem | None],
        *,
        idempotency_ttl: timedelta | float | None = None,
    ) -> list[TriggerResult]:
        """As ``Client.batch_trigger``: one run per item, in bulk."""
        return await self._call(
            self._sync.batch_trigger, task, items, idempotency_ttl=idempotency_ttl
        )

    async def get_run(self, run_id: str) -> Run:
        """As ``Client.get_run``: the run's status, attempts, timestamps, output and error."""
        return await self._call(self._sync.get_run, run_id)

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        task: str | None = None,
        limit: int = 50,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        tag: str | None = None,
        cursor: str | None = None,
        tags: Iterable[str] | None = None,
    ) -> RunPage:
        """As ``Client.list_runs``."""
        return await self._call(
            self._sync.list_runs,
            status=status,
            task=task,
            limit=limit,
            created_after=created_after,
            created_before=created_before,
            tag=tag,
            cursor=cursor,
            tags=tags,
        )

    async def list_children(self, run_id: str) -> list[Run]:
        """As ``Client.list_children``."""
        return await self._call(self._sync.list_children, run_id)

    async def runs_in_flight(self) -> dict[str | None, dict[RunStatus, int]]:
        """As ``Client.runs_in_flight``: unfinished runs by code version and status."""
        return await self._call(self._sync.runs_in_flight)

    async def cancel(self, run_id: str, reason: str | None = None) -> Run:
        """As ``Client.cancel``."""
        return await self._call(self._sync.cancel, run_id, reason)

    async def replay(self, run_id: str) -> RunHandle:
        """As ``Client.replay``."""
        return await self._call(self._sync.replay, run_id)

    async def redrive(self, run_id: str) -> Run:
        """As ``Client.redrive``: resume a FAILED run from its failed step, after a code fix."""
        return await self._call(self._sync.redrive, run_id)

    async def complete_token(self, token_id: str, value: Any = None) -> TokenState:
        """As ``Client.complete_token``."""
        return await self._call(self._sync.complete_token, token_id, value)

    async def fail_token(self, token_id: str, error: str | BaseException) -> TokenState:
        """As ``Client.fail_token``."""
        return await self._call(self._sync.fail_token, token_id, error)

    async def heartbeat_token(self, token_id: str) -> TokenState:
        """As ``Client.heartbeat_token``."""
        return await self._call(self._sync.heartbeat_token, token_id)

    async def get_token(self, token_id: str) -> TokenState:
        """As ``Client.get_token``: a token's status, deadline and answer."""
        return await self._call(self._sync.get_token, token_id)

    async def list_tokens(self, run_id: str) -> list[TokenState]:
        """As ``Client.list_tokens``."""
        return await self._call(self._sync.list_tokens, run_id)

    async def list_queues(self) -> list[QueueInfo]:
        """As ``Client.list_queues``."""
        return await self._call(self._sync.list_queues)

    async def get_queue(self, name: str) -> QueueInfo:
        """As ``Client.get_queue``."""
        return await self._call(self._sync.get_queue, name)

    async def set_queue_limit(
        self,
        name: str,
        concurrency_limit: int | None = None,
        per_key_limit: int | None = None,
        *,
        reset: bool = False,
    ) -> QueueInfo:
        """As ``Client.set_queue_limit``."""
        return await self._call(
            self._sync.set_queue_limit, name, concurrency_limit, per_key_limit, reset=reset
        )

    async def pause_queue(self, name: str) -> QueueInfo:
        """As ``Client.pause_queue``."""
        return await self._call(self._sync.pause_queue, name)

    async def resume_queue(self, name: str) -> QueueInfo:
        """As ``Client.resume_queue``."""
        return await self._call(self._sync.resume_queue, name)

    async def history(self, run_id: str) -> list[HistoryEvent]:
        """As ``Client.history``."""
        return await self._call(self._sync.history, run_id)

    async def create_schedule(
        self,
        task: str | Task[Any],
        cron: Cron | str,
        *,
        timezone: str | None = None,
        payload: Any = None,
        external_id: str | None = None,
        dedup_key: str | None = None,
    ) -> ScheduleInfo:
        """As ``Client.create_schedule``."""
        return await self._call(
            self._sync.create_schedule,
            task,
            cron,
            timezone=timezone,
            payload=payload,
            external_id=external_id,
            dedup_key=dedup_key,
        )

    async def list_schedules(self, task: str | None = None) -> list[ScheduleInfo]:
        """As ``Client.list_schedules``."""
        return await self._call(self._sync.list_schedules, task)

    async def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        """As ``Client.get_schedule``."""
        return await self._call(self._sync.get_schedule, schedule_id)

    async def update_schedule(
        self,
        schedule_id: str,
        *,
        cron: Cron | str | None = None,
        timezone: str | None = None,
        payload: Any = None,
        external_id: str | None = None,
    ) -> ScheduleInfo:
        """As ``Client.update_schedule``."""
        return await self._call(
            self._sync.update_schedule,
            schedule_id,
            cron=cron,
            timezone=timezone,
            payload=payload,
            external_id=external_id,
        )

    async def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """As ``Client.pause_schedule``."""
        return await self._call(self._sync.pause_schedule, schedule_id)

    async def resume_schedule(self, schedule_id: str, *, catch_up: bool = False) -> ScheduleInfo:
        """As ``Client.resume_schedule``."""
        return await self._call(self._sync.resume_schedule, schedule_id, catch_up=catch_up)

    async def delete_schedule(self, schedule_id: str) -> None:
        """As ``Client.delete_schedule``."""
        await self._call(self._sync.delete_schedule, schedule_id)

    async def deploy_schedules(self) -> list[str]:
        """As ``Client.deploy_schedules``."""
        return await self._call(self._sync.deploy_schedules)
