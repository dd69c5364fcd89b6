"""The HTTP API's Lambda handler (``rung._lambda.api``) on the emulator: the event a
function URL with AWS_IAM auth delivers, with and without the caller AWS puts in it.

On AWS the function URL checks the signature; the handler trusts
``requestContext.authorizer.iam`` and refuses a request without it (an API deployed
with the wrong auth type serves nobody). Real HTTP, SigV4 and every route are tested
on ``rung dev`` (tests/integration/test_dev_http.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

import rung
from rung._lambda import api
from rung._lambda._http import MAX_REQUEST_BYTES, ResolverPool
from rung.testing import LocalEngine

app = rung.App("httpfn")


@app.task(id="echo")
def echo(ctx: rung.Context, payload: Any) -> Any:
    return payload


@pytest.fixture(scope="module")
def engine() -> Iterator[LocalEngine]:
    with LocalEngine(app) as local:
        yield local


@pytest.fixture(scope="module")
def pool(engine: LocalEngine) -> ResolverPool:
    return ResolverPool(lambda: api.build_api(lambda: engine.client))


IAM = {"accessKey": "AKIAEXAMPLE", "accountId": "111122223333", "callerId": "AIDAEXAMPLE"}


def event(
    method: str, path: str, body: str | None = None, *, iam: bool = True, b64: bool = False
) -> dict[str, Any]:
    context: dict[str, Any] = {
        "http": {"method": method, "path": path, "sourceIp": "198.51.100.7"},
        "requestId": "req-1",
        "routeKey": "$default",
        "stage": "$default",
    }
    if iam:
        context["authorizer"] = {"iam": IAM}
    if b64 and body is not None:
        body = base64.b64encode(body.encode()).decode()
    return {
        "version": "2.0",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": context,
        "body": body,
        "isBase64Encoded": b64,
    }


def answer(pool: ResolverPool, request: dict[str, Any]) -> tuple[int, Any]:
    result = api.handle(pool, request, None)
    return int(result["statusCode"]), json.loads(result["body"])


def test_a_call_aws_authenticated_is_served(engine: LocalEngine, pool: ResolverPool) -> None:
    body = json.dumps({"payload": {"n": 1}, "metadata": {"by": "api"}})
    status, made = answer(pool, event("POST", "/tasks/echo/trigger", body))
    assert status == 201
    run = engine.wait(made["run_id"])
    assert run.output == {"n": 1}
    status, shown = answer(pool, event("GET", f"/runs/{made['run_id']}"))
    assert status == 200 and shown["metadata"] == {"by": "api"}


def test_a_base64_body_as_function_urls_send_binary_content_is_read(
    engine: LocalEngine, pool: ResolverPool
) -> None:
    body = json.dumps({"payload": "b64"})
    status, made = answer(pool, event("POST", "/tasks/echo/trigger", body, b64=True))
    assert status == 201
    assert engine.wait(made["run_id"]).output == "b64"


def test_without_an_iam_caller_every_route_is_401_and_nothing_is_stored(
    engine: LocalEngine, pool: ResolverPool
) -> None:
    before = len(engine.client.list_runs(limit=1000))
    body = json.dumps({"payload": 1})
    for request in (
        event("POST", "/tasks/echo/trigger", body, iam=False),
        event("GET", "/runs", iam=False),
        event("GET", "/no/such/route", iam=False),
    ):
        status, refused = answer(pool, request)
        assert status == 401 and refused["error"]["type"] == "Unauthenticated"
    assert len(engine.client.list_runs(limit=1000)) == before


def test_an_oversize_body_is_413_before_any_route(engine: LocalEngine, pool: ResolverPool) -> None:
    before = len(engine.client.list_runs(limit=1000))
    body = json.dumps({"payload": "x" * MAX_REQUEST_BYTES})
    status, refused = answer(pool, event("POST", "/tasks/echo/trigger", body))
    assert status == 413 and refused["error"]["type"] == "RequestTooLarge"
    assert len(engine.client.list_runs(limit=1000)) == before


def test_a_token_has_no_url_where_no_callback_base_is_configured(engine: LocalEngine) -> None:
    seen: list[str | None] = []
    local = rung.App("nourl")

    @local.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None:
        seen.append(ctx.create_token("x", timeout=60).url)

    with LocalEngine(local, virtual_time=False) as other:
        other.wait(other.client.trigger("t").run_id)
    assert seen == [None]


def test_big_values_through_the_api_offloaded_and_fitted_to_a_lambda_response(
    engine: LocalEngine, pool: ResolverPool
) -> None:
    """A 1 MB payload triggered over HTTP goes to the bucket and comes back whole; a
    3 MB output (over what one response value carries) is sent as its size, which
    rung.Client reads whole; a listing says offloaded_bytes."""
    blob = "h" * 1_000_000
    status, made = answer(pool, event("POST", "/tasks/echo/trigger", json.dumps({"payload": blob})))
    assert status == 201
    assert engine.wait(made["run_id"]).output == blob
    status, shown = answer(pool, event("GET", f"/runs/{made['run_id']}"))
    assert status == 200 and shown["payload"] == blob and shown["output"] == blob
    assert api.MAX_RESPONSE_VALUE_BYTES < 3_000_000
    big = engine.trigger("echo", "o" * 3_000_000)
    engine.wait(big.run_id)
    status, shown = answer(pool, event("GET", f"/runs/{big.run_id}"))
    assert status == 200
    assert shown["payload"] == shown["output"] == {"offloaded_bytes": 3_000_002}
    assert engine.client.get_run(big.run_id).output == "o" * 3_000_000


def test_a_tokens_url_secret_is_in_no_trace_segment_history_or_json() -> None:
    """The secret is a capability: only the run's own replay reads it (from the token's
    checkpoint). It is not sent to X-Ray (nor so to an OTLP collector), history, the
    token's JSON, or a Token's repr."""
    seen: list[rung.Token] = []
    traced = rung.App("secret")

    @traced.task(id="ask")
    def ask(ctx: rung.Context, payload: None) -> Any:
        token = ctx.create_token("approve", timeout=3600)
        seen.append(token)
        return ctx.wait_for_token(token)

    with LocalEngine(traced, virtual_time=False) as engine:  # (beside the module's engine)
        handle = engine.trigger("ask")
        state = engine.wait_for_token(handle.run_id)
        engine.client.complete_token(state.id, "ok")
        assert engine.wait(handle.run_id).output == "ok"
        [record] = [r for r in engine.store.load_steps(handle.run_id).values() if r.kind == "token"]
        secret = json.loads(record.result_json or "{}")["url_secret"]
        assert len(secret) >= 40  # 256 random bits, kept for the run's replays
        segments = json.dumps(engine.trace(handle.run_id))
        assert '"token' in segments and state.id in segments  # the token's span is there
        assert secret not in segments
        history = json.dumps([str(e) for e in engine.history(handle.run_id)])
        assert secret not in history
        from rung._lambda.views import token_json

        assert secret not in json.dumps(token_json(engine.client.get_token(state.id)))
    assert all("url" not in repr(t) for t in seen)


class _LambdaContext:
    function_name = "rung-api"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:111122223333:function:rung-api"
    aws_request_id = "req-1"


def test_a_misconfigured_function_answers_500_not_a_callers_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deploy whose environment is wrong is the operator's fault: 500, logged; the
    API's IAM caller is told what, an outside caller of a token URL is not."""
    from rung._lambda import callback

    for name in ("RUNG_APP", "RUNG_TABLE_NAME", "RUNG_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    api.client.cache_clear()
    callback.client.cache_clear()
    context: Any = _LambdaContext()  # (what Powertools' inject_lambda_context reads)
    try:
        result = api.lambda_handler(event("GET", "/runs"), context)
        body = json.loads(result["body"])
        assert result["statusCode"] == 500 and body["error"]["type"] == "Misconfigured"
        assert "RUNG_APP" in body["error"]["message"]
        unsigned = api.lambda_handler(event("GET", "/runs", iam=False), context)
        assert unsigned["statusCode"] == 401  # the front door still answers first
        url = "/tokens/tok_abc/secret"
        result = callback.lambda_handler(event("POST", url, "{}", iam=False), context)
        body = json.loads(result["body"])
        assert result["statusCode"] == 500 and "see its log" in body["error"]["message"]
        assert "RUNG_TABLE_NAME" not in body["error"]["message"]
    finally:
        api.client.cache_clear()
        callback.client.cache_clear()


def test_a_boolean_is_not_a_duration(engine: LocalEngine, pool: ResolverPool) -> None:
    before = len(engine.client.list_runs(limit=1000))
    for delay in (True, [5], {"s": 1}):
        body = json.dumps({"payload": 1, "delay": delay})
        status, refused = answer(pool, event("POST", "/tasks/echo/trigger", body))
        assert status == 422, (delay, refused)
    assert len(engine.client.list_runs(limit=1000)) == before
    # A number is: on an engine of its own with no workers (the module's would jump
    # its virtual clock to the delayed run's due time and run it at once).
    with LocalEngine(app, workers=0, virtual_time=False) as still:
        own = ResolverPool(lambda: api.build_api(lambda: still.client))
        body = json.dumps({"delay": 1})
        status, made = answer(own, event("POST", "/tasks/echo/trigger", body))
        assert status == 201 and still.get_run(made["run_id"]).status in ("DELAYED", "QUEUED")
        assert len(still.client.list_runs(limit=1000)) == 1
