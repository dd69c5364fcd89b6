"""The embedded AWS emulator (moto's server, on a thread of this process).

In-process transport. LocalEngine's own clients do not go through the socket: a
botocore ``before-send`` hook hands each signed request to the same WSGI
application the server runs (same backends, same DynamoDB lock) and returns its
answer. The HTTP server stays up for anything else in the process (a user's own
boto3 client pointed at ``endpoint_url``). On this machine the hook makes a
DynamoDB request ~2.5x cheaper and, with several worker threads, removes the
thread the server starts per connection (see bench/latency.py).

Virtual time. SQS delays and visibility timeouts are the emulator's own, so that
LocalEngine exercises the same queue semantics as AWS. moto reads the wall clock
for them, and an emulator cannot skip time, so while a virtual-time engine runs,
moto's SQS clock functions are pointed at the engine's VirtualClock, and
``pending`` reads the emulator's queue to find the moment the next message
becomes visible. This is the one place rung reaches into moto's internals; it is
pinned to moto 5.x in pyproject.toml.

Transactions. moto rolls a failed TransactWriteItems back by deep-copying every
table it names before applying it, once per item: a cost that grows with the
table (a suite's table holds every run's steps), which made transactions the
emulator's largest cost in the flow-control tests. ``_lean_transactions`` keeps
moto's logic and snapshots only the items the transaction touches instead; the
DynamoDB lock above makes that as good a rollback as the copy.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from rung._clock import VirtualClock
from rung.errors import UsageError

ACCOUNT_ID = "123456789012"
_patch_lock = threading.Lock()
_patched_clock: VirtualClock | None = None
_originals: dict[str, Any] = {}
_lean_lock = threading.Lock()


class EmbeddedEmulator:
    """A moto server on 127.0.0.1 and an ephemeral port.

    One per process, started on first use and shared by every LocalEngine (each
    creates its own uniquely named table and queues): starting is cheap, but a
    werkzeug server takes half a second to shut down, which adds up over a test suite.
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
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        _lean_transactions()
        moto_app = DomainDispatcherApplication(create_backend_app)
        dynamodb_lock = threading.Lock()

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            # DynamoDB applies each conditional write atomically; moto's backend does
            # not lock, so two racing conditional updates could both succeed. One
            # DynamoDB request at a time restores the real service's guarantee. (SQS
            # is left concurrent: its long polls would otherwise block everything.)
            if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
                with dynamodb_lock:
                    return list(moto_app(environ, start_response))
            return moto_app(environ, start_response)

        self._app = app
        self._server = make_server(
            host, port, app, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rung-emulator", daemon=True
        )
        self._thread.start()
        bound_host, bound_port = self._server.server_address[:2]
        self.endpoint_url = f"http://{bound_host!s}:{bound_port}"

    def attach(self, client: Any) -> Any:
        """Send ``client``'s requests to the emulator in-process; returns the client."""
        client.meta.events.register("before-send", self._dispatch)
        return client

    def _dispatch(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.compat import HTTPHeaders
        from moto.core.botocore_stubber import MockRawResponse
        from werkzeug.test import EnvironBuilder, run_wsgi_app

        url = urlsplit(request.url)
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        headers = [
            (name, value.decode() if isinstance(value, bytes) else value)
            for name, value in request.headers.items()
        ]
        environ = EnvironBuilder(
            method=request.method,
            path=url.path or "/",
            query_string=url.query,
            headers=headers,
            data=body or b"",
            base_url=f"{url.scheme}://{url.netloc}",
        ).get_environ()
        chunks, status, response_headers = run_wsgi_app(self._app, environ)
        data = b"".join(chunks)
        http_headers = HTTPHeaders()
        for name, value in response_headers.items():
            http_headers[name] = value
        return AWSResponse(request.url, int(status.split()[0]), http_headers, MockRawResponse(data))

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()


def _lean_transactions() -> None:
    """Roll failed transactions back item by item instead of copying whole tables."""
    import copy

    import moto.dynamodb.models as models
    from moto.dynamodb.models.table import Table

    with _lean_lock:
        original = models.DynamoDBBackend.transact_write_items
        if getattr(original, "_rung_lean", False):
            return

        class _KeepTables:
            """moto's module sees this as ``copy``: a Table is not copied (see below)."""

            @staticmethod
            def deepcopy(value: Any, memo: Any = None) -> Any:
                return value if isinstance(value, Table) else copy.deepcopy(value, memo)

            def __getattr__(self, name: str) -> Any:  # copy.copy and the rest: the real ones
                return getattr(copy, name)

        def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
            saved = []
            for entry in transact_items:
                try:
                    op_type, op = next(iter(entry.items()))
                    table = self.get_table(op["TableName"])  # a name or an ARN
                    source = op["Item"] if op_type == "Put" else op["Key"]
                    names = [table.hash_key_attr, table.range_key_attr]
                    key = {name: source[name] for name in names if name is not None}
                    current = self.get_item(table.name, key)
                except Exception:  # noqa: BLE001 - malformed: moto refuses it before writing
                    continue
                saved.append(
                    (table.name, key, current.to_json()["Attributes"] if current else None)
                )
            try:
                original(self, transact_items)
            except Exception:
                for table_name, key, attrs in reversed(saved):
                    if attrs is None:
                        self.delete_item(table_name, key)
                    else:
                        self.put_item(table_name, attrs)
                raise

        transact_write_items._rung_lean = True  # type: ignore[attr-defined]
        setattr(models, "copy", _KeepTables())  # noqa: B010 - not an exported name
        models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


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


def release_virtual_time() -> None:
    global _patched_clock
    import moto.sqs.models as sqs_models

    with _patch_lock:
        if _patched_clock is None:
            return
        sqs_models.unix_time = _originals["unix_time"]  # type: ignore[attr-defined]
        sqs_models.unix_time_millis = _originals["unix_time_millis"]  # type: ignore[attr-defined]
        _patched_clock = None


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
