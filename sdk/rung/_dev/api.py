"""``rung dev``'s HTTP API: the template's API and callback handlers served on 127.0.0.1.

A stdlib ``ThreadingHTTPServer`` turns each request into the event a Lambda function URL
would send (payload format 2.0) and hands it to the same Powertools resolvers the
functions run (``rung._lambda.api``, ``rung._lambda.callback``), over rung dev's
``Client``. Paths under ``/callback`` go to the token callback handler (no
credentials: the URL's secret is the capability); every other path is the API.

On AWS the function URL's ``AWS_IAM`` auth checks the SigV4 signature before the
function runs and puts the caller in ``requestContext.authorizer.iam``. Here nothing
stands in front, so ``SigV4Verifier`` does that part: it recomputes the signature with
botocore's ``SigV4Auth`` from the request's own signed headers, its ``X-Amz-Date`` and
the secret key of its access key id (``DEV_CREDENTIALS``: the emulator's ``test`` /
``test``, and this process's own ``AWS_ACCESS_KEY_ID`` pair), compares in constant
time, and refuses a date more than ``MAX_SKEW`` away. Unsigned: 401; wrongly signed,
unknown key, stale date, another region or service: 403; either way the request never
reaches a route.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from rung._lambda import api, callback
from rung._lambda._http import MAX_REQUEST_BYTES, ResolverPool, as_result, error_response
from rung._util.clock import Clock, SystemClock
from rung.client import Client

log = logging.getLogger("rung.dev.api")

#: What rung dev accepts signatures from: the emulator's well-known key pair.
DEV_CREDENTIALS = {"test": "test"}
#: A signature's date may be this far from now (AWS: 5 minutes).
MAX_SKEW = timedelta(minutes=5)
#: The account rung dev reports signed callers in.
DEV_ACCOUNT = "123456789012"
#: Where token callback URLs live on rung dev's server.
CALLBACK_PREFIX = "/callback"
#: The most of an oversize body read (and dropped) before answering 413.
_DRAIN_LIMIT = 16 * 1024 * 1024

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<headers>[a-z0-9;-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused before it reaches a route."""

    status: int
    kind: str
    message: str


class SigV4Verifier:
    """Checks AWS SigV4 signatures as a function URL with ``AWS_IAM`` auth does."""

    def __init__(
        self,
        credentials: dict[str, str],
        region: str,
        service: str = "lambda",
        clock: Clock | None = None,
    ) -> None:
        self.credentials = dict(credentials)
        self.region = region
        self.service = service
        self.clock = clock or SystemClock()

    def verify(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> dict[str, Any] | Refusal:
        """The caller's identity (``requestContext.authorizer.iam``), or why not.

        ``headers`` by lower-case name; ``url`` as the client addressed it."""
        auth = headers.get("authorization", "")
        if not auth:
            return Refusal(
                401,
                "Unauthenticated",
                "this API takes requests signed with AWS SigV4 (service 'lambda', region "
                f"{self.region}; on rung dev the key pair test/test): sign it, e.g. with "
                "botocore's SigV4Auth or awscurl (docs/http.md)",
            )
        found = _AUTHORIZATION.fullmatch(auth.strip())
        if found is None:
            return _forbidden("the Authorization header is not an AWS4-HMAC-SHA256 signature")
        key, date = found["key"], headers.get("x-amz-date", "")
        secret = self.credentials.get(key)
        if secret is None:
            return _forbidden(f"the access key id {key!r} is not known here")
        if found["region"] != self.region or found["service"] != self.service:
            return _forbidden(
                f"the request is signed for {found['service']} in {found['region']}: sign it "
                f"for {self.service} in {self.region}"
            )
        try:
            signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return _forbidden("X-Amz-Date is missing or not a SigV4 date (20261206T120000Z)")
        if date[:8] != found["date"] or abs(self.clock.now() - signed_at) > MAX_SKEW:
            return _forbidden(
                f"the signature's date {date} is not within {MAX_SKEW} of now: sign the "
                "request again"
            )
        names = found["headers"].split(";")
        if "host" not in names or any(name not in headers for name in names):
            return _forbidden("a header named in SignedHeaders (host among them) is missing")
        content_hash = headers.get("x-amz-content-sha256")
        if content_hash is not None and content_hash != sha256(body).hexdigest():
            return _forbidden("X-Amz-Content-SHA256 is not the body's SHA-256")
        parts = urlsplit(url)
        request = AWSRequest(
            method=method,
            # botocore quotes the path as it signs it: give it the path unquoted
            url=f"http://{headers['host']}{unquote(parts.path)}"
            + (f"?{parts.query}" if parts.query else ""),
            data=body,
            headers={name: headers[name] for name in names},
        )
        request.context["timestamp"] = date
        signer = SigV4Auth(Credentials(key, secret), self.service, self.region)
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, found["signature"]):
            return _forbidden(
                "the request signature we calculated does not match the signature you "
                "provided: check the secret key and that the request was not changed"
            )
        return {
            "accessKey": key,
            "accountId": DEV_ACCOUNT,
            "callerId": key,
            "userArn": f"arn:aws:iam::{DEV_ACCOUNT}:user/{key}",
            "userId": key,
        }


def _forbidden(message: str) -> Refusal:
    return Refusal(403, "Forbidden", message)


def dev_credentials() -> dict[str, str]:
    """``DEV_CREDENTIALS``, and this process's own key pair if it has one."""
    known = dict(DEV_CREDENTIALS)
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        known[key] = secret
    return known


class ApiServer:
    """The API and the token callbacks of ``client`` on ``host:port`` (0: a free port)."""

    def __init__(
        self,
        client: Client,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        credentials: dict[str, str] | None = None,
    ) -> None:
        self.api = ResolverPool(lambda: api.build_api(lambda: client))
        self.callback = ResolverPool(lambda: callback.build_callback(lambda: client))
        self.verifier = SigV4Verifier(credentials or dev_credentials(), region)
        self._server = _Server((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API's base URL, ``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def callback_url(self) -> str:
        """The base of ``Token.url`` here (the workers' ``RUNG_CALLBACK_URL``)."""
        return self.url + CALLBACK_PREFIX

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rung-dev-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def unsigned(self, target: str, headers: dict[str, str]) -> dict[str, Any] | None:
        """401 for an API request that carries no signature at all, else None."""
        path = urlsplit(target).path
        if path == CALLBACK_PREFIX or path.startswith(CALLBACK_PREFIX + "/"):
            return None
        if headers.get("authorization"):
            return None
        refusal = self.verifier.verify("POST", target, headers, b"")
        assert isinstance(refusal, Refusal)
        return as_result(error_response(refusal.status, refusal.kind, refusal.message))

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes, source: str
    ) -> dict[str, Any]:
        """One request's answer (a function URL result) for ``method`` ``target``."""
        parts = urlsplit(target)
        path, query = parts.path or "/", parts.query
        is_callback = path == CALLBACK_PREFIX or path.startswith(CALLBACK_PREFIX + "/")
        event = _event(method, path, query, headers, body, source)
        if is_callback:
            event["rawPath"] = event["requestContext"]["http"]["path"] = (
                path.removeprefix(CALLBACK_PREFIX) or "/"
            )
            return callback.handle(self.callback, event, None)
        identity = self.verifier.verify(method, target, headers, body)
        if isinstance(identity, Refusal):
            return as_result(error_response(identity.status, identity.kind, identity.message))
        event["requestContext"]["authorizer"] = {"iam": identity}
        return api.handle(self.api, event, None)


def _event(
    method: str, path: str, query: str, headers: dict[str, str], body: bytes, source: str
) -> dict[str, Any]:
    """The function URL event (payload format 2.0) for a request."""
    try:
        text, encoded = body.decode(), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode(), True
    now = SystemClock().now()
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        # A function URL joins a repeated parameter's values with commas.
        params[name] = f"{params[name]},{value}" if name in params else value
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "queryStringParameters": params or None,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "rung-dev",
            "domainName": headers.get("host", ""),
            "domainPrefix": "rung-dev",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": text or None,
        "isBase64Encoded": encoded,
    }


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # (5 by default: a burst of clients got connection resets)


def _handler_for(server: ApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "rung-dev"

        def _serve(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            port = server.url.rsplit(":", 1)[1]
            if headers.get("host") not in (f"127.0.0.1:{port}", f"localhost:{port}"):
                # (a page in the developer's browser, DNS-rebound to 127.0.0.1, names
                # its own host: it gets no answer)
                message = f"rung dev serves Host 127.0.0.1:{port} or localhost:{port} only"
                return self._send(
                    as_result(error_response(421, "MisdirectedRequest", message)), close=True
                )
            length_text = headers.get("content-length", "0")
            if "chunked" in headers.get("transfer-encoding", "").lower():
                return self._send(
                    as_result(
                        error_response(411, "LengthRequired", "send the body with a Content-Length")
                    ),
                    close=True,
                )
            try:
                length = int(length_text)
            except ValueError:
                length = -1
            if length < 0:
                return self._send(
                    as_result(error_response(400, "BadRequest", "bad Content-Length")),
                    close=True,
                )
            if length > MAX_REQUEST_BYTES:
                # Read (and drop) what was sent, so the client sees the answer, not a reset.
                self._drain(length)
                unsigned = server.unsigned(self.path, headers)
                if unsigned is not None:  # as on AWS: the front door answers first
                    return self._send(unsigned, close=length > _DRAIN_LIMIT)
                return self._send(
                    as_result(
                        error_response(
                            413,
                            "RequestTooLarge",
                            f"the request body is {length} bytes; the limit is "
                            f"{MAX_REQUEST_BYTES} bytes (docs/http.md): send a smaller payload",
                        )
                    ),
                    close=length > _DRAIN_LIMIT,
                )
            body = self.rfile.read(length) if length else b""
            try:
                result = server.answer(
                    self.command, self.path, headers, body, self.client_address[0]
                )
            except Exception:  # a bug: the server stays up
                shown = CALLBACK_PREFIX if self.path.startswith(CALLBACK_PREFIX) else self.path
                log.exception("rung dev: the HTTP API failed on %s %s", self.command, shown)
                result = as_result(
                    error_response(500, "InternalError", "rung dev's HTTP API failed: see its log")
                )
            self._send(result)

        def _drain(self, length: int) -> None:
            left = min(length, _DRAIN_LIMIT)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)

        def _send(self, result: dict[str, Any], close: bool = False) -> None:
            body = result.get("body") or ""
            data = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
            self.send_response(int(result.get("statusCode", 200)))
            for name, value in (result.get("headers") or {}).items():
                self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("rung dev api: " + format, *args)

    return Handler
