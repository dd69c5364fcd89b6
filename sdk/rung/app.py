"""Apps and tasks: what users declare."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar, overload

import pydantic
from typing_extensions import TypeVar as DefaultedTypeVar

from rung._util import serde
from rung._util.durations import check_duration
from rung.errors import InvalidConfig, InvalidPayload, UnknownTask
from rung.flow import Queue
from rung.retry import DEFAULT_RETRY, RetryPolicy
from rung.schedules import Cron, ScheduleEvent

#: The range of priorities (higher runs first).
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
#: The most tags a run carries, and the longest tag.
MAX_TAGS, MAX_TAG_CHARS = 10, 128
#: The longest idempotency key.
MAX_IDEMPOTENCY_KEY = 256

R = TypeVar("R")
#: A task's payload type (``Task[R]`` leaves it ``Any``): what ``trigger`` checks the
#: payload against, statically.
In = DefaultedTypeVar("In", default=Any)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True, eq=False)
class Task(Generic[R, In]):
    """A durable task, created by ``@app.task``.

    Calling it directly calls the function (handy in unit tests); use it, or its
    ``id``, wherever a task is named.

    Attributes:
        id: the task id used to trigger it.
        fn: the function ``(ctx, payload) -> result``.
        retry: the default policy of its steps and of errors outside steps.
        payload_model: the pydantic model the payload is validated against, if it is one.
        payload_type: the payload's annotation (a pydantic model, a dataclass, a
            ``TypedDict``, ``list[int]``...): the payload is validated against it at
            trigger time and revived as it on every attempt. None: any JSON value.
        max_duration: the compute time its runs may use in all (waits excluded);
            None for no limit. A run past it ends TIMED_OUT.
    """

    id: str
    fn: Callable[..., Any]  # (ctx, payload) -> R, or an async def returning R
    retry: RetryPolicy = DEFAULT_RETRY
    payload_model: type[pydantic.BaseModel] | None = None
    output_type: Any = field(default=None, repr=False)
    payload_type: Any = field(default=None, repr=False)
    max_duration: timedelta | None = None
    queue: Queue | None = None
    concurrency_key: Callable[[Any], Any] | None = field(default=None, repr=False)
    priority: Callable[[Any], Any] | int | None = field(default=None, repr=False)
    #: a ``rung.Cron`` it runs on, deployed with the app (docs/schedules.md)
    schedule: Cron | None = None

    def flow_of(self, payload: Any) -> tuple[str, int]:
        """The run's concurrency key ("" without one) and priority (0 by default).

        Raises:
            InvalidPayload: ``concurrency_key``/``priority`` raised or returned a value
                of the wrong kind for this payload.
        """
        key = ""
        if self.concurrency_key is not None:
            try:
                raw = self.concurrency_key(payload)
            except Exception as exc:
                raise InvalidPayload(
                    f"task {self.id!r}: concurrency_key raised {type(exc).__name__}: {exc}"
                ) from None
            if isinstance(raw, bool) or not isinstance(raw, str | int) or not str(raw):
                raise InvalidPayload(
                    f"task {self.id!r}: concurrency_key must return a non-empty str or int, "
                    f"got {raw!r}"
                )
            key = str(raw)
            if len(key) > 128:
                raise InvalidPayload(
                    f"task {self.id!r}: concurrency key is {len(key)} characters; the limit is 128"
                )
        priority = 0
        if self.priority is not None:
            if callable(self.priority):
                try:
                    raw_priority = self.priority(payload)
                except Exception as exc:
                    raise InvalidPayload(
                        f"task {self.id!r}: priority raised {type(exc).__name__}: {exc}"
                    ) from None
            else:
                raw_priority = self.priority
            if isinstance(raw_priority, bool) or not isinstance(raw_priority, int):
                raise InvalidPayload(
                    f"task {self.id!r}: priority must be an int, got {raw_priority!r}"
                )
            if not MIN_PRIORITY <= raw_priority <= MAX_PRIORITY:
                raise InvalidPayload(
                    f"task {self.id!r}: priority {raw_priority} is outside "
                    f"[{MIN_PRIORITY}, {MAX_PRIORITY}]"
                )
            priority = raw_priority
        return key, priority

    @property
    def is_async(self) -> bool:
        """Whether the function is an ``async def`` (it gets a ``rung.AsyncContext``)."""
        return inspect.iscoroutinefunction(self.fn)

    def __call__(self, ctx: Any, payload: Any) -> Any:
        return self.fn(ctx, payload)

    def encode_payload(self, payload: Any) -> str:
        """Validate ``payload`` for this task and return it as stored JSON.

        The payload is first turned into its JSON form (docs/determinism.md lists the
        conversions; for a typed payload a model's computed fields are left out, as
        they are not input),
        then that JSON text is validated against the task's payload annotation, exactly
        as the worker will revive it, so a payload that is accepted here always revives.

        Raises:
            InvalidPayload: it fails the task's payload type or is not JSON-serializable.
            PayloadTooLarge: its JSON is larger than the inline limit.
        """
        what = f"the payload for task {self.id!r}"
        adapter = serde.adapter(self.payload_type)
        try:
            # Without a type, the JSON form as it is (a model's computed fields too).
            text = serde.dumps(payload, what, as_input=adapter is not None)
            if adapter is None:
                return text
            try:
                value = adapter.validate_json(text)
            except pydantic.ValidationError as exc:
                raise InvalidPayload(
                    f"payload for task {self.id!r} does not match "
                    f"{_type_name(self.payload_type)}: {serde.problems(exc)}"
                ) from None
            # Store the validated form (defaults filled in, values converted) if it
            # validates again as it is; else the form that passed.
            validated = serde.dumps(value, what, as_input=True)
        except serde.NotSerializable as exc:
            raise InvalidPayload(str(exc)) from None
        return validated if _revives(adapter, validated) else text

    def decode_payload(self, text: str) -> Any:
        return serde.loads(text, self.payload_type)

    def payload_of(self, stored: Any) -> Any:
        """A run's payload as stored (JSON data) as this task's payload type."""
        return self.decode_payload(serde.dumps(stored, "payload"))

    def prepare(self, payload: Any) -> str:
        """Check ``payload`` for a new run of this task, as every trigger does (a
        client's, a replay's, a parent's for its child): ``encode_payload``, and with
        a queue, ``flow_of`` (its concurrency key and priority must work). Returns the
        JSON to store.

        Raises:
            InvalidPayload, PayloadTooLarge: as ``encode_payload`` and ``flow_of``.
        """
        text = self.encode_payload(payload)
        if self.queue is not None:
            self.flow_of(self.decode_payload(text))
        return text


def check_tags(tags: object, what: str) -> tuple[str, ...]:
    """A new run's ``tags`` (None: none), checked; ``what`` names the call in errors.

    Raises:
        InvalidConfig: not a list of at most ``MAX_TAGS`` non-empty strings of at most
            ``MAX_TAG_CHARS`` characters.
    """
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise InvalidConfig(
            f"{what} tags must be a list of strings, not a single string: tags=[{tags!r:.80}]"
        )
    if isinstance(tags, bytes | Mapping) or not isinstance(tags, Iterable):
        raise InvalidConfig(
            f"{what} tags must be a list of strings, got {type(tags).__name__} {tags!r:.80}"
        )
    result = tuple(tags)
    rule = (
        f"{what} tags must be at most {MAX_TAGS} non-empty strings of at most "
        f"{MAX_TAG_CHARS} characters each"
    )
    if len(result) > MAX_TAGS:
        raise InvalidConfig(f"{rule}, got {len(result)} tags")
    for tag in result:
        if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG_CHARS:
            raise InvalidConfig(f"{rule}, got {tag!r:.200}")
    return result


def check_schedulable(task: Task[Any], payload: Any = None, external_id: Any = None) -> None:
    """``task`` can be scheduled: its payload type takes a ``rung.ScheduleEvent`` with
    this ``payload`` and ``external_id`` (a declared schedule's: none).

    Raises:
        InvalidConfig: it does not (naming what to declare instead).
        InvalidPayload: it does, but not with this payload."""
    sample = ScheduleEvent(
        schedule_id="s",
        scheduled_at=datetime(2000, 1, 1, tzinfo=UTC),
        payload=payload,
        external_id=external_id,
    )
    try:
        task.encode_payload(sample.model_dump(mode="json"))
    except InvalidPayload as exc:
        plain = ScheduleEvent(schedule_id="s", scheduled_at=sample.scheduled_at)
        try:
            task.encode_payload(plain.model_dump(mode="json"))
        except InvalidPayload:
            if payload is None and external_id is None:
                raise InvalidConfig(
                    f"task {task.id!r} cannot be scheduled: its payload type does not take a "
                    "rung.ScheduleEvent (a scheduled run's payload). Declare the payload as "
                    "rung.ScheduleEvent, a subclass, or leave it unannotated"
                ) from None
        raise InvalidPayload(f"task {task.id!r} would refuse this schedule's runs: {exc}") from None


def check_idempotency_key(key: object) -> str | None:
    """A trigger's ``idempotency_key`` (None: none), checked.

    Raises:
        InvalidConfig: not a non-empty string of at most ``MAX_IDEMPOTENCY_KEY`` characters.
    """
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidConfig(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} "
            f"characters, got {key!r:.80}"
        )
    return key


class _Register(Protocol):
    """``@app.task(...)``: a sync or an async function becomes a ``Task`` of its result."""

    @overload
    def __call__(self, fn: Callable[[Any, In], Coroutine[Any, Any, R]], /) -> Task[R, In]: ...

    @overload
    def __call__(self, fn: Callable[[Any, In], R], /) -> Task[R, In]: ...

    @overload
    def __call__(self, fn: Callable[..., R], /) -> Task[R]: ...


class App:
    """A named set of tasks; the unit that is deployed.

    Example:
        >>> app = rung.App("shop")
        >>> @app.task(id="process-order")
        ... def process_order(ctx: rung.Context, payload: OrderIn) -> dict: ...
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _ID.match(name):
            raise InvalidConfig(
                f"App name {name!r} must be 1-128 characters of letters, digits, '.', '_', "
                "':' or '-', starting with a letter or digit"
            )
        self.name = name
        self._tasks: dict[str, Task[Any]] = {}

    @property
    def tasks(self) -> dict[str, Task[Any]]:
        return dict(self._tasks)

    def get_task(self, task: str | Task[Any]) -> Task[Any]:
        """The task with this id (or this Task), or ``UnknownTask`` naming the known ones."""
        task_id = task.id if isinstance(task, Task) else task
        if not isinstance(task_id, str):
            raise UnknownTask(f"a task id must be a string, got {type(task_id).__name__}")
        found = self._tasks.get(task_id)
        if found is None:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTask(f"app {self.name!r} has no task {task_id!r} (known tasks: {known})")
        return found

    @overload
    def task(self, fn: Callable[[Any, In], Coroutine[Any, Any, R]], /) -> Task[R, In]: ...

    @overload
    def task(self, fn: Callable[[Any, In], R], /) -> Task[R, In]: ...

    @overload
    def task(self, fn: Callable[..., R], /) -> Task[R]: ...

    @overload
    def task(
        self,
        *,
        id: str | None = None,
        retry: RetryPolicy | None = None,
        queue: Queue | None = None,
        concurrency_key: Callable[[Any], Any] | None = None,
        priority: Callable[[Any], Any] | int | None = None,
        max_duration: timedelta | float | None = None,
        schedule: Cron | None = None,
    ) -> _Register: ...

    def task(  # type: ignore[misc]
        self,
        fn: Callable[..., R] | None = None,
        /,
        *,
        id: str | None = None,  # noqa: A002 - the public, pinned name
        retry: RetryPolicy | None = None,
        queue: Queue | None = None,
        concurrency_key: Callable[[Any], Any] | None = None,
        priority: Callable[[Any], Any] | int | None = None,
        max_duration: timedelta | float | None = None,
        schedule: Cron | None = None,
    ) -> Task[R] | _Register:
        """Declare a task: a function ``(ctx: rung.Context, payload) -> result``, or an
        ``async def`` taking a ``rung.AsyncContext`` (docs/async.md).

        Args:
            id: the task id (default: the function's name).
            retry: default policy for its steps and for errors outside steps.
            max_duration: total compute time a run may use across all its attempts and
                invocations (waits excluded); checked before each step; a run past it
                ends TIMED_OUT. A timedelta or seconds; default no limit.
            queue: a ``rung.Queue``: concurrency and rate limits shared by its tasks.
            concurrency_key: ``payload -> str`` naming the run's key (a tenant) for the
                queue's ``per_key_limit`` / per-key rate; needs a queue.
            priority: an int, or ``payload -> int`` (higher first; default 0): among
                runs waiting for a slot of the queue, higher priority gets it first.
            schedule: a ``rung.Cron``: the task also runs on it, deployed with the app
                (its payload is a ``rung.ScheduleEvent``; docs/schedules.md).

        The payload is validated at trigger time against the second parameter's
        annotation (a pydantic model, a dataclass, a ``TypedDict``, ``list[int]`` ...,
        anything pydantic's ``TypeAdapter`` handles) and revived as it on every
        attempt; without an annotation (or with ``Any``) any JSON value is accepted.
        """
        _check_flow(queue, concurrency_key, priority)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidConfig(f"app.task(retry=...) must be a rung.RetryPolicy, got {retry!r}")
        limit = (
            check_duration(max_duration, "app.task max_duration", positive=True)
            if max_duration is not None
            else None
        )

        if schedule is not None and not isinstance(schedule, Cron):
            raise InvalidConfig(
                f"app.task(schedule=...) must be a rung.Cron, got {type(schedule).__name__}"
            )

        def register(func: Callable[..., R]) -> Task[R]:
            task_id = id if id is not None else func.__name__
            self._check_new(task_id, queue)
            payload_model, payload_type, output_type = _signature_types(task_id, func)
            task: Task[R] = Task(
                id=task_id,
                fn=func,
                retry=retry or DEFAULT_RETRY,
                payload_model=payload_model,
                output_type=output_type,
                payload_type=payload_type,
                max_duration=limit,
                queue=queue,
                concurrency_key=concurrency_key,
                priority=priority,
                schedule=schedule,
            )
            if schedule is not None:
                check_schedulable(task)
            self._tasks[task_id] = task
            return task

        if fn is not None:
            return register(fn)
        return typing.cast(_Register, register)

    def _check_new(self, task_id: object, queue: Queue | None) -> None:
        """A new task's id is well-formed and free, and its queue agrees with the app's."""
        if not isinstance(task_id, str) or not _ID.match(task_id):
            raise InvalidConfig(
                f"task id {task_id!r} must be 1-128 characters of letters, digits, '.', "
                "'_', ':' or '-', starting with a letter or digit"
            )
        if task_id in self._tasks:
            raise InvalidConfig(f"app {self.name!r} already has a task {task_id!r}")
        if queue is None:
            return
        for other in self._tasks.values():
            if other.queue is not None and other.queue.name == queue.name and other.queue != queue:
                raise InvalidConfig(
                    f"queue {queue.name!r} is declared twice with different limits "
                    f"(task {other.id!r}: {other.queue}; task {task_id!r}: {queue}); "
                    "share one rung.Queue object"
                )


def _check_flow(
    queue: Queue | None,
    concurrency_key: Callable[[Any], Any] | None,
    priority: Callable[[Any], Any] | int | None,
) -> None:
    """``app.task``'s flow-control options, each on its own and together."""
    if queue is not None and not isinstance(queue, Queue):
        raise InvalidConfig(f"app.task(queue=...) must be a rung.Queue, got {queue!r}")
    if concurrency_key is not None and not callable(concurrency_key):
        raise InvalidConfig("app.task(concurrency_key=...) must be a function of the payload")
    if concurrency_key is not None and queue is None:
        raise InvalidConfig(
            "app.task(concurrency_key=...) needs a queue: pass queue=rung.Queue(...) with "
            "a per_key_limit or a per-key rate_limit"
        )
    if queue is not None and queue.keyed and concurrency_key is None:
        raise InvalidConfig(
            f"queue {queue.name!r} limits per key: give the task a concurrency_key "
            "(payload -> tenant id)"
        )
    if (
        priority is not None
        and not callable(priority)
        and (isinstance(priority, bool) or not isinstance(priority, int))
    ):
        raise InvalidConfig("app.task(priority=...) must be an int or a function of the payload")


def _signature_types(task_id: str, func: Callable[..., Any]) -> tuple[Any, Any, Any]:
    if not callable(func):
        raise InvalidConfig(f"@app.task decorates a function, got {func!r}")
    if inspect.isasyncgenfunction(func):
        raise InvalidConfig(
            f"task {task_id!r} is an async generator: a task returns one value (its "
            "output); collect the items into a list and return that"
        )
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) < 2:
        raise InvalidConfig(
            f"task {task_id!r}: the function must take (ctx, payload), "
            f"it takes {len(params)} positional parameter(s)"
        )
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # e.g. a model defined inside a function, named as a string
        raise InvalidConfig(
            f"task {task_id!r}: cannot resolve the type annotations of {func.__qualname__} "
            f"({exc}); define the payload model at module level so it can be validated"
        ) from None
    annotation = hints.get(params[1].name)
    why = serde.unrevivable(annotation)
    if why is not None:
        raise InvalidConfig(
            f"task {task_id!r}: its payload annotation {_type_name(annotation)} is not a type "
            f"rung can validate and revive from JSON ({why}); annotate the payload with a "
            "pydantic model, a dataclass, a TypedDict or JSON types (dict, list, str, int, "
            "float, bool, None), or with Any to accept any JSON value"
        )
    model = (
        annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
        else None
    )
    return model, annotation, hints.get("return")


def _revives(adapter: pydantic.TypeAdapter[Any], text: str) -> bool:
    try:
        adapter.validate_json(text)
    except pydantic.ValidationError:
        return False
    return True


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)
