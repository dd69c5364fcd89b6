"""The HTTP API's handler (template.yaml: ApiFunction, ``handler/api.py``; docs/http.md).

Routes (Powertools' ``LambdaFunctionUrlResolver``; bodies and query parameters validated
by the pydantic models below, ``enable_validation=True``), each one ``rung.Client`` call:

    POST /tasks/{task_id}/trigger     trigger a run (payload, idempotency key, delay,
                                      ttl, tags, metadata): 201, or 200 for a key's run
    GET  /runs/{run_id}               a run, with its metadata
    GET  /runs                        runs, newest first (status, task, tag, limit, cursor)
    POST /runs/{run_id}/cancel        cancel a run (and its children)
    GET  /tokens/{token_id}           a token's state
    POST /tokens/{token_id}/complete  complete a token with a value
    POST /tokens/{token_id}/fail      fail a token with an error message
    POST /tokens/{token_id}/heartbeat push a token's heartbeat deadline

The front door comes first: a request without an IAM identity (the function URL's
``AWS_IAM`` auth puts the caller in ``requestContext.authorizer.iam``; ``rung dev``
verifies the signature itself and does the same) is refused with 401, whatever its
route, and a body above ``MAX_REQUEST_BYTES`` with 413, before anything is read or
stored. So an API deployed with the wrong auth type refuses everyone rather than
serving everyone.

Configuration, read on the first request of a warm container: ``RUNG_APP`` (required:
triggers are validated against the app's tasks), ``RUNG_TABLE_NAME``,
``RUNG_QUEUE_URL``, ``RUNG_EVENT_BUS``, ``RUNG_RETENTION_DAYS``, ``AWS_ENDPOINT_URL``,
as ``rung.Client`` reads them.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictFloat, StrictInt, StrictStr

from rung._lambda._env import load_app, require
from rung._lambda._http import (
    ResolverPool,
    as_result,
    error_response,
    install_error_handlers,
    io,
    json_response,
    misconfigured,
    too_large,
)
from rung._lambda.views import run_json, token_json
from rung._util.durations import parse_duration
from rung.client import Client
from rung.errors import InvalidConfig
from rung.models import Offloaded, Run, TokenState

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "rung-api")

#: A duration in a request: seconds as a number, or text such as "30s", "5m", "2h", "3d"
#: (strict: ``true`` is not a second, nor "5" a number).
Duration = StrictInt | StrictFloat | StrictStr


class _Body(BaseModel):
    # A misspelt option is refused, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class TriggerRequest(_Body):
    """``POST /tasks/{task_id}/trigger``: ``Client.trigger``'s options."""

    payload: JsonValue = None
    idempotency_key: str | None = None
    idempotency_ttl: Duration | None = None
    delay: Duration | None = None
    ttl: Duration | None = None
    tags: list[str] | None = None
    metadata: dict[str, JsonValue] | None = None


class CancelRequest(_Body):
    """``POST /runs/{run_id}/cancel``: an optional reason, stored as the run's error."""

    reason: str | None = Field(default=None, max_length=2000)


class CompleteRequest(_Body):
    """``POST /tokens/{token_id}/complete``: the value ``wait_for_token`` returns."""

    value: JsonValue = None


class FailRequest(_Body):
    """``POST /tokens/{token_id}/fail``: the message ``TokenFailed`` carries."""

    error: str = Field(min_length=1, max_length=2000)


#: The most of one value (payload, output, token value; bytes of JSON) a response
#: carries: Lambda's responses stop at 6 MB. A bigger one is ``{"offloaded_bytes": n}``;
#: rung.Client reads it whole (docs/http.md, docs/payloads.md).
MAX_RESPONSE_VALUE_BYTES = 2 * 1024 * 1024
#: A page of GET /runs: at most this many runs, and this many bytes before its values
#: over 1 KiB are sent as their sizes (100 runs of 16 KiB of metadata each still fit).
MAX_LIST_LIMIT = 100
LIST_BUDGET_BYTES = 3 * 1024 * 1024


def _duration(value: Duration | None, name: str) -> timedelta | float | None:
    """A request's duration as ``Client`` takes it; text is parsed ("30s", "2h")."""
    if not isinstance(value, str):
        return value
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidConfig(f"{name}: {exc}") from None


def build_api(client: Callable[[], Client]) -> LambdaFunctionUrlResolver:
    """A resolver with the API's routes over the ``Client`` that ``client`` returns
    (called per request: the Lambda builds its client on first use)."""
    app = LambdaFunctionUrlResolver(enable_validation=True)
    install_error_handlers(app)

    @app.post("/tasks/<task_id>/trigger")
    def trigger(task_id: str, body: TriggerRequest | None = None) -> Response[str]:
        body = body or TriggerRequest()  # no body: a null payload, no options
        key_ttl = _duration(body.idempotency_ttl, "idempotency_ttl")
        delay, ttl = _duration(body.delay, "delay"), _duration(body.ttl, "ttl")
        with io():
            handle = client().trigger(
                task_id,
                body.payload,
                idempotency_key=body.idempotency_key,
                idempotency_ttl=key_ttl,
                delay=delay,
                ttl=ttl,
                tags=body.tags,
                metadata=body.metadata,
            )
        return json_response(
            201 if handle.created else 200,
            {"run_id": handle.run_id, "task_id": handle.task_id, "created": handle.created},
        )

    @app.get("/runs/<run_id>")
    def get_run(run_id: str) -> Response[str]:
        with io():
            run = client().get_run(run_id)
        return json_response(200, run_json(_fitting(run)))

    @app.get("/runs")
    def list_runs(
        status: Annotated[str | None, Query()] = None,
        task: Annotated[str | None, Query()] = None,
        tag: Annotated[str | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
        cursor: Annotated[str | None, Query()] = None,
        created_after: Annotated[datetime | None, Query()] = None,
        created_before: Annotated[datetime | None, Query()] = None,
    ) -> Response[str]:
        with io():
            page = client().list_runs(
                status=status,
                task=task,
                tag=tag,
                limit=limit,
                cursor=cursor,
                created_after=created_after,
                created_before=created_before,
            )
        return json_response(200, {"runs": _page_fitting(page), "cursor": page.cursor})

    @app.post("/runs/<run_id>/cancel")
    def cancel(run_id: str, body: CancelRequest | None = None) -> Response[str]:
        reason = body.reason if body is not None else None
        with io():
            run = client().cancel(run_id, reason)
        return json_response(200, run_json(run))

    @app.get("/tokens/<token_id>")
    def get_token(token_id: str) -> Response[str]:
        with io():
            state = client().get_token(token_id)
        return json_response(200, _token_fitting(state))

    @app.post("/tokens/<token_id>/complete")
    def complete_token(token_id: str, body: CompleteRequest) -> Response[str]:
        with io():
            state = client().complete_token(token_id, body.value)
        return json_response(200, _token_fitting(state))

    @app.post("/tokens/<token_id>/fail")
    def fail_token(token_id: str, body: FailRequest) -> Response[str]:
        with io():
            state = client().fail_token(token_id, body.error)
        return json_response(200, _token_fitting(state))

    @app.post("/tokens/<token_id>/heartbeat")
    def heartbeat_token(token_id: str) -> Response[str]:
        with io():
            state = client().heartbeat_token(token_id)
        return json_response(200, _token_fitting(state))

    return app


def _fitting(run: Run) -> Run:
    """``run`` with a payload or output over ``MAX_RESPONSE_VALUE_BYTES`` of JSON left
    as ``rung.Offloaded`` (``{"offloaded_bytes": n}`` in the response)."""

    def fit(value: Any) -> Any:
        if value is None or isinstance(value, Offloaded):
            return value
        size = len(json.dumps(value, ensure_ascii=False, default=str).encode())
        return Offloaded(size=size) if size > MAX_RESPONSE_VALUE_BYTES else value

    return replace(run, payload=fit(run.payload), output=fit(run.output))


def _page_fitting(runs: list[Run]) -> list[dict[str, Any]]:
    """A page's runs as JSON; if they are over ``LIST_BUDGET_BYTES`` together, every
    payload and output over 1 KiB is sent as its size (GET /runs/{id} has them)."""
    shown = [run_json(r) for r in runs]
    if len(json.dumps(shown, default=str, ensure_ascii=False).encode()) <= LIST_BUDGET_BYTES:
        return shown
    for body in shown:
        for name in ("payload", "output"):
            size = len(json.dumps(body[name], default=str, ensure_ascii=False).encode())
            if size > 1024:
                body[name] = {"offloaded_bytes": size}
    return shown


def _token_fitting(state: TokenState) -> dict[str, Any]:
    """A token's JSON with a value over ``MAX_RESPONSE_VALUE_BYTES`` sent as its size."""
    body = token_json(replace(state, result_json=None))
    if state.result_json is not None:
        size = len(state.result_json.encode())
        fits = size <= MAX_RESPONSE_VALUE_BYTES
        body["value"] = json.loads(state.result_json) if fits else {"offloaded_bytes": size}
    return body


def caller(event: dict[str, Any]) -> dict[str, Any] | None:
    """The IAM identity that signed the request (``requestContext.authorizer.iam``), or
    None for a request that nobody signed."""
    context = event.get("requestContext") or {}
    authorizer = context.get("authorizer") or {}
    iam = authorizer.get("iam")
    return iam if isinstance(iam, dict) and iam.get("accessKey") else None


def handle(pool: ResolverPool, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The front door, then the routes: 401 unsigned, 413 oversize, else the route's."""
    if caller(event) is None:
        return as_result(
            error_response(
                401,
                "Unauthenticated",
                "this API takes requests signed with AWS SigV4 (service 'lambda', IAM "
                "permission lambda:InvokeFunctionUrl): sign it with your AWS credentials, "
                "e.g. with botocore's SigV4Auth or awscurl (docs/http.md)",
            )
        )
    return too_large(event) or pool.resolve(event, context)


@functools.cache
def client() -> Client:
    """The Client of this warm container, built from the environment on first use."""
    return Client(load_app(require("RUNG_APP", "module:attr of your rung.App")))


api = ResolverPool(lambda: build_api(client))


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if caller(event) is not None and (broken := misconfigured(client, detail=True)) is not None:
        return broken  # (before routing: the caller's request is not what is wrong)
    return handle(api, event, context)
