"""Run an app's tasks in this process, on the embedded AWS emulator, for tests.

``LocalEngine`` is the fourth target beside AWS, LocalStack and ``rung dev``: the
same engine code, DynamoDB table and SQS queue semantics (moto's server on a
thread), with worker threads instead of Lambda. The one difference is how a due
time is reached: with ``virtual_time=True`` (the default) the clock advances only
when no work is runnable and then jumps to the next due time, so backoff, delays,
``ctx.wait`` and lease expiry pass instantly while history keeps the real durations.
It never jumps to the deadline of a token a run waits for: answering a token is the
test's move (``engine.wait_for_token`` then ``engine.client.complete_token``), and a
test of a token's timeout moves the clock itself (``engine.clock.advance``). Nor
does it jump for a message that can no longer move its run (its run finished, or waits
for a token or with no timer), such as the one a token's wait leaves behind when an
answer wakes the run early. A ``trigger_and_wait`` timeout is passed through on the
way to a later due time, and otherwise waits for the test's move in the same way. Cron
schedules fire as the clock passes their times (rung.testing._schedules).

Example:
    >>> with rung.testing.LocalEngine(app) as engine:
    ...     handle = engine.trigger("process-order", {"order_id": "o-1"})
    ...     run = engine.wait(handle.run_id, timeout=30)
    ...     assert run.status == "COMPLETED"
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from typing_extensions import Unpack

from rung._aws import sessions
from rung._aws.dynamodb import DEFAULT_RETENTION, DynamoStore, check_retention
from rung._aws.emulator import (
    EmbeddedEmulator,
    release_virtual_time,
    use_virtual_time,
    visible,
)
from rung._aws.s3 import Blobs
from rung._aws.sqs import DEFAULT_MAX_RECEIVE_COUNT, BadMessage, QueueMessage, SqsQueue, decode
from rung._engine.config import WorkerConfig
from rung._engine.reconciler import DEFAULT_GRACE, Reconciler, ReconcileReport
from rung._engine.routing import Versioning, version_table
from rung._engine.schedules import Schedules
from rung._engine.timers import TimerSweep
from rung._engine.worker import Disposition, Worker
from rung._util.clock import Clock, SystemClock, VirtualClock, from_ms
from rung._util.durations import check_duration
from rung.app import App, Task
from rung.client import Client
from rung.errors import InvalidConfig, UsageError
from rung.models import (
    HistoryEvent,
    ListOptions,
    Run,
    RunHandle,
    RunPage,
    RunStatus,
    TokenState,
    TriggerOptions,
    VersionInfo,
)
from rung.testing._schedules import Scheduling
from rung.testing._versions import LocalVersions
from rung.testing._virtual import next_due, not_ending
from rung.testing.telemetry import LocalTelemetry, ReadBack

log = logging.getLogger("rung.testing")
_REGION = "us-east-1"
_FALLBACK_POLL = 0.1  # seconds: how often wait() reads a run that no worker here moved
In = TypeVar("In")  # a task's payload type


class SimulatedCrash(BaseException):  # noqa: N818 - it simulates a process death
    """Raise inside a step to make a LocalEngine worker die at that point.

    Nothing after it is written: the message stays in flight and the run's lease
    expires, exactly as when a Lambda worker is killed. (An in-process stand-in for
    ``kill -9``, which the process-level tests exercise for real.)
    """


@dataclass(frozen=True)
class WorkerFault:
    """An exception that escaped the engine in a worker thread (a crash or a bug)."""

    run_message: str
    error: BaseException


class LocalEngine(ReadBack, Scheduling):
    """The engine in this process, on the embedded emulator.

    Args:
        app: the app whose tasks run.
        workers: worker threads (each processes one message at a time). 0 starts none:
            the test drives ``engine.worker.handle(message)`` itself (and the clock).
        virtual_time: skip waits (see the module docstring). False uses the wall clock.
        lease_duration: how long a crashed worker holds a run before it is taken over
            (and a queue slot is held without renewal). With virtual time it is renewed
            before steps only; with ``virtual_time=False`` a heartbeat keeps it while
            the body runs, as on Lambda.
        max_receive_count: the DLQ redrive threshold, as in template.yaml (default 10).
        invocation_timeout: simulate Lambda's limit per message: before a step, a run
            with less than ``min_time_left`` of it left continues in a new invocation.
        min_time_left: see ``invocation_timeout``.
        reconcile_grace: how long past due a run must be before ``reconcile()``
            re-drives it (as on AWS: the reconciler function's grace).
        retention: how long finished runs are kept; ``reconcile()`` deletes them after
            (1 to 3650 days, default 30, as template.yaml's RetentionDays).
        telemetry: send what the runs report to the emulator, as Lambda would on AWS:
            trace segments to its X-Ray (``trace``), log lines to its CloudWatch Logs
            (``logs``). False sends neither.
        version: the label of ``app``'s code version (default "1"); ``deploy`` adds
            newer ones (docs/versioning.md).
        session: your own ``boto3.Session``: the engine's clients of the emulator are
            made from it (its event hooks and config apply).
    """

    def __init__(
        self,
        app: App,
        *,
        workers: int = 1,
        virtual_time: bool = True,
        lease_duration: timedelta = timedelta(minutes=1),
        max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT,
        invocation_timeout: timedelta | None = None,
        min_time_left: timedelta = timedelta(seconds=10),
        reconcile_grace: timedelta = DEFAULT_GRACE,
        telemetry: bool = True,
        retention: timedelta = DEFAULT_RETENTION,
        version: str = "1",
        session: Any = None,
    ) -> None:
        if not isinstance(app, App):
            raise UsageError(f"LocalEngine needs a rung.App, got {type(app).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise InvalidConfig(f"workers must be an int >= 0, got {workers!r}")
        if max_receive_count < 3:
            raise InvalidConfig("max_receive_count must be at least 3")
        check_duration(reconcile_grace, "reconcile_grace", positive=True)
        self._retention = check_retention(retention)
        if invocation_timeout is not None:
            invocation_timeout = check_duration(
                invocation_timeout,
                "invocation_timeout",
                positive=True,
                maximum=timedelta(minutes=15),  # Lambda's limit
            )
        self.app = app
        self._session = session
        self._versions = LocalVersions()
        self._first_version = self._versions.check_new(version)
        self._workers = workers
        self.clock: Clock = VirtualClock() if virtual_time else SystemClock()
        # The heartbeat runs on the wall clock; a virtual clock moves only when every
        # worker is idle (or a test moves it, which is how tests stall a worker), so
        # there leases are renewed before steps only (docs/retries.md).
        self._config = WorkerConfig(
            lease_duration=lease_duration,
            slot_lease=lease_duration,
            min_time_left=min_time_left,
            heartbeat=not virtual_time,
        )
        self._max_receive = max_receive_count
        self._invocation_timeout = invocation_timeout
        self._reconcile_grace = reconcile_grace
        self._telemetry = telemetry
        #: the runs' reports on the emulator, read back (``trace``, ``logs``, ``metric``,
        #: ``events``); None with ``telemetry=False``
        self.telemetry: LocalTelemetry | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()  # set by trigger(): work may be waiting
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._busy = 0
        self._poller = threading.Lock()  # held by the one idle worker that polls
        self._turn_free = threading.Event()  # set when the poller's turn is handed on
        # How many messages of each run this engine's workers have handled, and how
        # many they are handling now; wait() and wait_for_token() sleep on them.
        self._progress = threading.Condition()
        self._handled: dict[str, int] = {}
        self._handled_total = 0
        self._in_hand: dict[str, int] = {}
        self.faults: list[WorkerFault] = []
        self._emulator: EmbeddedEmulator | None = None
        self._client: Client | None = None

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> LocalEngine:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._emulator is not None:
            raise UsageError("this LocalEngine is already started")
        if isinstance(self.clock, VirtualClock):
            use_virtual_time(self.clock)
        try:
            self._emulator = EmbeddedEmulator.shared()
            suffix = secrets.token_hex(4)
            self.table_name = f"rung-{self.app.name}-{suffix}"
            self.queue_name = f"rung-{self.app.name}-{suffix}"
            emulator = self._emulator
            self.dynamodb = emulator.attach(self._aws_client("dynamodb"))
            self.sqs = emulator.attach(self._aws_client("sqs"))
            # Any message sent (a trigger, a hand-off, a child waking its parent) wakes
            # the idle poller at once instead of at its next 50 ms poll.
            self.sqs.meta.events.register(
                "after-call.sqs.SendMessage", lambda **_: self._kick.set()
            )
            s3 = sessions.client("s3", emulator.endpoint_url, _REGION, session=self._session)
            self.blobs = Blobs.created(s3, f"rung-payloads-{suffix}")  # (REST: not attached)
            self.store = DynamoStore(self.dynamodb, self.table_name, self._retention, self.blobs)
            self.store.create_table()
            visibility = max(self._config.lease_duration * 2, timedelta(seconds=30))
            self.queue_url, self.dlq_url = SqsQueue.create(
                self.sqs,
                self.queue_name,
                visibility_timeout=visibility,
                max_receive_count=self._max_receive,
            )
            self.queue = SqsQueue(self.sqs, self.queue_url, self._max_receive)
            # EventBridge Scheduler over HTTP: a REST API, which attach() does not serve
            scheduler = sessions.client("scheduler", emulator.endpoint_url, _REGION)
            self._start_scheduler(scheduler, self.table_name, self.queue)
            if self._telemetry:
                self.telemetry = LocalTelemetry(
                    self.app.name,
                    self.table_name,
                    lambda service: emulator.attach(self._aws_client(service)),
                    self.sqs,
                )
            self._sinks = self.telemetry.sinks() if self.telemetry is not None else None
            self._add_version(self.app, self._first_version)
            if self.telemetry is not None:
                self.telemetry.ship_logs(owner=self.worker.sinks)
        except BaseException:
            self.stop()
            raise
        for n in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"rung-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        self._turn_free.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self.telemetry is not None:
            self.telemetry.unhook()
        if self._emulator is not None:
            self._drop_resources()
            self._emulator = None
        if isinstance(self.clock, VirtualClock):
            release_virtual_time(self.clock)

    # -- versions --------------------------------------------------------------------

    def deploy(self, app: App, *, version: str | None = None) -> str:
        """Deploy a new code version of the app, as a deploy does on AWS: runs started
        from now on run ``app``'s code; every run already started finishes on the
        version it started on (a redrive moves a failed one to the latest). Returns the
        new version's label (``version``, by default the next number).

        Example:
            >>> engine = LocalEngine(v1.app)          # version "1"
            >>> engine.deploy(v2.app)                 # "2": new runs take v2's code
        """
        if self._emulator is None:
            raise UsageError("the LocalEngine is not started: use it in a `with` block")
        if not isinstance(app, App):
            raise UsageError(f"deploy needs a rung.App, got {type(app).__name__}")
        label = self._versions.check_new(version or self._versions.next_label())
        self._add_version(app, label)
        return label

    def versions(self) -> list[VersionInfo]:
        """The deployed versions, oldest first, and any other that runs are pinned to,
        with their runs in flight (as ``rung versions list``)."""
        counts = self.store.runs_in_flight()
        return version_table(self._versions.deployed(), self._versions.latest, counts)

    def prune(self) -> list[str]:
        """Retire every version but the latest that no run in flight needs (as ``rung
        versions prune``); returns the versions retired."""
        gone = [v.version for v in self.versions() if v.exists and not v.latest and not v.in_flight]
        for version in gone:
            self._versions.remove(version)
        return gone

    def _add_version(self, app: App, version: str) -> None:
        versioning = Versioning(version, self._versions.hand_over)
        worker = Worker(
            app, self.store, self.queue, self.clock, self._config, self._sinks, versioning
        )
        self._versions.add(version, worker, self.clock.now())
        self.app, self.worker = app, worker
        events = self._sinks.events if self._sinks else None
        self._client = Client._from_parts(
            app, self.store, self.queue, self.clock, events, self.scheduler
        )
        # As a deploy does (a first version's group is new: nothing to sync without any)
        if self._versions.deployed()[:-1] or any(t.schedule for t in app.tasks.values()):
            Schedules(app, self.store, self.queue, self.scheduler, self.clock).sync_declared(app)

    def _aws_client(self, service: str) -> Any:
        assert self._emulator is not None
        return sessions.client(service, self._emulator.url, _REGION, session=self._session)

    def _drop_resources(self) -> None:
        # The shared emulator outlives this engine: leave nothing of ours behind in it.
        with contextlib.suppress(Exception):
            self.dynamodb.delete_table(TableName=self.table_name)
        with contextlib.suppress(Exception):
            self._drop_scheduler()
        with contextlib.suppress(Exception):
            self.blobs.drop()
        if self.telemetry is not None:
            self.telemetry.drop()
        for url in (getattr(self, "queue_url", None), getattr(self, "dlq_url", None)):
            if url:
                with contextlib.suppress(Exception):
                    self.sqs.delete_queue(QueueUrl=url)

    # -- the client API --------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """The emulator's HTTP endpoint, for boto3 clients of the test's own (the engine's
        clients reach the emulator in-process)."""
        if self._emulator is None:
            raise UsageError("the LocalEngine is not started: use it in a `with` block")
        return self._emulator.endpoint_url

    @property
    def client(self) -> Client:
        if self._client is None:
            raise UsageError("the LocalEngine is not started: use it in a `with` block")
        return self._client

    def trigger(
        self,
        task: str | Task[Any, In],
        payload: In | Mapping[str, Any] | None = None,
        **options: Unpack[TriggerOptions],
    ) -> RunHandle:
        """Like ``Client.trigger``, with the same options."""
        handle = self.client.trigger(task, payload, **options)
        self._kick.set()
        return handle

    def get_run(self, run_id: str) -> Run:
        """Like ``Client.get_run``."""
        return self.client.get_run(run_id)

    def list_runs(self, **options: Unpack[ListOptions]) -> RunPage:
        """Like ``Client.list_runs``, with the same options."""
        return self.client.list_runs(**options)

    def history(self, run_id: str) -> list[HistoryEvent]:
        """Like ``Client.history``."""
        return self.client.history(run_id)

    def wait(self, run_id: str, timeout: float = 30.0, *, fail_fast: bool = True) -> Run:
        """Wait (wall-clock seconds) until the run is in a terminal status and return it.

        It returns once no worker of this engine is still handling a message of the
        run, so what the ending attempt sends (its trace segments) can be read back.
        It reads the run again each time a worker of this engine has handled one of
        the run's messages (a run ends while its own message is handled), and at least
        every 0.1 s for an end written otherwise (a cancel, also by a parent's timeout;
        another client; ``worker.handle`` called by the test).

        With virtual time it gives up within a second when nothing the engine would do by
        itself can move the run (it waits for a token, or for a child that does, and no
        work is due) and the run has not changed for that second: only the test can, by
        answering the token or moving the clock. ``fail_fast=False`` waits the whole
        ``timeout`` instead, for a run that another thread or process will move.

        Raises:
            TimeoutError: it is not terminal after ``timeout`` seconds, or (virtual
                time) nothing but the test can move it.
        """
        deadline = time.monotonic() + timeout
        stuck_since: tuple[float, datetime] | None = None  # since when, as of which write
        while True:
            seen = self._handled.get(run_id, 0)
            run = self.get_run(run_id)
            if run.status.is_terminal and not self._in_hand.get(run_id):
                return run  # ended, and no worker is still sending its telemetry
            if fail_fast and run.status == RunStatus.WAITING and self._stuck(run):
                if stuck_since is None or stuck_since[1] != run.updated_at:
                    stuck_since = (time.monotonic(), run.updated_at)
            else:
                stuck_since = None
            stuck = stuck_since is not None and time.monotonic() - stuck_since[0] >= 1.0
            if stuck or time.monotonic() > deadline:
                raise not_ending(run, None if stuck else timeout)
            self._await_progress(run_id, seen, deadline)

    def _stuck(self, run: Run) -> bool:
        """Virtual time, workers running, the engine settled (no worker busy, no message
        visible, no due time to jump to) and the run unchanged since it was read."""
        if not isinstance(self.clock, VirtualClock) or not self._workers:
            return False
        if not self._settled(0):
            return False
        return self.get_run(run.run_id).updated_at == run.updated_at

    def wait_for_token(
        self, run_id: str, name: str | None = None, timeout: float = 30.0
    ) -> TokenState:
        """Wait (wall-clock seconds) until the run waits for an open token and return it.

        ``name``: the token's name in ``ctx.create_token`` (default: any). It returns
        once the invocation that suspended the run has finished (its message is set
        to come back at the token's deadline), so a test may move ``engine.clock``
        past that deadline at once.

        Raises:
            TimeoutError: the run does not wait for such a token within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = self._handled.get(run_id, 0)
            run = self.get_run(run_id)
            if run.status == RunStatus.WAITING and not self._in_hand.get(run_id):
                for token in self.client.list_tokens(run_id):
                    if token.status == "WAITING" and name in (None, token.name):
                        return token
            if run.status.is_terminal or time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {run_id} is {run.status} and not waiting for a token"
                    + (f" named {name!r}" if name else "")
                    + f" (after {timeout:g}s)"
                )
            self._await_progress(run_id, seen, deadline)

    def settle(self, timeout: float = 30.0, *, blocked: int = 0) -> None:
        """Wait (wall-clock seconds) until the engine has nothing left to do on its own.

        That is: no worker is busy, no message in the queue is visible, and (with
        virtual time) there is no due time the clock would jump to. A test uses it
        before checking that something did *not* happen ("no parked run started", "the
        clock did not jump to the timeout"): whatever the engine would have done by
        itself, it has done by then, with no fixed sleep. A message due later on the
        wall clock (``virtual_time=False``: a backoff, a delay) is not waited for.

        ``blocked``: how many workers the test keeps busy on purpose (runs it holds in a
        step on an event of its own); it returns once no other worker is busy.

        Example:
            >>> client.pause_queue("emails")
            >>> handle = engine.trigger("send", {})
            >>> engine.settle()
            >>> assert engine.get_run(handle.run_id).status == "QUEUED"  # parked

        Raises:
            TimeoutError: the engine is still busy after ``timeout`` seconds (a run that
                keeps retrying, a worker blocked that ``blocked`` does not count).
        """
        if self._emulator is None:
            raise UsageError("the LocalEngine is not started: use it in a `with` block")
        deadline = time.monotonic() + timeout
        while not self._settled(blocked):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the engine is still busy after {timeout:g}s of waiting "
                    f"({self._busy} worker(s) busy, {blocked} blocked by the test; "
                    f"{visible(_REGION, self.queue_name)} message(s) visible)"
                )
            with self._progress:
                self._progress.wait(0.02)  # woken early when a message was handled

    def _settled(self, blocked: int) -> bool:
        # Consistent only if nothing was handled between the first look and the last,
        # and no worker (beyond the blocked ones) was busy at either: a message taken
        # meanwhile is either still in hand (busy) or handled (the count moved).
        with self._progress:
            seen = self._handled_total
        with self._lock:
            busy = self._busy
        if busy > blocked:
            return False
        virtual = isinstance(self.clock, VirtualClock)
        if busy == 0 and self._workers and virtual and self._next_due() is not None:
            return False  # the idle poller jumps the clock (or sweeps timers) next
        if visible(_REGION, self.queue_name):
            return False
        with self._lock, self._progress:
            return self._busy <= blocked and self._handled_total == seen

    def _await_progress(self, run_id: str, seen: int, deadline: float) -> None:
        """Sleep until a worker has handled another message of the run (``seen`` of
        them were handled before), for at most 0.1 s (the fallback poll) and not past
        ``deadline``."""
        timeout = min(max(deadline - time.monotonic(), 0.0), _FALLBACK_POLL)
        with self._progress:
            self._progress.wait_for(lambda: self._handled.get(run_id, 0) != seen, timeout)

    def reconcile(self) -> ReconcileReport:
        """Run one reconciler pass now, on this engine's clock, and say what it re-drove.

        On AWS the reconciler function runs on a schedule. Here it runs when a test asks:
        a message is lost only when a test loses it, and a lost run has no due message
        for the virtual clock to jump to, so the test advances the clock past the grace
        (``engine.clock.advance``) and calls this.
        """
        if self._emulator is None:
            raise UsageError("the LocalEngine is not started: use it in a `with` block")
        reconciler = Reconciler(self.store, self.queue, self.clock, self._reconcile_grace)
        return reconciler.run_once()

    # -- workers ---------------------------------------------------------------------

    def _work(self) -> None:
        # Idle workers do not all poll: one of them (holding ``_poller``) receives every
        # 50 ms or at once on a trigger's kick, and hands the turn on as soon as it gets
        # work; the others wait for the turn. With many workers, polling would otherwise
        # cost more of the emulator than the runs (16 idle threads polling every 50 ms
        # is 320 requests a second).
        polling = False
        try:
            while not self._stop.is_set():
                if not polling:
                    polling = self._poller.acquire(blocking=False)
                    if not polling:
                        self._turn_free.wait(1.0)
                        continue
                    self._turn_free.clear()
                with self._lock:
                    self._busy += 1
                messages = []
                try:
                    # One message per worker thread at a time: a thread that took ten
                    # would keep nine invisible while it runs the first.
                    messages = self.queue.receive(max_messages=1)
                    if messages:
                        self._poller.release()  # the turn goes on; this thread has work
                        polling = False
                        self._turn_free.set()
                    for message in messages:
                        self._process(message)
                except Exception as exc:  # the emulator went away during stop(), or a bug
                    if not self._stop.is_set():
                        log.exception("worker loop error")
                        self.faults.append(WorkerFault("(receive)", exc))
                finally:
                    with self._lock:
                        self._busy -= 1
                        all_idle = self._busy == 0
                if messages or not polling:
                    continue
                try:
                    if self.local_scheduler is not None and self.local_scheduler.tick():
                        continue  # cron firings whose times have passed, sent
                    virtual = isinstance(self.clock, VirtualClock)
                    if all_idle and virtual and self._advance_time():
                        continue
                except Exception as exc:  # a bug: recorded, and the turn is not lost
                    if not self._stop.is_set():
                        log.exception("worker loop error")
                        self.faults.append(WorkerFault("(advance time)", exc))
                # Idle: sleep until a trigger (or, for messages sent some other way,
                # 50 ms) rather than polling the emulator in a tight loop.
                if self._kick.wait(0.05):
                    self._kick.clear()
        finally:
            if polling:
                self._poller.release()
                self._turn_free.set()

    def _next_due(self) -> float | None | Literal["sweep"]:
        assert isinstance(self.clock, VirtualClock)
        return next_due(self.store, self.clock, self._sweep(), self.queue_name, self.table_name)

    def _sweep(self) -> TimerSweep:
        return TimerSweep(self.store, self.queue, self.clock)

    def _advance_time(self) -> bool:
        assert isinstance(self.clock, VirtualClock)
        due = self._next_due()
        if due == "sweep":
            # As the reconciler's sweep does on AWS: their messages, delayed to the due time.
            return bool(self._sweep().run_once())
        if due is None:
            return False
        with self._lock:
            if self._busy:
                return False
            self.clock.advance_to(from_ms(int(due) + 1))
        return True

    def _process(self, message: QueueMessage) -> None:
        try:
            run_id = decode(message.body)
        except BadMessage:
            run_id = ""
        with self._progress:
            self._in_hand[run_id] = self._in_hand.get(run_id, 0) + 1
        try:
            self._handle(message)
        finally:
            if self.telemetry is not None:
                self.telemetry.stream.flush()  # before wait() can return: its lines are there
            with self._progress:
                self._in_hand[run_id] -= 1
                self._handled[run_id] = self._handled.get(run_id, 0) + 1
                self._handled_total += 1
                self._progress.notify_all()

    def _handle(self, message: QueueMessage) -> None:
        started = self.clock.now()

        def time_left() -> float:
            assert self._invocation_timeout is not None
            elapsed = self.clock.now() - started
            return (self._invocation_timeout - elapsed).total_seconds()

        try:
            disposition = self.worker.handle(
                message, time_left if self._invocation_timeout is not None else None
            )
        except SimulatedCrash as crash:
            log.warning("simulated crash while handling %s", message.body)
            self.faults.append(WorkerFault(message.body, crash))
            return
        except Exception as exc:
            log.exception("worker error while handling %s", message.body)
            self.faults.append(WorkerFault(message.body, exc))
            return
        if disposition == Disposition.ACK:
            self.queue.delete(message)
