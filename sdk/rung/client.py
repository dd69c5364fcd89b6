"""The client: trigger runs and read them, from anywhere that can reach the table and queue."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from rung import _aws, _serde
from rung._clock import Clock, SystemClock
from rung._history import build_history
from rung._ids import new_run_id
from rung._queue import SqsQueue
from rung._store import DynamoStore, NewRun
from rung.app import App, Task
from rung.errors import (
    ErrorInfo,
    InvalidConfig,
    InvalidPayload,
    RunNotFound,
    TokenNotFound,
    UsageError,
)
from rung.models import HistoryEvent, Run, RunHandle, RunStatus, TokenState
from rung.retry import as_timedelta

MAX_IDEMPOTENCY_KEY = 256
MAX_TAGS = 10
DEFAULT_IDEMPOTENCY_TTL = timedelta(days=30)


class Client:
    """Trigger and inspect runs of an app's tasks.

    Args:
        app: the app whose tasks are triggered (payloads are validated against them);
            None for a read-only client, which reads runs but cannot trigger them.
        table_name: the DynamoDB table (default ``$RUNG_TABLE_NAME``).
        queue_url: the work queue (default ``$RUNG_QUEUE_URL``).
        endpoint_url: an emulator or LocalStack (default ``$AWS_ENDPOINT_URL``; unset: AWS).
        region: the AWS region (default from the environment, else us-east-1).

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
    ) -> None:
        table_name = table_name or os.environ.get("RUNG_TABLE_NAME")
        queue_url = queue_url or os.environ.get("RUNG_QUEUE_URL")
        if not table_name or not queue_url:
            raise UsageError(
                "rung.Client needs the table and queue: pass table_name= and queue_url=, or set "
                "RUNG_TABLE_NAME and RUNG_QUEUE_URL (template.yaml's outputs name both)"
            )
        store = DynamoStore(_aws.client("dynamodb", endpoint_url, region), table_name)
        queue = SqsQueue(_aws.client("sqs", endpoint_url, region), queue_url)
        self._init(app, store, queue, clock or SystemClock())

    @classmethod
    def from_stack(
        cls,
        app: App | None,
        stack_name: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> Client:
        """A client for the table and queue of a deployed template.yaml stack.

        Raises:
            rung._stack.StackError: no such stack at the endpoint, nothing listening
                there, or the stack has no ``TableName``/``QueueUrl`` outputs.

        Example:
            >>> client = rung.Client.from_stack(app, "rung-shop", endpoint_url=url)
        """
        from rung import _stack  # CloudFormation is needed only here

        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        cfn = _aws.client("cloudformation", endpoint_url, region)
        stack = _stack.describe(cfn, stack_name, endpoint_url)
        missing = [key for key in ("TableName", "QueueUrl") if not stack.outputs.get(key)]
        if missing:
            raise _stack.StackError(
                f"stack {stack_name!r} has no {' or '.join(missing)} output: is it a rung "
                "stack (deployed from template.yaml)?"
            )
        return cls(
            app,
            table_name=stack.outputs["TableName"],
            queue_url=stack.outputs["QueueUrl"],
            endpoint_url=endpoint_url,
            region=region,
        )

    @classmethod
    def _from_parts(cls, app: App, store: DynamoStore, queue: SqsQueue, clock: Clock) -> Client:
        client = cls.__new__(cls)
        client._init(app, store, queue, clock)
        return client

    def _init(self, app: App | None, store: DynamoStore, queue: SqsQueue, clock: Clock) -> None:
        if app is not None and not isinstance(app, App):
            raise UsageError(f"rung.Client needs a rung.App or None, got {type(app).__name__}")
        self.app = app
        self._store = store
        self._queue = queue
        self._clock = clock

    def trigger(
        self,
        task: str | Task[Any],
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        delay: timedelta | float | None = None,
        tags: Iterable[str] | None = None,
        idempotency_ttl: timedelta | float | None = None,
    ) -> RunHandle:
        """Start a run of ``task`` with ``payload``.

        The payload is validated before anything is stored; a refused trigger stores
        and enqueues nothing. With ``idempotency_key``, every trigger of the same task
        with the same key within ``idempotency_ttl`` (default 30 days) returns the same
        run, however many race.

        Raises:
            UnknownTask: the app has no such task.
            InvalidPayload: the payload fails the task's model or is not JSON.
            PayloadTooLarge: the payload is larger than rung stores inline.
        """
        if self.app is None:
            raise UsageError(
                "this client has no app (read-only): pass the rung.App to trigger runs, so "
                "payloads are validated against its tasks"
            )
        found = self.app.get_task(task)
        payload_json = found.encode_payload(payload)
        key = _check_key(idempotency_key)
        tag_tuple = _check_tags(tags)
        wait = as_timedelta(delay, "trigger delay") if delay is not None else timedelta(0)
        ttl = (
            as_timedelta(idempotency_ttl, "idempotency_ttl")
            if idempotency_ttl is not None
            else DEFAULT_IDEMPOTENCY_TTL
        )
        now = self._clock.now()
        new = NewRun(
            run_id=new_run_id(now),
            task_id=found.id,
            payload_json=payload_json,
            created_at=now,
            available_at=now + wait,
            idempotency_key=key,
            tags=tag_tuple,
        )
        run, created = self._store.create_run(new, ttl, now)
        if created:
            self._queue.send(run.run_id, wait)
        elif run.status in (RunStatus.QUEUED, RunStatus.DELAYED) and run.lease_token == 0:
            # Recorded but never claimed: the first trigger may have crashed before its
            # send. Sending again is safe: a duplicate message finds the run taken or done.
            due = run.available_at or now
            self._queue.send(run.run_id, max(due - now, timedelta(0)))
        return RunHandle(run_id=run.run_id, task_id=found.id, created=created)

    def get_run(self, run_id: str) -> Run:
        """The run's status, attempts, timestamps, output and error.

        Raises:
            RunNotFound: no run has this id.
        """
        return self._store.get_run(_check_run_id(run_id))

    def list_runs(
        self, *, status: RunStatus | str | None = None, task: str | None = None, limit: int = 50
    ) -> list[Run]:
        """Runs, newest first, optionally of one task and/or in one status."""
        if status is not None:
            try:
                status = RunStatus(status)
            except ValueError:
                raise InvalidConfig(
                    f"unknown status {status!r}; use one of {', '.join(RunStatus)}"
                ) from None
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidConfig(f"limit must be a positive int, got {limit!r}")
        # Without an app (a read-only client) the task id is taken as given.
        task_id = task if task is None or self.app is None else self.app.get_task(task).id
        return self._store.list_runs(status=status, task_id=task_id, limit=limit)

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
        token_id = _check_token_id(token_id)
        try:
            value_json = _serde.dumps(value, f"the value completing token {token_id}")
        except _serde.NotSerializable as exc:
            raise InvalidPayload(str(exc)) from None
        return self._resolve(token_id, "COMPLETED", value_json, None)

    def fail_token(self, token_id: str, error: str | BaseException) -> TokenState:
        """Fail a token: ``ctx.wait_for_token`` raises ``rung.TokenFailed`` with this error.

        Args:
            error: a message, or an exception (its type name and message are kept).

        Raises:
            TokenNotFound, TokenAlreadyResolved: as for ``complete_token``.
        """
        token_id = _check_token_id(token_id)
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
        return self._store.heartbeat_token(_check_token_id(token_id), self._clock.now())

    def get_token(self, token_id: str) -> TokenState:
        """A token's status, deadline and answer."""
        return self._store.get_token(_check_token_id(token_id))

    def list_tokens(self, run_id: str) -> list[TokenState]:
        """The tokens a run has created, in order, with their status."""
        steps = self._store.load_steps(_check_run_id(run_id))
        created = sorted(
            (r for r in steps.values() if r.kind == "token"), key=lambda r: r.started_at
        )
        return [self._store.get_token(json.loads(r.result_json or "{}")["id"]) for r in created]

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

    def history(self, run_id: str) -> list[HistoryEvent]:
        """The run's events in order: triggered, attempts, steps, retries, the end."""
        run, steps = self._store.load_run_and_steps(_check_run_id(run_id))
        return build_history(run, steps)


def _check_run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not run_id or len(run_id) > 128:
        raise RunNotFound(f"{run_id!r} is not a run id (run ids look like 'run_01J...')")
    return run_id


def _check_token_id(token_id: object) -> str:
    if not isinstance(token_id, str) or not token_id.startswith("tok_") or len(token_id) > 128:
        raise TokenNotFound(
            f"{token_id!r} is not a token id (token ids look like 'tok_...', from ctx.create_token)"
        )
    return token_id


def _check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidConfig(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} "
            f"characters, got {key!r:.80}"
        )
    return key


def _check_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise InvalidConfig("tags must be a list of strings, not a single string")
    result = tuple(tags)
    if len(result) > MAX_TAGS or not all(isinstance(t, str) and 0 < len(t) <= 128 for t in result):
        raise InvalidConfig(f"tags must be at most {MAX_TAGS} non-empty strings of <= 128 chars")
    return result
