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

Transactions. moto rolls a failed TransactWriteItems back by deep-copying every
table it names before applying it, once per item: a cost that grows with the
table (a suite's table holds every run's steps), which made transactions the
emulator's largest cost in the flow-control tests. ``_lean_transactions`` keeps
moto's logic and snapshots only the items the transaction touches instead; the
DynamoDB lock above makes that as good a rollback as the copy.

Receives (``_atomic_receives``). SQS's ReceiveMessage is atomic; moto's is not: a
receive that finds a message past maxReceiveCount moves it to the DLQ with a plain
list removal, and two receives racing over one message make the loser fail with a
500 after it marked its messages received (invisible for the visibility timeout,
held by nobody). Receives and deletes run one at a time; a long poll waits between
tries without the lock. (Seen in the kill -9 soak, tests/integration/test_dev_soak.py;
``rung dev``'s emulator process and LocalEngine both get it.)

Per-request work (``_lean_requests``). moto recomputed on every request what
depends only on the request's shape; each is now computed once per shape, keeping
moto's own code for the computation and every check that depends on values or on
the item (conditions are still evaluated against the stored item, under the lock):

1. the method names of a handler class (``inspect.getmembers``): a class's methods
   do not change;
2. an UpdateExpression's syntax tree, parsed twice per UpdateItem: a function of
   the text; its users only read it, and the update validates and applies a deep
   copy of it (moto's ``Validator`` copies the tree it is given);
3. the placeholders such a cached tree uses (``find_clauses``, twice per
   UpdateItem, to check that every name and value given is used);
4. three of the update's ten validation passes (too many clauses, overlapping
   paths, a key attribute updated): they read the expression, its attribute names
   and the table's key only, so an expression that passed them with the same names
   on the same table passes again; the other seven (values, the item) run each time;
5. each validation pass's map of node types to its handlers (moto's docstring calls
   the accessor "cached"; it rebuilt a dict per node of the tree);
6. a ConditionExpression's tokens, lexed twice per conditional write: a function of
   the text (names and values are substituted after lexing, on every request);
7. the keys under which the response serializer looks a member of a plain dict up:
   they depend on the member and its shape in the model only;
8. a message's retention, checked for each message a receive looks at, read through
   the queue's full attribute listing, which counts all its messages (receives were
   quadratic in the queue's depth): the queue's retention period, read directly.

The memos stop growing at ``_MEMO_LIMIT`` entries each (beyond, moto computes as
before). And ``_lean_backends``: moto listed a service's regions, when it created
the service's first backend, from a boto3 session of its own, which loads
botocore's endpoint data and scans its model directories once more (a sixth of a
first engine's start); it now asks the session rung's clients use.
"""

from __future__ import annotations

import functools
import importlib
import logging
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from rung._util.clock import VirtualClock
from rung.errors import UsageError

ACCOUNT_ID = "123456789012"
_patch_lock = threading.Lock()
_patched_clock: VirtualClock | None = None
_originals: dict[str, Any] = {}
_lean_lock = threading.Lock()
_MEMO_LIMIT = 10_000  # expressions and shapes remembered per memo (a test uses dozens)
K = TypeVar("K")
V = TypeVar("V")


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
        _lean_transactions()
        _atomic_receives()
        _lean_requests()
        _lean_backends()
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
    url_paths = _moto(f"{service}.urls").url_paths
    for pattern, handler in url_paths.items():
        if pattern.format("") in ("/", "/$"):
            return handler
    raise UsageError(f"no handler for {service}")


def _lean_backends() -> None:
    """Give moto the boto3 session rung's clients use, to list a service's regions."""
    from rung._aws import sessions

    backends = _moto("core.base_backend").AccountSpecificBackend
    with _lean_lock:
        if getattr(backends, "_rung_lean", False):
            return
        boto3_session = sessions.session("http://127.0.0.1", sessions.DEFAULT_REGION)
        backends.get_session = classmethod(lambda cls: boto3_session)
        backends._rung_lean = True


def _atomic_receives() -> None:
    """Make moto's ReceiveMessage atomic, as SQS's is.

    moto serves requests on threads, and a receive that finds a message past the
    queue's maxReceiveCount moves it to the DLQ with a plain ``list.remove``: two
    receives racing over the same message both try, and the loser fails with a 500
    *after* marking the messages it had picked as received. Those are then invisible
    for the queue's whole visibility timeout, with nobody holding them (seen in the
    kill -9 soak, tests/integration/test_dev_soak.py). So receives (and deletes, which
    also rewrite the list) run one at a time; a long poll waits between tries, without
    the lock, so that one poller does not hold up the others.
    """
    from moto.sqs.models import SQSBackend

    with _lean_lock:
        if getattr(SQSBackend.receive_message, "_rung_atomic", False):
            return
    lock = threading.Lock()
    receive = SQSBackend.receive_message
    delete = SQSBackend.delete_message

    def receive_message(
        self: Any,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> Any:
        deadline = time.monotonic() + (wait_seconds_timeout or 0)
        while True:
            with lock:
                found = receive(
                    self, queue_name, count, 0, visibility_timeout, message_attribute_names
                )
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            self.get_queue(queue_name).wait_for_messages(min(left, 0.1))
            time.sleep(0.01)  # visible messages that all went to the DLQ: do not spin

    def delete_message(self: Any, queue_name: str, receipt_handle: str) -> None:
        with lock:
            delete(self, queue_name, receipt_handle)

    receive_message._rung_atomic = True  # type: ignore[attr-defined]
    SQSBackend.receive_message = receive_message  # type: ignore[method-assign]
    SQSBackend.delete_message = delete_message  # type: ignore[method-assign]


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


def _lean_requests() -> None:
    """Compute once what moto recomputed on every request from the request's shape
    alone (the module docstring's "Per-request work" lists each and why it is safe)."""
    responses = _moto("core.responses")
    with _lean_lock:
        if getattr(responses, "_rung_lean", False):
            return
        # 1. The names of a handler class's methods (inspect.getmembers, to check that
        #    the action exists).
        responses.method_names_from_class = functools.cache(responses.method_names_from_class)
        _cache_update_expressions()  # 2-4
        _cache_handler_maps()  # 5
        _cache_condition_tokens()  # 6
        # 7. The keys under which the response serializer looks a member up.
        serialize = _moto("core.serialize")
        for picker in (serialize.AttributePicker, serialize.XFormedAttributePicker):
            _cache_possible_keys(picker)
        _lean_retention()  # 8
        responses._rung_lean = True


def _cache_update_expressions() -> None:
    """2. An UpdateExpression's syntax tree, parsed twice per UpdateItem; 3. the
    placeholders a cached tree uses, listed twice per UpdateItem; 4. the update's
    validation passes that depend on the expression, its names and the table's key
    only, skipped once they passed with those."""
    ast_nodes = _moto("dynamodb.parsing.ast_nodes")
    expressions = _moto("dynamodb.parsing.expressions")
    validators = _moto("dynamodb.parsing.validators")

    parser = expressions.UpdateExpressionParser
    make = parser.make.__func__
    trees: _Memo[str, Any] = _Memo()
    shared: set[int] = set()  # ids of the cached trees, which the memo keeps alive

    def make_update(cls: Any, expression: str) -> Any:
        tree = trees.get(expression)
        if tree is None:
            tree = make(cls, expression)
            if trees.put(expression, tree):
                shared.add(id(tree))
        return tree

    parser.make = classmethod(make_update)

    find_clauses = ast_nodes.Node.find_clauses
    found: _Memo[tuple[int, tuple[type, ...]], list[Any]] = _Memo()

    def find_clauses_once(self: Any, clause_types: list[type]) -> list[Any]:
        if id(self) not in shared:
            return find_clauses(self, clause_types)  # type: ignore[no-any-return]
        key = (id(self), tuple(clause_types))
        clauses = found.get(key)
        if clauses is None:
            clauses = find_clauses(self, clause_types)
            found.put(key, clauses)
        return list(clauses)

    ast_nodes.Node.find_clauses = find_clauses_once

    validator = validators.UpdateExpressionValidator
    init, validate = validator.__init__, validator.validate
    shape_only = (
        validators.ActionCountValidator,
        validators.OverlappingPathsValidator,
        validators.UpdateHashRangeKeyValidator,
    )
    passed: _Memo[tuple[Any, ...], bool] = _Memo()

    def init_validator(self: Any, expression: Any, *args: Any, **kwargs: Any) -> None:
        init(self, expression, *args, **kwargs)
        self._rung_shape = None
        if id(expression) in shared:
            names = tuple(sorted((self.expression_attribute_names or {}).items()))
            self._rung_shape = (id(expression), names, tuple(self.table.table_key_attrs))
            if passed.get(self._rung_shape):
                self.processors = [p for p in self.processors if type(p) not in shape_only]

    def validate_update(self: Any) -> Any:
        tree = validate(self)
        if self._rung_shape is not None:
            passed.put(self._rung_shape, True)
        return tree

    validator.__init__ = init_validator
    validator.validate = validate_update


def _cache_handler_maps() -> None:
    """5. A validation pass's map of node types to its handlers, rebuilt per node."""
    traverser = _moto("dynamodb.parsing.ast_nodes").DepthFirstTraverser

    def handlers(self: Any) -> dict[type, Any]:
        known: dict[type, Any] | None = self.__dict__.get("_rung_handlers")
        if known is None:
            known = self.__dict__["_rung_handlers"] = self._processing_map()
        return known

    def node_types(self: Any) -> tuple[type, ...]:
        types: tuple[type, ...] | None = self.__dict__.get("_rung_types")
        if types is None:
            types = self.__dict__["_rung_types"] = tuple(handlers(self))
        return types

    def process(self: Any, node: Any) -> Any:
        for node_type, handler in handlers(self).items():
            if isinstance(node, node_type):
                return handler(node)
        return None

    traverser.nodes_to_be_processed = node_types
    traverser.process = process


def _cache_condition_tokens() -> None:
    """6. A ConditionExpression's tokens, lexed twice per conditional write."""
    from collections import deque

    condition_parser = _moto("dynamodb.comparisons").ConditionExpressionParser
    lex = condition_parser._lex_condition_expression
    tokens_of: _Memo[str, tuple[Any, ...]] = _Memo()

    def lex_condition(self: Any) -> Any:
        text = self.condition_expression
        tokens = tokens_of.get(text)
        if tokens is None:
            tokens = tuple(lex(self))
            tokens_of.put(text, tokens)
        return deque(tokens)

    condition_parser._lex_condition_expression = lex_condition


def _lean_retention() -> None:
    """8. A message's retention, read through the queue's full attribute listing."""
    sqs_models = _moto("sqs.models")

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        period = self.get_queue(queue_name).message_retention_period
        return bool(period + message.sent_timestamp / 1000 > sqs_models.unix_time())

    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = retained


def _moto(module: str) -> Any:
    """A moto module, typed Any: what rung changes in it is internal to moto."""
    return importlib.import_module(f"moto.{module}")


class _Memo(Generic[K, V]):
    """A dict that stops growing at ``_MEMO_LIMIT`` entries and never replaces one: a
    value it handed out stays its value (the trees' ids in ``shared`` stay theirs)."""

    def __init__(self) -> None:
        self._items: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> bool:
        """Keep ``value`` for ``key``; False if it was not kept (full, or already set)."""
        if len(self._items) >= _MEMO_LIMIT:
            return False
        return self._items.setdefault(key, value) is value


def _cache_possible_keys(picker: Any) -> None:
    original = picker.get_possible_keys
    keys_of: _Memo[tuple[Any, ...], tuple[str, ...]] = _Memo()

    def get_possible_keys(self: Any, context: Any) -> Any:
        if type(context.obj) is not dict:  # an object's keys may depend on its class
            return original(self, context)
        key = (type(self), tuple(self.alias_providers), context.key, context.shape)
        keys = keys_of.get(key)
        if keys is None:
            keys = tuple(original(self, context))
            keys_of.put(key, keys)
        return keys

    picker.get_possible_keys = get_possible_keys


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
