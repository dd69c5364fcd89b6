"""What rung changes in moto, for the embedded emulator (``rung._aws.emulator``):
everything here reaches into moto's internals, is pinned to moto 5.x (pyproject.toml)
and is checked by tests/functional/test_emulator.py. ``apply`` makes every change
once per process.

Transactions. moto rolls a failed TransactWriteItems back by deep-copying every
table it names before applying it, once per item: a cost that grows with the
table (a suite's table holds every run's steps), which made transactions the
emulator's largest cost in the flow-control tests. ``_lean_transactions`` keeps
moto's logic and snapshots only the items the transaction touches instead; the
emulator's DynamoDB lock (one request at a time) makes that as good a rollback as the copy.

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

Lambda versions (``_monotonic_versions``). Lambda never reuses a version number: after
versions 1-3 and a delete of 1, the next is 4. moto numbers a new version one above how
many it holds, so it would publish a second 3, and a version would no longer name one
code (``rung dev`` keeps its code versions there; docs/versioning.md). A new version is
numbered one above the highest the function ever had, moto's other checks unchanged.

The memos stop growing at ``_MEMO_LIMIT`` entries each (beyond, moto computes as
before). And ``_lean_backends``: moto listed a service's regions, when it created
the service's first backend, from a boto3 session of its own, which loads
botocore's endpoint data and scans its model directories once more (a sixth of a
first engine's start); it now asks the session rung's clients use.
"""

from __future__ import annotations

import copy
import functools
import importlib
import threading
import time
from typing import Any, Generic, TypeVar

_lean_lock = threading.Lock()
_MEMO_LIMIT = 10_000  # expressions and shapes remembered per memo (a test uses dozens)
K = TypeVar("K")
V = TypeVar("V")


def apply() -> None:
    """Make every change below (each at most once per process)."""
    _lean_transactions()
    _atomic_receives()
    _lean_requests()
    _lean_backends()
    _monotonic_versions()


def _monotonic_versions() -> None:
    """Number a new Lambda version above every one the function ever had, as Lambda does
    (moto's ``publish_version`` otherwise, with only the number changed)."""
    storage = moto("awslambda.models").LambdaStorage
    with _lean_lock:
        if getattr(storage.publish_version, "_rung_monotonic", False):
            return

        def publish_version(self: Any, name_or_arn: str, description: str = "") -> Any:
            function = self.get_function_by_name_or_arn_forbid_qualifier(name_or_arn)
            entry = self._functions.get(function.function_name)
            if entry is None or not entry["latest"]:
                return None
            versions = entry["versions"]
            if versions:
                if not function.code_or_config_updated:
                    return versions[-1]  # nothing changed: nothing to publish
                function.code_or_config_updated = False
            number = max([entry.get("rung_highest", 0), *(int(v.version) for v in versions)]) + 1
            published = copy.copy(entry["latest"])
            published.set_version(number)
            if description:
                published.description = description
            versions.append(published)
            self._arns[published.function_arn] = published
            entry["rung_highest"] = number
            return published

        publish_version._rung_monotonic = True  # type: ignore[attr-defined]
        storage.publish_version = publish_version


def _lean_backends() -> None:
    """Give moto the boto3 session rung's clients use, to list a service's regions."""
    from rung._aws import sessions

    backends = moto("core.base_backend").AccountSpecificBackend
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
    responses = moto("core.responses")
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
        serialize = moto("core.serialize")
        for picker in (serialize.AttributePicker, serialize.XFormedAttributePicker):
            _cache_possible_keys(picker)
        _lean_retention()  # 8
        responses._rung_lean = True


def _cache_update_expressions() -> None:
    """2. An UpdateExpression's syntax tree, parsed twice per UpdateItem; 3. the
    placeholders a cached tree uses, listed twice per UpdateItem; 4. the update's
    validation passes that depend on the expression, its names and the table's key
    only, skipped once they passed with those."""
    ast_nodes = moto("dynamodb.parsing.ast_nodes")
    expressions = moto("dynamodb.parsing.expressions")
    validators = moto("dynamodb.parsing.validators")

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
    traverser = moto("dynamodb.parsing.ast_nodes").DepthFirstTraverser

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

    condition_parser = moto("dynamodb.comparisons").ConditionExpressionParser
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
    sqs_models = moto("sqs.models")

    def retained(self: Any, queue_name: str, message: Any) -> bool:
        period = self.get_queue(queue_name).message_retention_period
        return bool(period + message.sent_timestamp / 1000 > sqs_models.unix_time())

    sqs_models.SQSBackend.is_message_valid_based_on_retention_period = retained


def moto(module: str) -> Any:
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
