"""Code versions in ``rung dev`` (docs/versioning.md): every run finishes on the code it
started on, across reloads and restarts, as on AWS.

- **A version is a snapshot** of the code root's Python files, copied to
  ``.rung/versions/<content hash>/`` and published as a version of the worker function
  in the emulator's Lambda (``Description`` = the hash), with the alias ``live`` on the
  latest, as ``AutoPublishAlias`` does on AWS. ``rung versions list|prune`` work on
  ``rung dev`` as on AWS.
- **Worker processes import a version's snapshot** (``RUNG_CODE_DIR``, first on their
  path) and run as that version (``AWS_LAMBDA_FUNCTION_VERSION``). The queue's event
  source feeds the latest version's processes; a reload publishes a new version and
  restarts them on it.
- **A message for a run of an older version** is handed over by the Lambda handler's
  own code (``rung._lambda.handover``): its asynchronous ``Invoke`` reaches
  ``LocalLambda``, rung dev's stand-in for Lambda's Invoke API
  (``AWS_ENDPOINT_URL_LAMBDA``), which runs the event on that version's own processes,
  started when first needed and stopped once none of its runs is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import queue
import re
import shutil
import threading
import urllib.parse
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rung._aws.cloudformation import FunctionSpec
from rung._aws.functions import ALIAS
from rung._dev.logagent import LogAgent
from rung._dev.pool import WorkerProcess

log = logging.getLogger("rung.dev")

#: Directories never part of a snapshot (rung dev's own state, tools, packages).
SKIP_DIRS = {
    ".venv",
    ".git",
    ".rung",
    ".localstack",
    "__pycache__",
    "node_modules",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "build",
    "dist",
}


def python_files(root: Path) -> list[Path]:
    """The code root's Python files, as a snapshot holds them (sorted, relative)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        found.extend(
            (Path(dirpath) / name).relative_to(root) for name in filenames if name.endswith(".py")
        )
    return sorted(found)


def code_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for relative in files:
        with contextlib.suppress(OSError):
            data = (root / relative).read_bytes()
            digest.update(f"{relative}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()[:16]


class DevVersions:
    """The worker function's versions in the emulator's Lambda, and their snapshots."""

    def __init__(
        self, root: Path, state_dir: Path, lambda_api: Any, iam_api: Any, function: str
    ) -> None:
        self.root = root
        self.dir = state_dir / "versions"
        self.api = lambda_api
        self.iam = iam_api
        self.function = function
        self.latest = ""
        # Publishing and forgetting pruned snapshots one at a time: a snapshot being
        # published is in no version's Description yet.
        self._lock = threading.Lock()

    def publish(self) -> tuple[str, bool]:
        """Snapshot the code and publish it as the latest version, unless the latest
        holds this code already. Returns the version and whether it is new."""
        with self._lock:
            return self._publish()

    def _publish(self) -> tuple[str, bool]:
        files = python_files(self.root)
        digest = code_hash(self.root, files)
        snapshot = self.dir / digest
        if not snapshot.is_dir():
            partial = self.dir / f".{digest}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            for relative in files:
                (partial / relative).parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copy2(self.root / relative, partial / relative)
            partial.rename(snapshot)  # whole or not at all
        current = self._alias_version()
        if current is not None and self.description(current) == digest:
            self.latest = current
            return current, False
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as bundle:
            bundle.writestr("rung-version.txt", digest)
        if not self._exists(None):
            role = self._role()
            out = self.api.create_function(
                FunctionName=self.function,
                Runtime="python3.12",
                Role=role,
                Handler="handler/worker.lambda_handler",
                Code={"ZipFile": code.getvalue()},
                Description=digest,
                Publish=True,
            )
        else:
            self.api.update_function_configuration(FunctionName=self.function, Description=digest)
            self.api.update_function_code(FunctionName=self.function, ZipFile=code.getvalue())
            out = self.api.publish_version(FunctionName=self.function, Description=digest)
        version = str(out["Version"])
        if current is None:
            self.api.create_alias(FunctionName=self.function, Name=ALIAS, FunctionVersion=version)
        else:
            self.api.update_alias(FunctionName=self.function, Name=ALIAS, FunctionVersion=version)
        self.latest = version
        return version, True

    def forget_pruned(self) -> list[str]:
        """Delete the snapshots of versions that no longer exist (``rung versions
        prune``); returns their hashes."""
        with self._lock:
            pages = self.api.get_paginator("list_versions_by_function").paginate(
                FunctionName=self.function
            )
            kept = {v.get("Description") for page in pages for v in page.get("Versions", [])}
            gone = [d for d in self.dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
            gone = [d for d in gone if d.name not in kept]
            for directory in gone:
                shutil.rmtree(directory, ignore_errors=True)
            return [d.name for d in gone]

    def snapshot(self, version: str) -> Path | None:
        """The code of a version that exists (its snapshot on disk), else None."""
        digest = self.description(version)
        if digest is None or not (self.dir / digest).is_dir():
            return None
        return self.dir / digest

    def description(self, version: str) -> str | None:
        try:
            out = self.api.get_function_configuration(FunctionName=self.function, Qualifier=version)
        except self.api.exceptions.ResourceNotFoundException:
            return None
        return str(out.get("Description") or "") or None

    def _exists(self, version: str | None) -> bool:
        kwargs = {"Qualifier": version} if version else {}
        try:
            self.api.get_function(FunctionName=self.function, **kwargs)
        except self.api.exceptions.ResourceNotFoundException:
            return False
        return True

    def _alias_version(self) -> str | None:
        try:
            alias = self.api.get_alias(FunctionName=self.function, Name=ALIAS)
        except self.api.exceptions.ResourceNotFoundException:
            return None
        return str(alias["FunctionVersion"])

    def _role(self) -> str:
        name = f"{self.function}-role"[:64]
        try:
            return str(self.iam.get_role(RoleName=name)["Role"]["Arn"])
        except self.iam.exceptions.NoSuchEntityException:
            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
            made = self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(policy))
            return str(made["Role"]["Arn"])


class VersionPool:
    """An older version's worker processes: they run the events handed to it, one each
    at a time, started when needed (at most ``size``).

    Each process is started by, and belongs to, a thread of its own that lives as long
    as its pool's round: a process dies with the thread that started it
    (``rung._dev.runtime``'s parent-death signal), so never from a short-lived one. A
    round ends when the pool is retired (``stop_if_idle``); an event after that starts
    a new round, with threads and a queue of its own.
    """

    def __init__(
        self,
        version: str,
        make: Callable[[str], WorkerProcess],
        size: int,
        timeout: int,
        on_crash: Callable[[WorkerProcess, str, list[str]], None],
    ) -> None:
        self.version = version
        self._make = make
        self._size = size
        self._timeout = timeout
        self._on_crash = on_crash
        self._lock = threading.Lock()
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.busy = 0  # events submitted and not yet done

    def submit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.busy += 1
            self._threads = [t for t in self._threads if t.is_alive()]
            if self.busy > len(self._threads) and len(self._threads) < self._size:
                name = f"v{self.version}-{len(self._threads)}"
                thread = threading.Thread(
                    target=self._serve, args=(name, self._events), daemon=True, name=f"rung-{name}"
                )
                thread.start()
                self._threads.append(thread)
            self._events.put(event)

    def _serve(self, name: str, events: queue.Queue[dict[str, Any] | None]) -> None:
        try:
            worker = self._make(name)
        except Exception:  # its snapshot went away: the events' messages come back
            log.exception("version %s: cannot start a worker process", self.version)
            self._drain(events)
            return
        try:
            while (event := events.get()) is not None:
                try:
                    self._run(worker, event)
                except Exception:
                    log.exception("version %s: an invocation failed to run", self.version)
                finally:
                    with self._lock:
                        self.busy -= 1
        finally:
            worker.stop()

    def _drain(self, events: queue.Queue[dict[str, Any] | None]) -> None:
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                return
            if event is not None:
                with self._lock:
                    self.busy -= 1

    def _run(self, worker: WorkerProcess, event: dict[str, Any]) -> None:
        if not worker.running:
            worker.start()
        outcome = worker.invoke(event, self._timeout)
        if outcome.died is not None:
            bodies = [r.get("body", "") for r in event.get("Records", [])]
            self._on_crash(worker, outcome.died, bodies)
        elif outcome.error is not None:
            log.error("version %s failed: %s", self.version, outcome.error.strip())

    @property
    def running(self) -> bool:
        with self._lock:
            return any(t.is_alive() for t in self._threads)

    def stop_if_idle(self) -> bool:
        """End the round if no event is in hand or waiting; whether it did."""
        return self.stop(only_idle=True)

    def stop(self, only_idle: bool = False) -> bool:
        """End the round: its processes stop once their invocations in hand are done."""
        with self._lock:
            if only_idle and self.busy:
                return False
            threads, events = self._threads, self._events
            self._threads, self._events = [], queue.Queue()
        for _ in threads:
            events.put(None)
        for thread in threads:
            thread.join(30)
        return True


class LocalLambda:
    """rung dev's stand-in for Lambda's ``Invoke`` API, for the hand-over of a message to
    an older version: an asynchronous invoke of ``<function>:<version>`` is answered 202
    and run on that version's processes; one of a version that does not exist (pruned)
    is answered 404 ``ResourceNotFoundException``, as Lambda answers it."""

    _PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")

    def __init__(self, host: str, dispatch: Callable[[str, str, dict[str, Any]], bool]) -> None:
        self._dispatch = dispatch
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                owner._post(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("local lambda: " + format, *args)

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="rung-local-lambda"
        )
        self._thread.start()

    def _post(self, request: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlparse(request.path)
        match = self._PATH.match(parsed.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length)
        if match is None:
            return self._answer(request, 404, "ResourceNotFoundException", "no such operation")
        name, _, qualifier = urllib.parse.unquote(match["name"]).partition(":")
        qualifier = qualifier or urllib.parse.parse_qs(parsed.query).get("Qualifier", [""])[0]
        if request.headers.get("X-Amz-Invocation-Type") != "Event":
            return self._answer(
                request, 400, "InvalidParameterValueException", "rung dev runs only Event"
            )
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            return self._answer(request, 400, "InvalidRequestContentException", "not JSON")
        if not self._dispatch(name, qualifier, event):
            return self._answer(
                request, 404, "ResourceNotFoundException", f"Function not found: {name}:{qualifier}"
            )
        request.send_response(202)
        request.send_header("Content-Length", "0")
        request.end_headers()
        return None

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        data = json.dumps({"Type": "User", "message": message}).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("x-amzn-ErrorType", code)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Versions:
    """What DevStack runs for the versions of one function with an event source: the
    registry (``DevVersions``), the older versions' pools and the local Invoke API."""

    def __init__(
        self,
        registry: DevVersions,
        spec: FunctionSpec,
        env: Callable[[str, Path], dict[str, str]],
        cwd: Path,
        log_for: Callable[[str], Any],
        agent: LogAgent | None,
        size: int,
        on_crash: Callable[[WorkerProcess, str, list[str]], None],
        host: str,
    ) -> None:
        self.registry = registry
        self.spec = spec
        self._env = env
        self._cwd = cwd
        self._log_for = log_for
        self._agent = agent
        self._size = size
        self._on_crash = on_crash
        self._pools: dict[str, VersionPool] = {}
        self._lock = threading.Lock()
        self.local_lambda = LocalLambda(host, self._dispatch)

    def env_of(self, version: str) -> dict[str, str]:
        snapshot = self.registry.snapshot(version)
        assert snapshot is not None, version
        return self._env(version, snapshot)

    def _dispatch(self, function: str, version: str, event: dict[str, Any]) -> bool:
        if function != self.registry.function or not version.isdigit():
            return False
        if self.registry.snapshot(version) is None:
            return False  # pruned (or its snapshot is gone): the run fails, as on AWS
        with self._lock:
            pool = self._pools.get(version)
            if pool is None:
                pool = self._pools[version] = VersionPool(
                    version, self._make(version), self._size, self.spec.timeout, self._on_crash
                )
        pool.submit(event)
        return True

    def _make(self, version: str) -> Callable[[str], WorkerProcess]:
        def make(name: str) -> WorkerProcess:
            worker_name = f"{self.spec.logical_id}-{name}"
            return WorkerProcess(
                self.spec,
                self.env_of(version),
                self._cwd,
                self._log_for(worker_name),
                worker_name,
                self._agent,
            )

        return make

    def retire_idle(self, in_flight: Callable[[], dict[str | None, int]]) -> list[str]:
        """Stop the processes of older versions that no run needs any more."""
        with self._lock:
            candidates = [
                p for v, p in self._pools.items() if v != self.registry.latest and p.running
            ]
        if not candidates:
            return []
        counts = in_flight()
        return [
            pool.version
            for pool in candidates
            if not counts.get(pool.version) and pool.stop_if_idle()
        ]

    def busy(self) -> int:
        with self._lock:
            return sum(p.busy for p in self._pools.values())

    def stop(self) -> None:
        self.local_lambda.stop()
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.stop()
