"""The client: trigger runs and read them, from anywhere that can reach the table and queue."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from rung._aws import sessions
from rung._aws.dynamodb import DEFAULT_RETENTION, DynamoStore, check_retention, whole_days
from rung._aws.events import BUS_ENV, EventBus
from rung._aws.s3 import Blobs
from rung._aws.scheduler import EMULATOR_ROLE, Scheduler
from rung._aws.sqs import SqsQueue
from rung._engine import triggering
from rung._engine.history import build_history
from rung._engine.lifecycle import Lifecycle
from rung._engine.queues import QueueAdmin
from rung._engine.schedules import ScheduleMethods, Schedules
from rung._util import serde
from rung._util.clock import Clock, SystemClock
from rung._util.ids import check_run_id, check_token_id
from rung.app import App, Task, check_tags
from rung.errors import (
    ErrorInfo,
    InvalidConfig,
    InvalidPayload,
    RunNotFound,
    UsageError,
)
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

In = TypeVar("In")  # a task's payload type


class Client(ScheduleMethods):
    """Trigger and inspect runs of an app's tasks.

    Args:
        app: the app whose tasks are triggered (payloads are validated against them);
            None for a read-only client, which reads runs but cannot trigger them.
        table_name: the DynamoDB table (default ``$RUNG_TABLE_NAME``).
        queue_url: the work queue (default ``$RUNG_QUEUE_URL``).
        endpoint_url: an emulator or LocalStack (default ``$AWS_ENDPOINT_URL``; unset: AWS).
        region: the AWS region (default from the environment, else us-east-1).
        event_bus: the EventBridge bus that ``cancel`` and ``redrive`` announce runs on
            ("Run Canceled", "Run Redriven"; default ``$RUNG_EVENT_BUS``, and the stack's
            ``EventBusName`` output with ``from_stack``; unset: none are sent).
        retention: how long the app keeps finished runs, as its stack does: what a
            run canceled here is stamped with, and how old a missing run's id must be
            to be reported ``RunExpired`` (default ``$RUNG_RETENTION_DAYS`` days, the
            stack's ``RetentionDays`` output with ``from_stack``, else 30 days).
        session: your own ``boto3.Session`` (credentials, profile, region, event
            hooks) for the client's AWS clients (default: rung's, from the environment
            and ``AWS_PROFILE``, whose region it honours). ``region`` still wins.
        schedule_group, scheduler_role_arn: the stack's EventBridge Scheduler group and
            the role its schedules send as, for the schedule methods (default
            ``$RUNG_SCHEDULE_GROUP`` and ``$RUNG_SCHEDULER_ROLE_ARN``; ``from_stack``
            reads both from the stack's outputs).
        bucket: the stack's payload bucket, where values over 128 KiB are kept (default
            ``$RUNG_PAYLOAD_BUCKET``; ``from_stack`` reads the ``PayloadBucketName``
            output). Without one, payloads and token values over 128 KiB are refused
            and runs whose values are offloaded cannot be read in full.

    Example:
        >>> client = rung.Client(app, table_name="rung-shop", queue_url=url)
        >>> handle = client.trigger("process-order", {"order_id": "o-1"}, idempotency_key="o-1")
        >>> client.get_run(handle.run_id).status
        >>> client = rung.Client.from_stack(app, "rung-shop")  # from the stack's outputs
    """

    def __init__(
        self,
        app: App | None,
        *,
        table_name: str | None = None,
        queue_url: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        clock: Clock | None = None,
        event_bus: str | None = None,
        retention: timedelta | float | None = None,
        session: Any = None,
        schedule_group: str | None = None,
        scheduler_role_arn: str | None = None,
        bucket: str | None = None,
    ) -> None:
        table_name = table_name or os.environ.get("RUNG_TABLE_NAME")
        queue_url = queue_url or os.environ.get("RUNG_QUEUE_URL")
        if not table_name or not queue_url:
            raise UsageError(
                "rung.Client needs the table and queue: pass table_name= and queue_url=, or set "
                "RUNG_TABLE_NAME and RUNG_QUEUE_URL (template.yaml's outputs name both)"
            )
        if retention is None:
            days = os.environ.get("RUNG_RETENTION_DAYS", "").strip()
            retention = timedelta(days=whole_days(days)) if days else DEFAULT_RETENTION
        bucket = bucket or os.environ.get("RUNG_PAYLOAD_BUCKET") or None
        store = DynamoStore(
            sessions.client("dynamodb", endpoint_url, region, session=session),
            table_name,
            check_retention(retention),
            Blobs(sessions.client("s3", endpoint_url, region, session=session), bucket)
            if bucket
            else None,
        )
        queue = SqsQueue(sessions.client("sqs", endpoint_url, region, session=session), queue_url)
        bus = event_bus or os.environ.get(BUS_ENV) or None
        events_client = sessions.client(
            "events", endpoint_url, region, reporting=True, session=session
        )
        events = EventBus(events_client, bus) if bus else None
        scheduler = Scheduler(
            sessions.client("scheduler", endpoint_url, region, session=session),
            schedule_group or os.environ.get("RUNG_SCHEDULE_GROUP") or "",
            queue.arn,
            scheduler_role_arn or os.environ.get("RUNG_SCHEDULER_ROLE_ARN"),
        )
        self._init(app, store, queue, clock or SystemClock(), events, scheduler)

    @classmethod
    def from_stack(
        cls,
        app: App | None,
        stack_name: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: Any = None,
    ) -> Client:
        """A client for the table and queue of a deployed template.yaml stack
        (``session``: your own ``boto3.Session``, as for ``Client``).

        Raises:
            rung._aws.cloudformation.StackError: no such stack at the endpoint, nothing listening
                there, or the stack has no ``TableName``/``QueueUrl`` outputs.

        Example:
            >>> client = rung.Client.from_stack(app, "rung-shop", endpoint_url=url)
        """
        from rung._aws import cloudformation  # CloudFormation is needed only here

        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        cfn = sessions.client("cloudformation", endpoint_url, region, session=session)
        stack = cloudformation.describe(cfn, stack_name, endpoint_url)
        missing = [key for key in ("TableName", "QueueUrl") if not stack.outputs.get(key)]
        if missing:
            raise cloudformation.StackError(
                f"stack {stack_name!r} has no {' or '.join(missing)} output: is it a rung "
                "stack (deployed from template.yaml)?"
            )
        return cls(
            app,
            table_name=stack.outputs["TableName"],
            queue_url=stack.outputs["QueueUrl"],
            endpoint_url=endpoint_url,
            region=region,
            event_bus=stack.outputs.get("EventBusName"),
            session=session,
            # (the template names the group after the stack; an emulator may not make it)
            schedule_group=stack.outputs.get("ScheduleGroupName") or stack_name,
            scheduler_role_arn=stack.outputs.get("SchedulerRoleArn")
            or (EMULATOR_ROLE if endpoint_url else None),
            bucket=stack.outputs.get("PayloadBucketName"),
            retention=(
                timedelta(days=whole_days(stack.outputs["RetentionDays"]))
                if stack.outputs.get("RetentionDays")
                else None
            ),
        )

    @classmethod
    def _from_parts(
        cls,
        app: App,
        store: DynamoStore,
        queue: SqsQueue,
        clock: Clock,
        events: EventBus | None = None,
        scheduler: Scheduler | None = None,
    ) -> Client:
        client = cls.__new__(cls)
        client._init(app, store, queue, clock, events, scheduler)
        return client

    def _init(
        self,
        app: App | None,
        store: DynamoStore,
        queue: SqsQueue,
        clock: Clock,
        events: EventBus | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        if app is not None and not isinstance(app, App):
            raise UsageError(f"rung.Client needs a rung.App or None, got {type(app).__name__}")
        self.app = app
        self._store = store
        self._queue = queue
        self._clock = clock
        self._queues = QueueAdmin(app, store, queue, clock)
        name = app.name if app is not None else ""
        self._lifecycle = Lifecycle(store, queue, clock, self._queues, events, name)
        self._schedules = Schedules(app, store, queue, scheduler, clock)

    def trigger(
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
        """Start a run of ``task`` with ``payload``.

        The payload is validated before anything is stored; a refused trigger stores
        and enqueues nothing. With ``idempotency_key``, every trigger of the same task
        with the same key within ``idempotency_ttl`` (default 30 days) returns the same
        run, however many race. ``delay`` makes the run due later. With ``ttl``, a run
        whose body has not started within ``ttl`` of being due (a backlog, a full
        queue) ends ``EXPIRED`` instead; a started run never expires (docs/lifecycle.md).
        ``metadata``: the run's first ``ctx.metadata`` values (docs/metadata.md).
        ``debounce=rung.Debounce(key, window)``: triggers of the same key collapse into
        one run, started ``window`` after the last with its payload (``created`` False
        for the triggers that joined a pending run; docs/lifecycle.md, "Debounce").

        Raises:
            UnknownTask: the app has no such task.
            InvalidPayload: the payload fails the task's model or is not JSON.
            PayloadTooLarge: the payload is over 10 MiB of JSON (docs/payloads.md).
            InvalidConfig: a bad ``delay``, ``ttl``, ``tags``, ``idempotency_key`` or
                ``debounce`` (which takes neither a key nor a delay).
            InvalidMetadata: ``metadata`` is not small JSON values by name.
        """
        return triggering.trigger_task(
            self._store,
            self._queue,
            self._clock,
            triggering.writable(self.app).get_task(task),
            payload,
            idempotency_key=idempotency_key,
            delay=delay,
            tags=tags,
            idempotency_ttl=idempotency_ttl,
            ttl=ttl,
            metadata=metadata,
            debounce=debounce,
        )

    def batch_trigger(
        self,
        task: str | Task[Any, In],
        items: Sequence[In | Mapping[str, Any] | TriggerItem | None],
        *,
        idempotency_ttl: timedelta | float | None = None,
    ) -> list[TriggerResult]:
        """Start one run of ``task`` per item (at most 1,000), in bulk.

        An item is a payload, or a ``rung.TriggerItem(payload, idempotency_key=,
        delay=, tags=, ttl=, metadata=)`` with options of its own (as ``trigger``'s). Every item is
        checked before anything is stored; a refused item is reported and the others go
        on. Runs without an idempotency key are written 25 per request, and messages
        sent 10 per request; a key matches one run per task and key as in ``trigger``
        (``handle.created`` False), also between items of this call. See
        docs/lifecycle.md ("Batch trigger").

        Returns:
            One ``TriggerResult`` per item, in the items' order: ``handle`` (the run),
            or ``error`` (``NotStored``: nothing was stored or enqueued for it, trigger
            it again; ``NotTriggered``: a keyed item's write failed, triggering it
            again is safe; ``StoredOrNot``: check ``get_run`` first).

        Raises:
            UnknownTask: the app has no such task. UsageError: ``items`` is not a list
            (or tuple), or a read-only client. InvalidConfig: more than 1,000 items, or
            a bad ``idempotency_ttl``. ClientError: DynamoDB refused the call as a whole
            (access denied, no table) before storing anything. In all of these, nothing
            is stored.

        Example:
            >>> results = client.batch_trigger("resize", [
            ...     {"image": "a.png"},
            ...     rung.TriggerItem({"image": "b.png"}, idempotency_key="b", delay=60),
            ... ])
            >>> [r.handle.run_id for r in results if r.ok]
        """
        found = triggering.writable(self.app).get_task(task)
        ttl = triggering.check_idempotency_ttl(idempotency_ttl)
        return triggering.batch_trigger(self._store, self._queue, self._clock, found, items, ttl)

    def get_run(self, run_id: str) -> Run:
        """The run's status, attempts, timestamps, output and error.

        Raises:
            RunExpired: the run finished longer ago than the retention period (a
                ``RunNotFound``; docs/retention.md).
            RunNotFound: no run has this id.
        """
        run = self._store.live_run(check_run_id(run_id), self._clock.now())
        return self._store.with_values(run)  # (an offloaded payload or output: from S3)

    def list_runs(
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
        """Runs, newest first: a page of at most ``limit``, a list with a ``cursor``.

        Args:
            status: only runs in this status.
            task: only runs of this task (an id, or a ``Task`` of the client's app).
            limit: at most this many runs on the page (1-1000).
            created_after: only runs created at or after this time (timezone-aware).
            created_before: only runs created before this time (timezone-aware).
            tag: only runs triggered with this tag; ``tags``: with every one of these.
            cursor: the ``cursor`` of the previous page, with the same filters, for the
                next one. A page may hold fewer than ``limit`` runs while more follow;
                the last page's ``cursor`` is None.

        Raises:
            InvalidConfig: an unknown status, a bad limit, a naive time, a cursor that
                is not one this method returned for the same filters.
        """
        if status is not None:
            try:
                status = RunStatus(status)
            except ValueError:
                raise InvalidConfig(
                    f"unknown status {status!r}; use one of {', '.join(RunStatus)}"
                ) from None
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidConfig(f"limit must be an int from 1 to 1000, got {limit!r}")
        for name, when in (("created_after", created_after), ("created_before", created_before)):
            if when is not None and (not isinstance(when, datetime) or when.tzinfo is None):
                raise InvalidConfig(
                    f"{name} must be a timezone-aware datetime (e.g. datetime.now(UTC)), "
                    f"got {when!r}"
                )
        for name, text in (("tag", tag), ("cursor", cursor)):
            if text is not None and (not isinstance(text, str) or not text):
                raise InvalidConfig(f"{name} must be a non-empty str, got {text!r}")
        wanted = tuple(dict.fromkeys(((tag,) if tag else ()) + check_tags(tags, "list_runs")))
        # Without an app (a read-only client) the task id is taken as given.
        task_id = task if task is None or self.app is None else self.app.get_task(task).id
        page = self._store.list_runs(
            status=status,
            task_id=task_id,
            limit=limit,
            created_after=created_after,
            created_before=created_before,
            tags=wanted,
            cursor=cursor,
        )
        # Runs past their retention are left out, deleted or not yet (docs/retention.md).
        now = self._clock.now()
        live = [r for r in page if r.expires_at is None or r.expires_at > now]
        return page if len(live) == len(page) else RunPage(live, page.cursor)

    def list_children(self, run_id: str) -> list[Run]:
        """The child runs this run started (``ctx.trigger``/``trigger_and_wait``), in order.

        The other way round, a child's ``Run.parent_run_id`` names its parent.

        Raises:
            RunNotFound: no run has this id.
        """
        return [run for _, run in self._lifecycle.children(check_run_id(run_id))]

    def runs_in_flight(self) -> dict[str | None, dict[RunStatus, int]]:
        """The runs that have not finished, counted by the code version they are pinned
        to (None: not started yet, or versions not in use) and status; what ``rung
        versions list`` shows beside the deployed versions (docs/versioning.md). Reads
        every such run's version: about one request per 100 runs in flight."""
        counts = self._store.runs_in_flight()
        return {version: dict(by_status) for version, by_status in counts.items()}

    # -- the lifecycle -----------------------------------------------------------------

    def cancel(self, run_id: str, reason: str | None = None) -> Run:
        """Cancel a run that has not finished, and its children (unless detached).

        A QUEUED, DELAYED or WAITING run is CANCELED at once. A RUNNING one is CANCELED
        at once too; its worker stops at its next step boundary (the step executing
        now finishes; no later step starts). A parent waiting for this run in
        ``trigger_and_wait`` is woken and gets ``ChildRunFailed`` (status CANCELED).

        Then every child started without ``detached=True`` is canceled the same way,
        recursively. Should the caller die in between, calling ``cancel`` again
        finishes the children and raises ``RunAlreadyFinished`` for the parent.

        Args:
            reason: stored as the run's error message (default: "canceled").

        Returns:
            The canceled run.

        Raises:
            RunNotFound: no run has this id.
            RunAlreadyFinished: it had finished (COMPLETED, FAILED, CANCELED, ...);
                nothing was changed.

        Example:
            >>> client.cancel(run_id, reason="order withdrawn")
        """
        if reason is not None and (not isinstance(reason, str) or len(reason) > 2000):
            raise InvalidConfig("cancel reason must be a string of at most 2000 characters")
        return self._lifecycle.cancel(check_run_id(run_id), reason or "canceled")

    def replay(self, run_id: str) -> RunHandle:
        """Start a new run of the same task with the same payload (and tags).

        The new run records ``replay_of``; the original is not touched. Any run can be
        replayed, in any status: it is a fresh trigger. With an app, the payload is
        validated against the task's current model first.

        Raises:
            RunNotFound: no run has this id.
            UnknownTask, InvalidPayload: (with an app) the task is gone, or the stored
                payload no longer fits its model; nothing is stored.

        Example:
            >>> handle = client.replay(run_id)
            >>> client.get_run(handle.run_id).replay_of == run_id
        """
        run = self._store.with_values(self._store.live_run(check_run_id(run_id), self._clock.now()))
        if self.app is not None:
            payload_json = self.app.get_task(run.task_id).prepare(run.payload)
        else:
            payload_json = serde.dumps(run.payload, f"the payload of run {run.run_id}")
        return self._lifecycle.replay(run, payload_json)

    def redrive(self, run_id: str) -> Run:
        """Resume a FAILED run from its failed step, after a code fix.

        Completed steps keep their results (they are not executed again); the
        checkpoint of the step whose failure failed the run is removed, so that step
        runs again; the run goes on with its next attempt, and retry budgets count
        afresh from there. Its failure stays in the history (``RunFailed`` then
        ``RunRedriven``). One transaction: a crash leaves the run either FAILED or
        redriven, never half (and a redriven run whose message was lost is sent by
        the reconciler).

        Returns:
            The run, QUEUED.

        Raises:
            RunNotFound: no run has this id.
            RunNotFailed: it is not FAILED; nothing was changed.

        Example:
            >>> client.redrive(run_id)   # after deploying the fix
        """
        return self._lifecycle.redrive(check_run_id(run_id))

    # -- tokens ----------------------------------------------------------------------

    def complete_token(self, token_id: str, value: Any = None) -> TokenState:
        """Answer a token: the run waiting in ``ctx.wait_for_token`` resumes with ``value``.

        ``value`` must serialize to JSON (pydantic models and dataclasses do); it is
        checked before anything is written.

        Raises:
            TokenNotFound: no token has this id.
            TokenAlreadyResolved: it was completed, failed or timed out already, or
                its run has finished. The run is not disturbed.
            InvalidPayload / PayloadTooLarge: ``value`` does not serialize or is too big.
        """
        token_id = check_token_id(token_id)
        try:
            value_json = serde.dumps(value, f"the value completing token {token_id}")
        except serde.NotSerializable as exc:
            raise InvalidPayload(str(exc)) from None
        return self._resolve(token_id, "COMPLETED", value_json, None)

    def fail_token(self, token_id: str, error: str | BaseException) -> TokenState:
        """Fail a token: ``ctx.wait_for_token`` raises ``rung.TokenFailed`` with this error.

        Args:
            error: a message, or an exception (its type name and message are kept).

        Raises:
            TokenNotFound, TokenAlreadyResolved: as for ``complete_token``.
        """
        token_id = check_token_id(token_id)
        if isinstance(error, BaseException):
            info = ErrorInfo(type(error).__name__, str(error)[:2000])
        elif isinstance(error, str) and error:
            info = ErrorInfo("TokenFailed", error[:2000])
        else:
            raise UsageError(f"fail_token needs an error message or an exception, got {error!r}")
        return self._resolve(token_id, "FAILED", None, info)

    def heartbeat_token(self, token_id: str) -> TokenState:
        """Tell a waiting run its token is still being worked on (see ``heartbeat_timeout``).

        Raises:
            TokenNotFound, TokenAlreadyResolved: as for ``complete_token``.
        """
        return self._store.heartbeat_token(check_token_id(token_id), self._clock.now())

    def get_token(self, token_id: str) -> TokenState:
        """A token's status, deadline and answer.

        A token past its deadline reads ``TIMED_OUT`` (``resolved_at`` = the deadline)
        from that moment on, also while its run has not come to look at it yet."""
        state = self._store.get_token(check_token_id(token_id))
        return state.as_of(self._clock.now())

    def list_tokens(self, run_id: str) -> list[TokenState]:
        """The tokens a run has created, in order, with their status (as ``get_token``)."""
        steps = self._store.load_steps(check_run_id(run_id), values=False)
        created = sorted(
            (r for r in steps.values() if r.kind == "token"), key=lambda r: r.started_at
        )
        now = self._clock.now()
        return [
            self._store.get_token(json.loads(r.result_json or "{}")["id"]).as_of(now)
            for r in created
        ]

    def _resolve(
        self, token_id: str, status: str, value_json: str | None, error: ErrorInfo | None
    ) -> TokenState:
        state, woke = self._store.resolve_token(
            token_id, status=status, result_json=value_json, error=error, now=self._clock.now()
        )
        if woke:
            # A crash before this send leaves the run WAITING but due now: the
            # reconciler re-sends it (a lost timer).
            self._queue.send(state.run_id)
        return state

    # -- queues (flow control: rung._engine.queues) ----------------------------------------

    def list_queues(self) -> list[QueueInfo]:
        """The app's queues and every queue with stored state, by name.

        Example:
            >>> for q in client.list_queues():
            ...     print(q.name, q.running, q.parked, q.concurrency_limit, q.paused)
        """
        return self._queues.list()

    def get_queue(self, name: str) -> QueueInfo:
        """One queue's limits (code, override, in force), pause, running and parked runs.

        Raises:
            UnknownQueue: the app's tasks do not declare it and it has no stored state.

        Example:
            >>> client.get_queue("emails").running_per_key
            {'tenant-a': 2, 'tenant-b': 1}
        """
        return self._queues.get(name)

    def set_queue_limit(
        self,
        name: str,
        concurrency_limit: int | None = None,
        per_key_limit: int | None = None,
        *,
        reset: bool = False,
    ) -> QueueInfo:
        """Override a queue's limits at run time (or, with ``reset``, go back to the code's).

        A lower limit holds for every start from now on; runs already executing
        finish. A higher one hands the free slots to parked runs at once. The
        override stays until ``reset=True`` (a deploy does not change it).

        Args:
            concurrency_limit: runs executing at once, 1-1000.
            per_key_limit: runs executing at once per concurrency key, 1-1000, at most
                the concurrency limit in force. (A concurrency limit below the per-key
                one caps it: ``QueueInfo.per_key_limit`` then shows the lower.)
            reset: drop both overrides: the code's limits apply again.

        Returns:
            The queue after the change.

        Raises:
            UnknownQueue: no such queue (nothing is written).
            InvalidConfig: a limit out of range, per-key above the total, nothing to
                set, or limits together with ``reset`` (nothing is written).

        Example:
            >>> client.set_queue_limit("emails", concurrency_limit=2)   # the provider is slow
            >>> client.set_queue_limit("emails", reset=True)            # back to the code's
        """
        return self._queues.set_limit(name, concurrency_limit, per_key_limit, reset=reset)

    def pause_queue(self, name: str) -> QueueInfo:
        """Stop starting runs of the queue's tasks; runs executing now finish.

        Runs triggered (or retried, or resuming from a wait) while it is paused park
        and wait, using no attempts, until ``resume_queue``.

        Raises:
            UnknownQueue: no such queue (nothing is written).

        Example:
            >>> client.pause_queue("emails")    # the provider is down
        """
        return self._queues.pause(name)

    def resume_queue(self, name: str) -> QueueInfo:
        """Start runs of the queue again: parked runs get the free slots at once.

        Raises:
            UnknownQueue: no such queue (nothing is written).

        Example:
            >>> client.resume_queue("emails")
        """
        return self._queues.resume(name)

    def history(self, run_id: str) -> list[HistoryEvent]:
        """The run's events in order: triggered, attempts, steps, retries, the end."""
        run_id, now = check_run_id(run_id), self._clock.now()
        try:
            run, steps = self._store.load_run_and_steps(run_id)
        except RunNotFound as missing:
            raise self._store.missing_run(run_id, now, missing) from None
        self._store.check_live(run, now)
        return build_history(run, steps)
