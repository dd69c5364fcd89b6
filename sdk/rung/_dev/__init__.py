"""``rung dev``: the whole application on this machine.

An AWS emulator (the embedded moto server, or LocalStack / any endpoint), the
data plane of template.yaml deployed to it as a CloudFormation stack, and the
template's functions run by a local runtime: the SQS event source mapping played
by ``esm.EventSourcePoller`` over worker processes, scheduled functions (the
reconciler) invoked on a timer, the HTTP API and token callbacks on 127.0.0.1
(``api``), one console line per run event, the workers' output
shipped to their functions' log groups in CloudWatch Logs (``logagent``, as Lambda
does), and a reload of the worker processes when code changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rung import _lambda
from rung._aws import cloudformation, sessions
from rung._aws.dynamodb import DynamoStore
from rung._aws.s3 import Blobs
from rung._aws.scheduler import EMULATOR_ROLE, Scheduler
from rung._aws.sqs import SqsQueue
from rung._dev import emulator
from rung._dev.api import ApiServer
from rung._dev.esm import EventSourcePoller
from rung._dev.logagent import LogAgent
from rung._dev.pool import WorkerProcess
from rung._dev.printer import EventPrinter
from rung._dev.versions import SKIP_DIRS, DevVersions, Versions
from rung._engine.schedules import LocalScheduler
from rung._util.clock import SystemClock, iso
from rung.app import App
from rung.client import Client
from rung.errors import InvalidConfig

log = logging.getLogger("rung.dev")
REGION = "us-east-1"
#: What a worker process may take: about 100 MB resident (Python, boto3, pydantic,
#: Powertools, the task code), and room for what its tasks hold.
WORKER_MEMORY = 256 * 1024 * 1024


@dataclass(frozen=True)
class WorkerCount:
    """How many worker processes an event source gets, and what decided it."""

    count: int
    reason: str  # "2 CPU(s)", "--workers", "the event source's MaximumConcurrency 10", ...

    def __str__(self) -> str:
        return f"{self.count} for {self.reason}"


def worker_count(maximum: int, requested: int | None) -> WorkerCount:
    """How many worker processes `rung dev` starts for an event source whose
    MaximumConcurrency is ``maximum``: ``--workers`` (``requested``) up to that, else
    ``workers_for`` this machine."""
    if requested:
        if requested > maximum:
            return WorkerCount(
                maximum,
                f"the event source's MaximumConcurrency {maximum} (--workers {requested})",
            )
        return WorkerCount(requested, "--workers")
    return workers_for(maximum, _usable_cpus(), _available_memory())


def workers_for(maximum: int, cpus: int, memory: int | None) -> WorkerCount:
    """One worker process per CPU (at least two, so that one blocked task does not stop
    the rest), no more than ``memory`` (bytes available; None: unknown) holds at
    ``WORKER_MEMORY`` each, and never above the event source's MaximumConcurrency."""
    chosen = WorkerCount(max(2, cpus), f"{cpus} CPU(s)" + (" (at least 2)" if cpus < 2 else ""))
    if memory is not None and memory // WORKER_MEMORY < chosen.count:
        chosen = WorkerCount(
            max(1, memory // WORKER_MEMORY),
            f"{memory / 1024**3:.1f} GiB of available memory at "
            f"{WORKER_MEMORY // 1024**2} MiB each",
        )
    if maximum < chosen.count:
        chosen = WorkerCount(max(1, maximum), f"the event source's MaximumConcurrency {maximum}")
    return chosen


def _usable_cpus() -> int:
    """CPUs this process may run on: its affinity, and a cgroup v2 quota if it has one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    return cpus


def _available_memory() -> int | None:
    """Bytes of memory available for new processes (Linux), else None."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


@dataclass
class DevOptions:
    """What `rung dev` is asked to run (the CLI's options)."""

    app: str  # module:attr of the rung.App
    #: None: ``code_root/template.yaml`` if there is one (rung's checkout), else the
    #: template the rung package ships (a project of your own)
    template: Path | None = None
    host: str = "127.0.0.1"
    port: int = 4599
    api_port: int = 0  # the HTTP API's port on ``host`` (0: a free one; docs/http.md)
    endpoint_url: str | None = None  # an emulator already running (LocalStack); else embedded
    stack_name: str | None = None  # default rung-<app name>
    #: worker processes, at most the event source's MaximumConcurrency; None:
    #: ``worker_count`` (what this machine can run)
    workers: int | None = None
    function_timeout: int = 60  # the template's FunctionTimeout for local runs
    #: overrides RUNG_LEASE_SECONDS (30 on AWS): how soon a crashed attempt is retried
    #: (the heartbeat keeps a live one's lease; docs/retries.md). None: the template's
    lease_seconds: int | None = 10
    max_receive_count: int | None = None
    reconcile_every: float = 10.0  # seconds between runs of scheduled functions
    reconcile_grace: int = 60  # the reconciler's grace (template: ReconcileGraceSeconds)
    reload: bool = False
    print_events: bool = True
    state_dir: Path = Path(".rung")
    parameters: dict[str, str] = field(default_factory=dict)
    worker_logs: bool = False  # worker stderr to the console instead of .rung/logs
    code_root: Path = field(default_factory=Path.cwd)  # where the handlers and tasks live


class DevStack:
    """Everything `rung dev` runs, as a context manager (the tests use it directly)."""

    def __init__(self, options: DevOptions, emit: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.emit = emit or (lambda line: print(line, flush=True))
        self.app = load_app(options.app, options.code_root)
        self.stack_name = options.stack_name or f"rung-{self.app.name}"
        self.crashes: list[tuple[str, str, list[str]]] = []
        #: when each of ``crashes`` was seen (epoch seconds): recovery is measured from it
        self.crash_times: list[float] = []
        self._pollers: list[EventSourcePoller] = []
        self._workers: list[WorkerProcess] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._generation = 0
        self._emulator: emulator.EmulatorProcess | None = None
        self._printer: EventPrinter | None = None
        self._logs: list[IO[bytes]] = []
        #: each event source's worker count and its reason, for the "ready" line
        self._worker_counts: list[tuple[str, WorkerCount]] = []
        self._log_agent: LogAgent | None = None
        #: the versions of the function the queue feeds (docs/versioning.md); None:
        #: runs are not pinned (the emulator's Lambda API failed)
        self.versions: Versions | None = None
        #: the HTTP API and token callbacks (``api.url``; docs/http.md)
        self.api: ApiServer | None = None

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> DevStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        o = self.options
        if o.endpoint_url:
            self.endpoint_url = o.endpoint_url.rstrip("/")
        else:
            self._emulator = emulator.ensure(o.state_dir, o.host, o.port)
            self.endpoint_url = self._emulator.endpoint_url
            how = "adopted the running" if self._emulator.adopted else "started the"
            self.emit(f"rung dev: {how} embedded AWS emulator at {self.endpoint_url}")
        self.parameters = {
            "RungApp": o.app,
            "FunctionTimeout": str(o.function_timeout),
            "ReconcileGraceSeconds": str(o.reconcile_grace),
            **({"MaxReceiveCount": str(o.max_receive_count)} if o.max_receive_count else {}),
            **o.parameters,
        }
        template = cloudformation.load_template(self._template())
        cfn = cloudformation.translate(template, self.parameters, REGION)
        client = sessions.client("cloudformation", self.endpoint_url, REGION)
        self.stack = cloudformation.deploy(
            client, self.stack_name, cloudformation.data_plane(cfn), self.parameters
        )
        self.emit(
            f"rung dev: stack {self.stack_name} is up (table {self.stack.outputs.get('TableName')})"
        )
        cloudwatch = sessions.client("cloudwatch", self.endpoint_url, REGION)
        for alarm in cloudformation.alarms(cfn, self.stack, self.parameters, REGION):
            cloudwatch.put_metric_alarm(**alarm)  # as CloudFormation would create them
        self.dynamodb = sessions.client("dynamodb", self.endpoint_url, REGION)
        self.sqs = sessions.client("sqs", self.endpoint_url, REGION)
        # How long finished runs are kept: the template's RetentionDays, as the functions
        # (RUNG_RETENTION_DAYS) and the Client see it.
        retention = timedelta(days=int(self.stack.outputs.get("RetentionDays") or 30))
        bucket = self.stack.outputs.get("PayloadBucketName")
        blobs = Blobs(sessions.client("s3", self.endpoint_url, REGION), bucket) if bucket else None
        self.store = DynamoStore(self.dynamodb, self.stack.outputs["TableName"], retention, blobs)
        # Lambda's part: worker output to the functions' log groups (CloudWatch Logs).
        self._log_agent = LogAgent(sessions.client("logs", self.endpoint_url, REGION), cloudwatch)
        self.client = Client(
            self.app,
            table_name=self.stack.outputs["TableName"],
            queue_url=self.stack.outputs["QueueUrl"],
            endpoint_url=self.endpoint_url,
            region=REGION,
            retention=retention,
            schedule_group=self.stack.outputs.get("ScheduleGroupName") or self.stack_name,
            scheduler_role_arn=self.stack.outputs.get("SchedulerRoleArn") or EMULATOR_ROLE,
            bucket=bucket,
        )
        self._start_scheduler()
        self.api = ApiServer(self.client, o.host, o.api_port, REGION)
        self.api.start()
        self.emit(
            f"rung dev: HTTP API at {self.api.url} (SigV4-signed, key pair test/test); token "
            f"URLs at {self.api.callback_url} (docs/http.md)"
        )
        self.functions = [
            self._entry_point(spec)
            for spec in cloudformation.functions(cfn, self.stack, self.parameters, REGION)
        ]
        (o.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        for spec in self.functions:
            if spec.event_sources and self.versions is None:
                self.versions = self._versions(spec)
            for source in spec.event_sources:
                self._start_event_source(spec, source)
            for expression in spec.schedules:
                self._start_schedule(spec, expression)
        if o.print_events:
            self._printer = EventPrinter(self.store, self.emit, since=SystemClock().now())
            self._printer.start()
        if o.reload:
            self._spawn(self._watch_code, "rung-reload")
        self.emit(
            f"rung dev: ready; {sum(len(p.workers) for p in self._pollers)} worker "
            f"process(es) ({self._workers_why()}); Ctrl-C stops"
        )

    def _workers_why(self) -> str:
        if not self._worker_counts:
            return "no event source"
        why = "; ".join(f"{source}: {count}" for source, count in self._worker_counts)
        return why if self.options.workers else f"{why}; --workers N to change"

    def stop(self) -> None:
        self._stopping.set()
        for poller in self._pollers:
            poller.stopping.set()
        for poller in self._pollers:
            poller.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        for worker in self._workers:
            worker.stop()
        if self.versions is not None:
            self.versions.stop()
        if self._log_agent is not None:
            self._log_agent.stop()  # the workers' last lines, before the emulator goes
            self._log_agent = None
        if self._printer is not None:
            with contextlib.suppress(Exception):
                self._printer.poll(everything=True)  # the last events before the lights go out
            self._printer.stop()
        if self.api is not None:
            self.api.stop()
            self.api = None
        for handle in self._logs:
            handle.close()
        if self._emulator is not None:
            emulator.stop(self.options.state_dir)
            self._emulator = None

    def detach(self) -> None:
        """Stop the workers but leave the emulator running (as a crash of rung dev would)."""
        self._emulator = None
        self.stop()

    # -- the template and its handlers -----------------------------------------------

    def _template(self) -> Path:
        """--template; else the code root's template.yaml; else the one rung ships."""
        o = self.options
        if o.template is not None:
            return o.template
        own = o.code_root / "template.yaml"
        if own.is_file():
            return own
        packaged = _lambda.template_path()
        self.emit(f"rung dev: no template.yaml in {o.code_root}; using rung's own ({packaged})")
        return packaged

    def _entry_point(self, spec: cloudformation.FunctionSpec) -> cloudformation.FunctionSpec:
        """The handler as the code root has it (rung's checkout has handler/), else the
        same handler from the rung package: a project needs no handler/ of its own."""
        module, _, function = spec.handler.rpartition(".")
        packaged = _lambda.ENTRY_POINTS.get(module)
        if packaged is None or (self.options.code_root / f"{module}.py").is_file():
            return spec
        return dataclasses.replace(spec, handler=f"{packaged}.{function}")

    # -- functions -------------------------------------------------------------------

    def _env(self, spec: cloudformation.FunctionSpec) -> dict[str, str]:
        env = dict(os.environ)
        env.update(spec.environment)
        env.update(
            {
                "AWS_ENDPOINT_URL": self.endpoint_url,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_LAMBDA_FUNCTION_NAME": spec.name or f"{self.stack_name}-{spec.logical_id}",
                "AWS_LAMBDA_FUNCTION_TIMEOUT": str(spec.timeout),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(self.options.code_root), env.get("PYTHONPATH", "")])
                ),
            }
        )
        # Lambda's Python runtime writes print() output at once; so do the workers, or a
        # kill -9 would take the lines still in a buffer with it (rung._dev.logagent).
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("AWS_ACCESS_KEY_ID", "test")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        if self.options.lease_seconds:
            env["RUNG_LEASE_SECONDS"] = str(self.options.lease_seconds)
        if self.api is not None:  # Token.url points here (on AWS: the callback function)
            env["RUNG_CALLBACK_URL"] = self.api.callback_url
        return env

    def _log_for(self, name: str) -> IO[bytes] | None:
        if self.options.worker_logs:
            return None
        handle = (self.options.state_dir / "logs" / f"{name}.log").open("ab")
        self._logs.append(handle)
        return handle

    def _start_event_source(
        self, spec: cloudformation.FunctionSpec, source: cloudformation.EventSource
    ) -> None:
        chosen = worker_count(source.maximum_concurrency or 2, self.options.workers)
        label = spec.logical_id
        if len(spec.event_sources) > 1:
            label = f"{label} ({source.queue})"
        self._worker_counts.append((label, chosen))
        versions = self.versions if self.versions and self.versions.spec is spec else None
        env = versions.env_of(versions.registry.latest) if versions else self._env(spec)
        workers = []
        for n in range(chosen.count):
            name = f"{spec.logical_id}-{n}"
            worker = WorkerProcess(
                spec, env, self.options.code_root, self._log_for(name), name, self._log_agent
            )
            worker.spawn(self._generation)  # all at once: each takes a second to import
            workers.append(worker)
            self._workers.append(worker)
        for worker in workers:
            worker.wait_ready()
        queue_url = self.stack.physical_ids.get(source.queue) or self.stack.outputs["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        lease = int(spec.environment.get("RUNG_LEASE_SECONDS", 30))
        if self.options.lease_seconds:
            lease = self.options.lease_seconds
        poller = EventSourcePoller(
            self.sqs,
            queue_url,
            queue_arn,
            source,
            workers,
            spec.timeout,
            lease,
            REGION,
            on_crash=self._on_crash,
            generation=lambda: self._generation,
        )
        poller.start()
        self._pollers.append(poller)

    def _start_schedule(self, spec: cloudformation.FunctionSpec, expression: str) -> None:
        name = f"{spec.logical_id}-schedule"
        worker = WorkerProcess(
            spec,
            self._env(spec),
            self.options.code_root,
            self._log_for(name),
            name,
            self._log_agent,
        )
        worker.start(self._generation)
        self._workers.append(worker)

        def tick() -> None:
            while not self._stopping.wait(self.options.reconcile_every):
                if worker.generation != self._generation:
                    worker.stop()
                    worker.start(self._generation)
                event = {
                    "version": "0",
                    "id": f"local-{time.time_ns()}",
                    "detail-type": "Scheduled Event",
                    "source": "aws.events",
                    "time": iso(SystemClock().now()),
                    "region": REGION,
                    "resources": [],
                    "detail": {},
                }
                outcome = worker.invoke(event, spec.timeout)
                if outcome.died is not None:
                    self._on_crash(worker, outcome.died, [])
                    if not self._stopping.is_set():
                        worker.start(self._generation)
                elif outcome.error is not None:
                    log.error("%s failed: %s", spec.logical_id, outcome.error.strip())

        self._spawn(tick, name)
        self.emit(
            f"rung dev: {spec.logical_id} runs every {self.options.reconcile_every:g}s "
            f"(on AWS: {expression})"
        )

    def _start_scheduler(self) -> None:
        """EventBridge Scheduler's part: the app's declared schedules deployed, and every
        schedule of the stack's group fired as its times pass (checked every second)."""
        outputs = self.stack.outputs
        queue = SqsQueue(self.sqs, outputs["QueueUrl"])
        scheduler = Scheduler(
            sessions.client("scheduler", self.endpoint_url, REGION),
            outputs.get("ScheduleGroupName") or self.stack_name,
            queue.arn,
            outputs.get("SchedulerRoleArn") or EMULATOR_ROLE,
        )
        scheduler.ensure_group()  # as CloudFormation would (the emulator's makes none)
        changed = self.client.deploy_schedules()
        local = LocalScheduler(scheduler, queue, SystemClock())

        def fire() -> None:
            while not self._stopping.wait(1.0):
                try:
                    local.tick()
                except Exception:  # the emulator stopping, or a bug: logged, next tick
                    log.exception("rung dev: the local scheduler failed; trying again")

        self._spawn(fire, "rung-scheduler")
        self.emit(
            f"rung dev: schedules fire here as EventBridge Scheduler would ({len(changed)} "
            "declared by the app deployed; rung schedules list)"
        )

    def _on_crash(self, worker: WorkerProcess, how: str, bodies: list[str]) -> None:
        runs = ", ".join(b[:80] for b in bodies) or "no message"
        self.crash_times.append(time.time())
        self.crashes.append((worker.name, how, bodies))
        self.emit(
            f"rung dev: worker {worker.name} (pid {worker.pid}) {how} while handling "
            f"{runs}; its runs are retried when their leases expire (within --lease seconds)"
        )

    # -- code reload -----------------------------------------------------------------

    def _watch_code(self) -> None:
        snapshot = _code_snapshot(self.options.code_root)
        while not self._stopping.wait(1.0):
            current = _code_snapshot(self.options.code_root)
            if current != snapshot:
                changed = sorted(set(current.items()) ^ set(snapshot.items()))
                snapshot = current
                line = f"rung dev: {changed[0][0]} changed; restarting worker processes"
                if self.versions is not None:
                    try:
                        line += self._new_version()
                    except Exception as exc:  # the workers restart on the version they had
                        log.exception("could not publish the changed code")
                        line += f"; could not publish it as a new version ({exc}): not picked up"
                self._generation += 1
                self.emit(line)

    # -- code versions (docs/versioning.md) ------------------------------------------

    def _versions(self, spec: cloudformation.FunctionSpec) -> Versions | None:
        """The worker's versions: the code now published as the latest, its snapshot
        imported by the queue's worker processes. None (runs not pinned, as before)
        when the emulator has no usable Lambda API."""
        o = self.options
        registry = DevVersions(
            o.code_root,
            o.state_dir,
            sessions.client("lambda", self.endpoint_url, REGION),
            sessions.client("iam", self.endpoint_url, REGION),
            spec.name or f"{self.stack_name}-{spec.logical_id}",
        )
        try:
            version, _ = registry.publish()
        except Exception as exc:
            self.emit(f"rung dev: runs are not pinned to code versions here: {exc}")
            return None
        versions = Versions(
            registry,
            spec,
            lambda v, code: self._versioned_env(spec, v, code),
            o.code_root,
            self._log_for,
            self._log_agent,
            max(1, o.workers or 2),
            self._on_crash,
            o.host,
        )
        self.emit(f"rung dev: new runs start on version {version} of {registry.function}")
        self._spawn(self._retire_versions, "rung-versions")
        return versions

    def _versioned_env(
        self, spec: cloudformation.FunctionSpec, version: str, code: Path
    ) -> dict[str, str]:
        assert self.versions is not None or version
        env = self._env(spec)
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_VERSION": version,
                "RUNG_CODE_DIR": str(code),  # first on the path (rung._dev.runtime)
                "PYTHONPATH": os.pathsep.join(filter(None, [str(code), env["PYTHONPATH"]])),
                # The hand-over's Invoke goes to rung dev (rung._dev.versions.LocalLambda);
                # a lost one comes back sooner than on AWS.
                "RUNG_HAND_OVER_SECONDS": "30",
            }
        )
        if self.versions is not None:
            env["AWS_ENDPOINT_URL_LAMBDA"] = self.versions.local_lambda.url
        return env

    def _new_version(self) -> str:
        """Publish the changed code; the queue's workers restart on it. What to say."""
        assert self.versions is not None
        before = self.versions.registry.latest
        version, new = self.versions.registry.publish()
        if not new:
            return f" (the code is version {version}'s)"
        env = self.versions.env_of(version)
        for worker in self._workers:
            if worker.spec is self.versions.spec:
                worker.env = env
        staying = self._in_flight().get(before, 0)
        return f"; new runs start on version {version}, {staying} run(s) stay on version {before}"

    def _in_flight(self) -> dict[str | None, int]:
        counts = self.store.runs_in_flight()
        return {version: sum(by.values()) for version, by in counts.items()}

    def _retire_versions(self) -> None:
        while not self._stopping.wait(5.0):
            if self.versions is None:
                continue
            try:
                for version in self.versions.retire_idle(self._in_flight):
                    self.emit(f"rung dev: version {version} has no runs left; its workers stopped")
                for digest in self.versions.registry.forget_pruned():
                    self.emit(f"rung dev: removed the snapshot of a pruned version ({digest})")
            except Exception:
                log.exception("could not retire idle versions")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, daemon=True, name=name)
        thread.start()
        self._threads.append(thread)

    # -- introspection (tests, `rung dev` status) ------------------------------------

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    def idle(self) -> bool:
        handed = self.versions.busy() if self.versions is not None else 0
        return handed == 0 and all(p.busy == 0 for p in self._pollers)

    def wait(self, run_id: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            run = self.client.get_run(run_id)
            if run.status.is_terminal:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout:g}s")
            time.sleep(0.05)


def _code_snapshot(root: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    found[str(path.relative_to(root))] = path.stat().st_mtime
    return found


def load_app(spec: str, root: Path | None = None) -> App:
    """Import ``module:attr`` from ``root`` (the current directory); a clear error if not."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidConfig(f"--app must be module:attr (e.g. examples.orders:app), got {spec!r}")
    root = root or Path.cwd()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidConfig(f"--app {spec}: cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise InvalidConfig(f"--app {spec}: {module_name}.{attr} is not a rung.App")
    return app


__all__ = ["DevOptions", "DevStack", "WorkerCount", "load_app", "worker_count", "workers_for"]
