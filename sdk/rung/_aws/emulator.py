"""The embedded AWS emulator (moto's server, on a thread of this process).

Everything here that reaches into moto's internals is pinned to moto 5.x
(pyproject.toml) and is checked by tests/functional/test_emulator.py.

In-process transport. LocalEngine's own clients do not go through the socket: a
botocore ``before-send`` hook hands each request to the moto handler of the
client's service (DynamoDB or SQS: the handler the server's routing would pick)
and returns its answer, under the same DynamoDB lock as the server. No WSGI
round trip, no Flask routing, no per-request scan of moto's backends: moto's own
in-process mode (``mock_aws``) dispatches the same way. The request is not signed
(nothing checks a signature here; SigV4 was a tenth of a request's time) but
carries the Authorization header moto reads the account and region from.

The HTTP server is for everything else in the process (a user's own boto3 client
pointed at ``endpoint_url``, ``rung dev``'s workers): its port is bound at once, so
every URL names it, but the server (werkzeug and Flask: a tenth of a first
engine's start) comes up when ``endpoint_url`` is first read.

Virtual time. SQS delays and visibility timeouts are the emulator's own, so that
LocalEngine exercises the same queue semantics as AWS. moto reads the wall clock
for them, and an emulator cannot skip time, so while a virtual-time engine runs,
moto's SQS clock functions are pointed at the engine's VirtualClock, and
``pending`` reads the emulator's queue to find the moment the next message
becomes visible.

What rung changes in moto itself, and why each change keeps the semantics, is in
``rung._aws.moto_patches`` (applied when the first emulator starts).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from rung._aws import moto_patches
from rung._util.clock import VirtualClock
from rung.errors import UsageError

ACCOUNT_ID = "123456789012"
_patch_lock = threading.Lock()
_patched_clock: VirtualClock | None = None
_originals: dict[str, Any] = {}


class EmbeddedEmulator:
    """moto's DynamoDB and SQS in this process, and its server on 127.0.0.1 (an
    ephemeral port unless given), served from the first read of ``endpoint_url``.

    One per process, created on first use and shared by every LocalEngine (each
    creates its own uniquely named table and queues): a werkzeug server takes half a
    second to shut down, which adds up over a test suite.
    """

    _shared: EmbeddedEmulator | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> EmbeddedEmulator:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        moto_patches.apply()
        self._dynamodb_lock = threading.Lock()
        # The port is bound now, so that every URL (queue URLs too) names it; the HTTP
        # server comes up when ``endpoint_url`` is first read (see the module docstring).
        self._socket = socket.create_server((host, port))
        bound_host, bound_port = self._socket.getsockname()[:2]
        #: the endpoint's URL, for clients that ``attach`` (in-process); reading
        #: ``endpoint_url`` instead also starts the HTTP server
        self.url = f"http://{bound_host!s}:{bound_port}"
        self._host = host
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._serving = threading.Lock()

    @property
    def endpoint_url(self) -> str:
        """The HTTP endpoint, for any client in or out of this process (it starts the
        server on first use)."""
        with self._serving:
            if self._server is None:
                self._serve()
        return self.url

    def _serve(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        moto_app = DomainDispatcherApplication(create_backend_app)
        dynamodb_lock = self._dynamodb_lock

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            # DynamoDB applies each conditional write atomically; moto's backend does
            # not lock, so two racing conditional updates could both succeed. One
            # DynamoDB request at a time restores the real service's guarantee. (SQS
            # is left concurrent: its long polls would otherwise block everything.)
            if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
                with dynamodb_lock:
                    return list(moto_app(environ, start_response))
            return moto_app(environ, start_response)

        port = self._socket.getsockname()[1]
        self._server = make_server(
            self._host,
            port,
            app,
            threaded=True,
            request_handler=MotoRequestHandler,
            fd=self._socket.fileno(),
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rung-emulator", daemon=True
        )
        self._thread.start()

    def attach(self, client: Any) -> Any:
        """Send ``client``'s requests to the emulator in-process; returns the client."""
        import botocore

        service = client.meta.service_model.service_name
        handler = _handler(service)
        locked = self._dynamodb_lock if service == "dynamodb" else None
        # Not signed, but with the header moto reads the account (from the access key)
        # and the region from, as in a signed request (see the module docstring).
        credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
        access_key = getattr(credentials, "access_key", None) or "test"
        authorization = (
            f"AWS4-HMAC-SHA256 Credential={access_key}/20000101/{client.meta.region_name}/"
            f"{client.meta.service_model.signing_name}/aws4_request, "
            "SignedHeaders=host, Signature=in-process"
        )

        def dispatch(request: Any, **_: Any) -> Any:
            request.headers["Authorization"] = authorization
            return self._dispatch(request, handler, locked)

        client.meta.events.register_first("choose-signer", lambda **_: botocore.UNSIGNED)
        client.meta.events.register("before-send", dispatch)
        return client

    def _dispatch(self, request: Any, handler: Any, locked: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.compat import HTTPHeaders
        from botocore.exceptions import ClientError
        from moto.core.botocore_stubber import MockRawResponse
        from moto.core.request import normalize_request
        from werkzeug.exceptions import HTTPException

        fast = _request(request)
        normalized, url = fast if fast else (normalize_request(request), None)
        url = url or normalized.raw_url
        try:
            if locked is not None:
                with locked:
                    status, headers, body = handler(normalized, url, normalized.headers)
            else:
                status, headers, body = handler(normalized, url, normalized.headers)
        except HTTPException as exc:
            status, headers, body = exc.code, dict(exc.get_headers()), exc.get_body()
        except ClientError as exc:  # as moto's server answers it
            status, headers, body = 400, {}, exc.response["Error"]["Message"]
        http_headers = HTTPHeaders()
        for name, value in headers.items():
            http_headers[name] = str(value)
        return AWSResponse(request.url, int(status), http_headers, MockRawResponse(body))

    def stop(self) -> None:
        with self._serving:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._socket.close()


def _request(request: Any) -> tuple[Any, str] | None:
    """moto's Request and its URL for a botocore request to "/" (every DynamoDB and SQS
    JSON call), from a WSGI environ built here: what werkzeug's EnvironBuilder (moto's
    way, in ``normalize_request``) builds, at a fraction of its cost. None: another
    shape of request."""
    from io import BytesIO

    from moto.core.request import PRESERVED_HEADER_NAMES_ENVIRON_KEY, Request

    url = urlsplit(request.url)
    body = request.body
    if url.path not in ("", "/") or url.query or not isinstance(body, bytes | str | None):
        return None
    data = body.encode() if isinstance(body, str) else body or b""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "RAW_URI": "/",
        "REQUEST_URI": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": url.hostname or "localhost",
        "SERVER_PORT": str(url.port or (443 if url.scheme == "https" else 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": url.netloc,
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url.scheme,
        "wsgi.input": BytesIO(data),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        PRESERVED_HEADER_NAMES_ENVIRON_KEY: {},
    }
    for name, value in request.headers.items():
        if name.lower() in ("content-length", "transfer-encoding"):
            continue
        key = name.upper().replace("-", "_")
        if key != "CONTENT_TYPE":
            key = f"HTTP_{key}"
        environ[key] = value.decode() if isinstance(value, bytes) else value
    return Request(environ), f"{url.scheme}://{url.netloc}/"


def _handler(service: str) -> Any:
    """The moto handler for a service's requests to "/" (what the server routes them to)."""
    url_paths = moto_patches.moto(f"{service}.urls").url_paths
    for pattern, handler in url_paths.items():
        if pattern.format("") in ("/", "/$", "/.*$"):  # X-Ray's routes take any path
            return handler
    raise UsageError(f"no handler for {service}")


def use_virtual_time(clock: VirtualClock) -> None:
    """Point moto's SQS clock at ``clock`` (one virtual clock per process at a time)."""
    global _patched_clock
    import moto.sqs.models as sqs_models

    with _patch_lock:
        if _patched_clock is not None:
            raise UsageError(
                "another LocalEngine with virtual time is running in this process; use one "
                "at a time (or pass virtual_time=False to the second)"
            )
        _originals["unix_time"] = getattr(sqs_models, "unix_time")  # noqa: B009
        _originals["unix_time_millis"] = getattr(sqs_models, "unix_time_millis")  # noqa: B009

        def unix_time(dt: datetime | None = None) -> float:
            return dt.replace(tzinfo=UTC).timestamp() if dt is not None else clock.epoch()

        def unix_time_millis(dt: datetime | None = None) -> float:
            return unix_time(dt) * 1000.0

        sqs_models.unix_time = unix_time  # type: ignore[attr-defined]
        sqs_models.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]
        _patched_clock = clock


def release_virtual_time(clock: VirtualClock) -> None:
    """Give moto's SQS its wall clock back, if ``clock`` is the one it runs on: an engine
    whose ``use_virtual_time`` was refused (another engine's clock is in place) must not
    take that other engine's clock away when it stops."""
    global _patched_clock
    import moto.sqs.models as sqs_models

    with _patch_lock:
        if _patched_clock is not clock:
            return
        sqs_models.unix_time = _originals["unix_time"]  # type: ignore[attr-defined]
        sqs_models.unix_time_millis = _originals["unix_time_millis"]  # type: ignore[attr-defined]
        _patched_clock = None


def visible(region: str, queue_name: str) -> int:
    """How many messages of the queue a receive could take now, on moto's (maybe
    virtual) clock: visible and not delayed, counting one due this very millisecond."""
    import moto.sqs.models as sqs_models
    from moto.sqs.models import sqs_backends

    queue = sqs_backends[ACCOUNT_ID][region].queues.get(queue_name)
    if queue is None:
        return 0
    now_ms = getattr(sqs_models, "unix_time_millis")()  # noqa: B009 - virtual if patched
    return sum(1 for m in list(queue._messages) if max(m.visible_at, m.delayed_until) <= now_ms)


def pending(region: str, queue_name: str, now_ms: float) -> list[tuple[float, str]]:
    """``(due epoch ms, body)`` of every invisible or delayed message, soonest first."""
    from moto.sqs.models import sqs_backends

    queue = sqs_backends[ACCOUNT_ID][region].queues.get(queue_name)
    if queue is None:
        return []
    found = []
    for message in list(queue._messages):
        when = max(message.visible_at, message.delayed_until)
        if when > now_ms:
            found.append((float(when), str(message.body)))
    return sorted(found)


def armed_timers(region: str, table_name: str) -> list[tuple[float, str]]:
    """``(due epoch ms, run id)`` of every run item with an armed timer (``due_sk``),
    soonest first: LocalEngine's view of the timer index, read in process like
    ``pending`` (its virtual clock jumps to them; AWS needs no such read)."""
    from moto.dynamodb.models import dynamodb_backends

    table = dynamodb_backends[ACCOUNT_ID][region].tables.get(table_name)
    if table is None:
        return []
    found = []
    for item in _snapshot(table):
        key = item.attrs.get("due_sk")
        if key is not None:
            due, run_id = str(key.value).split("#", 1)
            found.append((float(due), run_id))
    return sorted(found)


def _snapshot(table: Any) -> list[Any]:
    """The table's items, read while the emulator's server thread may be writing: a
    dict that changes size mid-iteration raises, and the read is simply made again."""
    for _ in range(100):
        try:
            return [item for hash_set in list(table.items.values()) for item in _items_of(hash_set)]
        except RuntimeError:
            continue
    return []


def _items_of(hash_set: Any) -> list[Any]:
    return list(hash_set.values()) if isinstance(hash_set, dict) else [hash_set]
