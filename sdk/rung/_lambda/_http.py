"""What the HTTP functions share (the API, ``api.py``; token callbacks, ``callback.py``):
the error body, rung's errors as statuses, the request size limit, and the front door
checks that run before any route.

Every error is ``{"error": {"type": ..., "message": ...}}`` with its status:

    400 BadJson, UsageError         the body is not JSON; the API was misused
    401 Unauthenticated             not signed (no IAM identity on the request)
    403 Forbidden                   wrongly signed; a wrong token URL secret
    404 NotFound, UnknownTask, RunNotFound, TokenNotFound
    409 RunAlreadyFinished, TokenAlreadyResolved (completed or failed before)
    410 TokenTimedOut               the token's deadline passed (its URL with it)
    413 RequestTooLarge, PayloadTooLarge
    422 ValidationError, InvalidPayload, InvalidConfig, InvalidMetadata
    503 Contended                   repeat the call (nothing was written)
    500 InternalError               a bug or an AWS failure; logged with the request id
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from rung.errors import (
    Contended,
    InvalidConfig,
    InvalidMetadata,
    InvalidPayload,
    PayloadTooLarge,
    RunAlreadyFinished,
    RungError,
    RunNotFound,
    TokenAlreadyResolved,
    TokenNotFound,
    UnknownQueue,
    UnknownTask,
    UsageError,
)

log = logging.getLogger("rung.http")

#: The largest request body the HTTP functions accept (bytes, as sent): a bigger one is
#: refused with 413 before anything is read or stored. 5 MiB: below Lambda's 6 MB
#: request limit, the event's envelope included; a value over 128 KiB goes to the
#: payload bucket (docs/payloads.md). Change it here (docs/http.md).
MAX_REQUEST_BYTES = 5 * 1024 * 1024

#: rung's errors as HTTP statuses, most specific first.
_STATUSES: tuple[tuple[type[RungError], int], ...] = (
    (UnknownTask, 404),
    (RunNotFound, 404),  # RunExpired too: it is gone
    (TokenNotFound, 404),
    (UnknownQueue, 404),
    (RunAlreadyFinished, 409),
    (TokenAlreadyResolved, 409),
    (PayloadTooLarge, 413),
    (InvalidPayload, 422),
    (InvalidMetadata, 422),
    (InvalidConfig, 422),
    (UsageError, 400),
    (Contended, 503),
)


def error_response(status: int, kind: str, message: str, **extra: Any) -> Response[str]:
    """The JSON error body every refusal has."""
    body = {"error": {"type": kind, "message": message, **extra}}
    return Response(status, "application/json", json.dumps(body))


def json_response(status: int, body: Any) -> Response[str]:
    return Response(status, "application/json", json.dumps(body, default=str, ensure_ascii=False))


def rung_error(exc: RungError) -> Response[str]:
    """A rung error as its status and body; a token past its deadline is 410 Gone."""
    if isinstance(exc, TokenAlreadyResolved) and exc.status == "TIMED_OUT":
        return error_response(410, "TokenTimedOut", str(exc))
    for kind, status in _STATUSES:
        if isinstance(exc, kind):
            return error_response(status, type(exc).__name__, str(exc))
    return error_response(400, type(exc).__name__, str(exc))


def validation_error(exc: RequestValidationError) -> Response[str]:
    """Powertools' validation of a route's parameters and body (pydantic): a body that
    is not JSON is 400, one that does not fit the route's model 422, each problem named
    by where it is (``body.delay``) and what is wrong."""
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(
            400, "BadJson", "the request body is not valid JSON: send a JSON object"
        )
    problems = [
        {
            "at": ".".join(str(part) for part in e.get("loc", ())),
            "problem": str(e.get("msg", "")),
        }
        for e in errors
    ]
    summary = "; ".join(f"{p['at']}: {p['problem']}" for p in problems)
    return error_response(
        422,
        "ValidationError",
        f"the request does not fit this route ({summary}); see docs/http.md",
        details=problems,
    )


def install_error_handlers(app: LambdaFunctionUrlResolver) -> None:
    """Every failure of ``app``'s routes as the JSON error body."""

    # (called, not used as decorators: Powertools' exception_handler is untyped)
    app.exception_handler(RungError)(rung_error)
    app.exception_handler(RequestValidationError)(validation_error)

    @app.not_found
    def _no_route(exc: Exception) -> Response[str]:
        event = app.current_event
        return error_response(
            404,
            "NotFound",
            f"no route {event.http_method} {event.path}: see docs/http.md for the routes",
        )

    def _bug(exc: Exception) -> Response[str]:
        request_id = app.current_event.request_context.request_id
        log.exception("request %s failed", request_id)
        return error_response(
            500,
            "InternalError",
            f"the request failed inside rung (request id {request_id}); nothing it "
            "reported as done was undone: check the run or token before repeating it",
        )

    app.exception_handler(Exception)(_bug)


def body_size(event: dict[str, Any]) -> int:
    """The request body's size in bytes as sent."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return len(body) * 3 // 4
    return len(body.encode())


def decoded_body(event: dict[str, Any]) -> bytes:
    """The request body as bytes (function URLs base64-encode bodies that are not text)."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body)
        except (binascii.Error, ValueError):
            return b"\x00"  # not JSON: refused as such
    return body.encode()


def too_large(event: dict[str, Any]) -> dict[str, Any] | None:
    """413 for a body above ``MAX_REQUEST_BYTES``; None when it fits."""
    size = body_size(event)
    if size <= MAX_REQUEST_BYTES:
        return None
    return as_result(
        error_response(
            413,
            "RequestTooLarge",
            f"the request body is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes "
            "(docs/http.md): send a smaller payload",
        )
    )


def as_result(response: Response[str]) -> dict[str, Any]:
    """A response as a function URL's result (for refusals before any route runs)."""
    return {
        "statusCode": response.status_code,
        "headers": {"Content-Type": "application/json"},
        "body": response.body,
        "isBase64Encoded": False,
    }


# Powertools keeps the request being resolved on a class attribute
# (``BaseRouter.current_event``), shared by every resolver in the process: two requests
# resolved at once in one process would read each other's bodies. On Lambda a process
# handles one request at a time; ``rung dev``'s threaded server does not, so resolving
# holds this lock, and a route lets go of it only around its ``Client`` call (``io``),
# which reads nothing of the request: racing requests still race at DynamoDB, where
# the conditional writes decide, as they do between Lambda environments.
_RESOLVING = threading.Lock()
_held = threading.local()


@contextmanager
def io() -> Iterator[None]:
    """Around a route's ``Client`` call: other requests may be resolved meanwhile; this
    request is put back as Powertools' current one afterwards."""
    if not getattr(_held, "value", False):
        yield
        return
    event, context = BaseRouter.current_event, BaseRouter.lambda_context
    _held.value = False
    _RESOLVING.release()
    try:
        yield
    finally:
        _RESOLVING.acquire()
        _held.value = True
        BaseRouter.current_event, BaseRouter.lambda_context = event, context


class ResolverPool:
    """Powertools resolvers for concurrent requests: a resolver keeps per-request state
    on itself (its ``context``), so one serves one request at a time. On Lambda that is
    every invocation; ``rung dev``'s threaded server takes one from here per request,
    and makes another when all are busy. Resolving holds ``_RESOLVING`` (above)."""

    def __init__(self, build: Callable[[], LambdaFunctionUrlResolver]) -> None:
        self._build = build
        self._idle: queue.SimpleQueue[LambdaFunctionUrlResolver] = queue.SimpleQueue()

    @contextmanager
    def resolver(self) -> Iterator[LambdaFunctionUrlResolver]:
        try:
            app = self._idle.get_nowait()
        except queue.Empty:
            app = self._build()
        try:
            yield app
        finally:
            self._idle.put(app)

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        with self.resolver() as app, _RESOLVING:
            _held.value = True
            try:
                return app.resolve(event, context)
            finally:
                _held.value = False


def misconfigured(make: Callable[[], Any], *, detail: bool) -> dict[str, Any] | None:
    """500 when the function's own configuration is wrong (``RUNG_APP`` cannot be
    imported, the table or queue is not set: ``make``, the client factory, fails),
    logged; None when it works. ``detail``: the error's text in the answer (to IAM
    callers of the API; an outside caller of a token URL gets none)."""
    try:
        make()
    except Exception as exc:  # noqa: BLE001 - any failure of the deploy's configuration
        log.exception("rung: the HTTP function is misconfigured")
        said = f": {exc}. Check its environment (RUNG_APP, RUNG_TABLE_NAME, RUNG_QUEUE_URL) and "
        return as_result(
            error_response(
                500,
                "Misconfigured",
                "the function cannot serve requests"
                + (said + "redeploy (docs/deploying.md)" if detail else "; see its log"),
            )
        )
    return None
