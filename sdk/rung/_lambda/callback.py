"""The token callback function's handler (template.yaml: CallbackFunction,
``handler/callback.py``; docs/http.md, "Token callback URLs").

One route, with no AWS credentials asked of the caller: ``POST /tokens/{token_id}/{secret}``
(``Token.url``) completes the token with the request's JSON body as its value (an empty
body: ``null``; an HTML form's fields, ``application/x-www-form-urlencoded``, as a JSON
object of strings). The secret is the capability: it is checked against the hash the
token item keeps, in constant time, before anything is written.

    200  completed: {"token": {"id": ..., "status": "COMPLETED"}}
    404  no such token
    403  the secret is wrong (or the token has no URL)
    400  the body is not JSON (checked after the secret: nothing is said to a stranger)
    409  already completed or failed (the value is not overwritten; a replayed POST)
    410  the token timed out: its URL expired with it
    413  the body is above ``MAX_REQUEST_BYTES``, or the value above what rung stores

The completion is the conditional write of ``Client.complete_token``: of any number of
racing POSTs, one completes the token and the others get 409. The answer says no more
than the status: the caller is outside and need not see the run.

Configuration, read on the first request of a warm container: ``RUNG_TABLE_NAME``,
``RUNG_QUEUE_URL``, ``RUNG_RETENTION_DAYS``, ``AWS_ENDPOINT_URL``. No ``RUNG_APP``: it
never imports task code.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import JsonValue, TypeAdapter, ValidationError

from rung._lambda._http import (
    ResolverPool,
    decoded_body,
    error_response,
    install_error_handlers,
    io,
    json_response,
    misconfigured,
    too_large,
)
from rung._util import callbacks
from rung.client import Client
from rung.errors import TokenAlreadyResolved

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "rung-callback")

_VALUE: TypeAdapter[JsonValue] = TypeAdapter(JsonValue)


def build_callback(client: Callable[[], Client]) -> LambdaFunctionUrlResolver:
    """A resolver with the callback route over the ``Client`` that ``client`` returns."""
    app = LambdaFunctionUrlResolver()
    install_error_handlers(app)

    @app.post("/tokens/<token_id>/<secret>")
    def complete(token_id: str, secret: str) -> Response[str]:
        raw = decoded_body(app.current_event.raw_event)  # (read first: see _http.io)
        rung = client()
        with io():
            state = rung.get_token(token_id)  # TokenNotFound: 404
        if not callbacks.secret_matches(secret, state.url_hash):
            return error_response(
                403,
                "Forbidden",
                "this URL's secret does not match the token's: use the token's url exactly "
                "as the run gave it out",
            )
        headers = {k.lower(): v for k, v in (app.current_event.headers or {}).items()}
        form = headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        try:
            if form:  # an HTML form's button: its fields, as a JSON object
                value: Any = _form_fields(raw)
            else:
                value = _VALUE.validate_json(raw) if raw.strip() else None
        except (ValidationError, UnicodeDecodeError, ValueError):
            return error_response(
                400,
                "BadJson",
                "the request body is not valid JSON (or form data): POST the token's value "
                "as JSON (Content-Type: application/json), an HTML form's fields "
                "(application/x-www-form-urlencoded), or an empty body for null",
            )
        if state.status != "WAITING":  # a timed-out token is 410, others 409
            raise TokenAlreadyResolved(
                f"token {token_id!r} was already {state.status.lower().replace('_', ' ')}; "
                "a token is answered once",
                status=state.status,
            )
        with io():
            done = rung.complete_token(token_id, value)
        return json_response(200, {"token": {"id": done.id, "status": done.status}})

    return app


def _form_fields(raw: bytes) -> dict[str, str]:
    """An HTML form's fields (the last of a repeated name); {} for an empty form.

    Raises:
        ValueError: not form data (or not UTF-8).
    """
    text = raw.decode()
    return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=True)) if text else {}


def handle(pool: ResolverPool, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """413 for an oversize body, else the route."""
    return too_large(event) or pool.resolve(event, context)


@functools.cache
def client() -> Client:
    """A read-only Client (no app: it answers tokens) from the environment."""
    return Client(None)


callback = ResolverPool(lambda: build_callback(client))


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if (broken := misconfigured(client, detail=False)) is not None:
        return broken  # (said in the log only: the caller is outside)
    return handle(callback, event, context)
