"""The HTTP API and token callback URLs on `rung dev`, called with real HTTP.

One `rung dev` stack serves the module. Signed requests are signed by botocore's
``SigV4Auth`` with the emulator's key pair (test/test), as any AWS client would sign a
call to a function URL; refused ones check that nothing was stored.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from rung._dev import DevStack
from rung._lambda._http import MAX_REQUEST_BYTES
from tests.integration.test_dev_processes import dev_options

pytestmark = pytest.mark.slow
APP = "tests.integration.http_app:app"


class Dev:
    """The stack, its API's URL, and the lines it printed."""

    def __init__(self, stack: DevStack, lines: list[str]) -> None:
        self.stack = stack
        self.lines = lines
        assert stack.api is not None
        self.url = stack.api.url


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    tmp = tmp_path_factory.mktemp("http")
    lines: list[str] = []
    with DevStack(dev_options(tmp, app=APP, workers=2), emit=lines.append) as stack:
        yield Dev(stack, lines)


def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    sign: bool = True,
    key: str = "test",
    secret: str = "test",
    tamper: bytes | None = None,
    content_type: str = "application/json",
    host: str | None = None,
) -> tuple[int, Any]:
    """Send a request (signed with SigV4 unless ``sign`` is False); its status and JSON.
    ``tamper``: the body actually sent, after signing another; ``host``: another Host."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    headers = {"Content-Type": content_type}
    if host is not None:
        headers["Host"] = host
    if sign:
        request = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(Credentials(key, secret), "lambda", "us-east-1").add_auth(request)
        headers = dict(request.headers.items())
    sent = tamper if tamper is not None else data
    http = urllib.request.Request(url, data=sent or None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(http, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def tag() -> str:
    return "t-" + secrets.token_hex(4)


def stored(dev: Dev, marker: str) -> list[str]:
    return [r.run_id for r in dev.stack.client.list_runs(tag=marker)]


def wait_for_metadata(dev: Dev, run_id: str, key: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, run = call("GET", f"{dev.url}/runs/{run_id}")
        if status == 200 and run["metadata"].get(key):
            return run["metadata"][key]
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} shows no metadata {key!r} within {timeout}s")


def webhook_run(dev: Dev, **payload: float) -> tuple[str, str, str]:
    """A run waiting for its token: (run id, token id, token url)."""
    status, made = call("POST", f"{dev.url}/tasks/webhook/trigger", {"payload": payload})
    assert status == 201
    run_id = made["run_id"]
    url = wait_for_metadata(dev, run_id, "token_url")
    return run_id, wait_for_metadata(dev, run_id, "token_id"), url


# -- the server ---------------------------------------------------------------------


def test_rung_dev_prints_the_api_url_and_serves_it_on_localhost(dev: Dev) -> None:
    assert dev.url.startswith("http://127.0.0.1:")
    assert any(f"HTTP API at {dev.url}" in line for line in dev.lines)
    assert any(f"token URLs at {dev.url}/callback" in line for line in dev.lines)


def test_an_unknown_route_is_404_with_a_json_error(dev: Dev) -> None:
    status, body = call("GET", f"{dev.url}/nothing/here")
    assert status == 404
    assert body["error"]["type"] == "NotFound"
    assert "docs/http.md" in body["error"]["message"]


# -- routes -------------------------------------------------------------------------


def test_trigger_get_and_list_a_run_with_tags_and_metadata(dev: Dev) -> None:
    marker = tag()
    status, made = call(
        "POST",
        f"{dev.url}/tasks/order/trigger",
        {
            "payload": {"order_id": "o-1", "total": 5},
            "tags": [marker],
            "metadata": {"requested_by": "ops"},
        },
    )
    assert status == 201
    assert made["created"] is True and made["task_id"] == "order"
    run = dev.stack.wait(made["run_id"], timeout=60)
    assert run.output == "order o-1 of 5"

    status, shown = call("GET", f"{dev.url}/runs/{made['run_id']}")
    assert status == 200
    assert shown["status"] == "COMPLETED" and shown["output"] == "order o-1 of 5"
    assert shown["metadata"] == {"requested_by": "ops"}
    assert shown["tags"] == [marker]

    status, page = call("GET", f"{dev.url}/runs?tag={marker}&status=COMPLETED&task=order&limit=10")
    assert status == 200
    assert [r["run_id"] for r in page["runs"]] == [made["run_id"]]
    assert page["runs"][0]["metadata"] == {"requested_by": "ops"}
    assert page["cursor"] is None


def test_a_trigger_without_a_body_has_a_null_payload(dev: Dev) -> None:
    status, made = call("POST", f"{dev.url}/tasks/anything/trigger")
    assert status == 201
    assert dev.stack.wait(made["run_id"], timeout=60).status == "COMPLETED"
    assert call("GET", f"{dev.url}/runs/{made['run_id']}")[1]["payload"] is None


def test_concurrent_triggers_each_store_their_own_payload(dev: Dev) -> None:
    marker = tag()

    def trigger(n: int) -> tuple[int, Any]:
        body = {"payload": {"n": n}, "tags": [marker], "metadata": {"n": n}}
        return call("POST", f"{dev.url}/tasks/anything/trigger", body)

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(trigger, range(12)))
    assert [status for status, _ in answers] == [201] * 12
    for n, (_, made) in enumerate(answers):
        status, run = call("GET", f"{dev.url}/runs/{made['run_id']}")
        assert (run["payload"], run["metadata"]) == ({"n": n}, {"n": n})
    assert len(stored(dev, marker)) == 12


def test_a_repeated_idempotency_key_returns_the_first_run_with_200(dev: Dev) -> None:
    marker, key = tag(), "key-" + secrets.token_hex(4)
    body = {"payload": {"order_id": "o-2"}, "idempotency_key": key, "tags": [marker]}
    first = call("POST", f"{dev.url}/tasks/order/trigger", body)
    second = call("POST", f"{dev.url}/tasks/order/trigger", body)
    assert first[0] == 201 and second[0] == 200
    assert second[1]["run_id"] == first[1]["run_id"] and second[1]["created"] is False
    assert stored(dev, marker) == [first[1]["run_id"]]


def test_a_delayed_trigger_is_delayed_and_cancel_cancels_it_once(dev: Dev) -> None:
    status, made = call(
        "POST", f"{dev.url}/tasks/anything/trigger", {"payload": [1, 2], "delay": "1h"}
    )
    assert status == 201
    status, run = call("GET", f"{dev.url}/runs/{made['run_id']}")
    assert run["status"] == "DELAYED"

    status, canceled = call(
        "POST", f"{dev.url}/runs/{made['run_id']}/cancel", {"reason": "not needed"}
    )
    assert status == 200
    assert canceled["status"] == "CANCELED" and canceled["error"]["message"] == "not needed"
    status, again = call("POST", f"{dev.url}/runs/{made['run_id']}/cancel")
    assert status == 409 and again["error"]["type"] == "RunAlreadyFinished"


def test_complete_a_token_over_the_api_resumes_the_run_and_a_second_answer_is_409(
    dev: Dev,
) -> None:
    run_id, token_id, _ = webhook_run(dev)
    status, token = call("GET", f"{dev.url}/tokens/{token_id}")
    assert status == 200 and token["status"] == "WAITING" and token["run_id"] == run_id

    status, done = call(
        "POST", f"{dev.url}/tokens/{token_id}/complete", {"value": {"approved": True}}
    )
    assert status == 200 and done["status"] == "COMPLETED"
    status, again = call("POST", f"{dev.url}/tokens/{token_id}/complete", {"value": "late"})
    assert status == 409 and again["error"]["type"] == "TokenAlreadyResolved"
    run = dev.stack.wait(run_id, timeout=60)
    assert run.output["answer"] == {"approved": True}
    assert json.loads(dev.stack.client.get_token(token_id).result_json or "") == {"approved": True}


def test_fail_a_token_over_the_api_fails_the_run(dev: Dev) -> None:
    run_id, token_id, _ = webhook_run(dev)
    status, failed = call("POST", f"{dev.url}/tokens/{token_id}/fail", {"error": "rejected"})
    assert status == 200 and failed["status"] == "FAILED"
    run = dev.stack.wait(run_id, timeout=60)
    assert run.status == "FAILED" and "rejected" in (run.error.message if run.error else "")


def test_heartbeat_a_token_over_the_api_moves_its_deadline(dev: Dev) -> None:
    _, token_id, _ = webhook_run(dev, heartbeat=60)
    before = dev.stack.client.get_token(token_id).deadline
    time.sleep(0.05)
    status, beat = call("POST", f"{dev.url}/tokens/{token_id}/heartbeat")
    assert status == 200 and beat["status"] == "WAITING"
    assert dev.stack.client.get_token(token_id).deadline > before


# -- refusals: the right status, and nothing stored ------------------------------------


def test_an_unsigned_call_is_401_and_stores_nothing(dev: Dev) -> None:
    marker = tag()
    status, body = call(
        "POST",
        f"{dev.url}/tasks/order/trigger",
        {"payload": {"order_id": "x"}, "tags": [marker]},
        sign=False,
    )
    assert status == 401 and body["error"]["type"] == "Unauthenticated"
    assert "SigV4" in body["error"]["message"]
    assert stored(dev, marker) == []
    assert call("GET", f"{dev.url}/runs", sign=False)[0] == 401
    big = {"payload": "x" * (MAX_REQUEST_BYTES + 1), "tags": [marker]}
    assert call("POST", f"{dev.url}/tasks/anything/trigger", big, sign=False)[0] == 401
    assert stored(dev, marker) == []


@pytest.mark.parametrize("how", ["wrong secret", "unknown key", "body changed after signing"])
def test_a_wrongly_signed_call_is_403_and_stores_nothing(dev: Dev, how: str) -> None:
    marker = tag()
    body = {"payload": {"order_id": "x"}, "tags": [marker]}
    choices: dict[str, dict[str, Any]] = {
        "wrong secret": {"secret": "not-the-secret"},
        "unknown key": {"key": "AKIDNOTKNOWN", "secret": "test"},
        "body changed after signing": {
            "tamper": json.dumps({"payload": {"order_id": "y"}, "tags": [marker]}).encode()
        },
    }
    status, answer = call("POST", f"{dev.url}/tasks/order/trigger", body, **choices[how])
    assert status == 403 and answer["error"]["type"] == "Forbidden"
    assert stored(dev, marker) == []


def test_a_body_that_is_not_json_is_400_and_stores_nothing(dev: Dev) -> None:
    before = len(dev.stack.client.list_runs(task="order", limit=1000))
    status, body = call("POST", f"{dev.url}/tasks/order/trigger", raw=b'{"payload": ')
    assert status == 400 and body["error"]["type"] == "BadJson"
    assert len(dev.stack.client.list_runs(task="order", limit=1000)) == before


def test_an_unknown_option_is_422_naming_it_and_stores_nothing(dev: Dev) -> None:
    marker = tag()
    status, body = call(
        "POST",
        f"{dev.url}/tasks/order/trigger",
        {"payload": {"order_id": "x"}, "tags": [marker], "idempotencykey": "k"},
    )
    assert status == 422 and body["error"]["type"] == "ValidationError"
    assert "body.idempotencykey" in body["error"]["message"]
    assert stored(dev, marker) == []


def test_a_payload_that_fails_the_tasks_model_is_422_and_stores_nothing(dev: Dev) -> None:
    marker = tag()
    status, body = call(
        "POST",
        f"{dev.url}/tasks/order/trigger",
        {"payload": {"total": "lots"}, "tags": [marker]},
    )
    assert status == 422 and body["error"]["type"] == "InvalidPayload"
    assert "order_id" in body["error"]["message"]
    assert stored(dev, marker) == []


def test_a_bad_delay_is_422_and_stores_nothing(dev: Dev) -> None:
    marker = tag()
    status, body = call(
        "POST",
        f"{dev.url}/tasks/anything/trigger",
        {"payload": 1, "delay": "soon", "tags": [marker]},
    )
    assert status == 422 and "delay" in body["error"]["message"]
    assert stored(dev, marker) == []


def test_unknown_task_run_and_token_are_404(dev: Dev) -> None:
    marker = tag()
    status, body = call(
        "POST", f"{dev.url}/tasks/no-such-task/trigger", {"payload": 1, "tags": [marker]}
    )
    assert status == 404 and body["error"]["type"] == "UnknownTask"
    assert stored(dev, marker) == []
    status, body = call("GET", f"{dev.url}/runs/run_01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert status == 404 and body["error"]["type"] in ("RunNotFound", "RunExpired")
    status, body = call("POST", f"{dev.url}/tokens/tok_nope/complete", {"value": 1})
    assert status == 404 and body["error"]["type"] == "TokenNotFound"


def test_an_oversize_body_is_413_and_stores_nothing(dev: Dev) -> None:
    marker = tag()
    big = {"payload": "x" * (MAX_REQUEST_BYTES + 1), "tags": [marker]}
    status, body = call("POST", f"{dev.url}/tasks/anything/trigger", big)
    assert status == 413 and body["error"]["type"] == "RequestTooLarge"
    assert str(MAX_REQUEST_BYTES) in body["error"]["message"]
    assert stored(dev, marker) == []


# -- token callback URLs --------------------------------------------------------------


def test_a_token_url_completes_its_token_exactly_once_under_20_concurrent_posts(
    dev: Dev,
) -> None:
    run_id, token_id, url = webhook_run(dev)
    assert url.startswith(f"{dev.url}/callback/tokens/{token_id}/")

    def post(n: int) -> tuple[int, Any]:
        return call("POST", url, {"from": n}, sign=False)  # no AWS credentials

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(post, range(20)))
    statuses = Counter(status for status, _ in answers)
    assert statuses == Counter({200: 1, 409: 19}), answers
    winner = next(n for n, (status, _) in enumerate(answers) if status == 200)
    assert answers[winner][1] == {"token": {"id": token_id, "status": "COMPLETED"}}
    run = dev.stack.wait(run_id, timeout=60)
    assert run.output == {"answer": {"from": winner}, "url_again": url}  # same URL on replay
    assert json.loads(dev.stack.client.get_token(token_id).result_json or "") == {"from": winner}
    # A replayed POST later is refused too, and changes nothing.
    assert call("POST", url, {"from": 99}, sign=False)[0] == 409
    assert json.loads(dev.stack.client.get_token(token_id).result_json or "") == {"from": winner}


def test_a_token_url_with_a_wrong_secret_is_403_and_completes_nothing(dev: Dev) -> None:
    _, token_id, url = webhook_run(dev)
    forged = url.rsplit("/", 1)[0] + "/" + secrets.token_urlsafe(32)
    status, body = call("POST", forged, {"forged": True}, sign=False)
    assert status == 403 and body["error"]["type"] == "Forbidden"
    assert call("POST", forged, raw=b"not json", sign=False)[0] == 403  # the secret first
    other = url.replace(token_id, "tok_" + secrets.token_urlsafe(24))
    assert call("POST", other, {"forged": True}, sign=False)[0] == 404
    status, body = call("POST", url, raw=b"not json", sign=False)
    assert status == 400 and body["error"]["type"] == "BadJson"
    assert dev.stack.client.get_token(token_id).status == "WAITING"
    assert call("POST", url, {"ok": 1}, sign=False)[0] == 200


def test_a_token_url_expires_with_its_token(dev: Dev) -> None:
    _, token_id, url = webhook_run(dev, timeout=2)
    deadline = dev.stack.client.get_token(token_id).timeout_at.timestamp()
    time.sleep(max(0.0, deadline - time.time()) + 0.2)
    status, body = call("POST", url, {"late": True}, sign=False)
    assert status == 410 and body["error"]["type"] == "TokenTimedOut"
    assert dev.stack.client.get_token(token_id).result_json is None


def test_a_token_url_body_above_the_limit_is_413(dev: Dev) -> None:
    _, token_id, url = webhook_run(dev)
    status, _ = call("POST", url, raw=b'"' + b"x" * MAX_REQUEST_BYTES + b'"', sign=False)
    assert status == 413
    assert dev.stack.client.get_token(token_id).status == "WAITING"


def test_the_api_is_not_reachable_through_the_callback_prefix(dev: Dev) -> None:
    status, _ = call("GET", f"{dev.url}/callback/runs", sign=False)
    assert status == 404


def test_a_token_url_takes_an_html_forms_fields_as_its_value(dev: Dev) -> None:
    """An approval mail's buttons: a form posting `decision=approve`."""
    run_id, token_id, url = webhook_run(dev)
    form = "application/x-www-form-urlencoded"
    status, body = call("POST", url, raw=b"decision=approve&by=ann", sign=False, content_type=form)
    assert status == 200 and body["token"]["status"] == "COMPLETED"
    run = dev.stack.wait(run_id, timeout=60)
    assert run.output["answer"] == {"decision": "approve", "by": "ann"}


def test_a_token_url_only_completes_it_never_fails_heartbeats_or_reads_it(dev: Dev) -> None:
    _, token_id, url = webhook_run(dev)
    for method, target in (("POST", url + "/fail"), ("POST", url + "/heartbeat"), ("GET", url)):
        status, _ = call(method, target, {"error": "no"}, sign=False)
        assert status in (404, 405), (method, target, status)
    assert dev.stack.client.get_token(token_id).status == "WAITING"
    assert call("POST", url, {"ok": True}, sign=False)[0] == 200


def test_a_request_naming_another_host_is_refused_and_stores_nothing(dev: Dev) -> None:
    """A page in the developer's browser, DNS-rebound to 127.0.0.1, sends its own Host:
    signed with the public dev key pair or not, it is refused (421) before any route."""
    marker = tag()
    port = dev.url.rsplit(":", 1)[1]
    body = {"payload": {"n": 1}, "tags": [marker]}
    target = f"{dev.url}/tasks/anything/trigger"
    status, refused = call("POST", target, body, host=f"evil.example:{port}")
    assert status == 421 and refused["error"]["type"] == "MisdirectedRequest"
    assert stored(dev, marker) == []
    status, _ = call("POST", target, body)  # its own host: served
    assert status == 201 and len(stored(dev, marker)) == 1
