"""Worker processes: one function, one process, one invocation at a time."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rung._aws.cloudformation import FunctionSpec
from rung._dev.logagent import LogAgent, StreamPump
from rung.errors import RungError


@dataclass(frozen=True)
class Invocation:
    """How an invocation ended: a result, a handler error, or the process dying."""

    result: Any = None
    error: str | None = None  # the handler raised (Lambda: a function error)
    died: str | None = None  # the process exited or was killed (crash, kill -9, OOM, timeout)


class WorkerProcess:
    """A local Lambda execution environment for one function.

    Its stderr goes to ``log`` (None: the console); with an ``agent``, through a pipe
    that the agent also ships to the function's log group, a new stream each time the
    process starts (``rung._dev.logagent``)."""

    def __init__(
        self,
        spec: FunctionSpec,
        env: dict[str, str],
        cwd: Path,
        log: IO[bytes] | None,
        name: str,
        agent: LogAgent | None = None,
    ) -> None:
        self.spec = spec
        self.env = env
        self.cwd = cwd
        self.log = log
        self.name = name
        self.agent = agent
        self.generation = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._pump: StreamPump | None = None
        self._buffer = b""
        self._next_id = 1

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """Whether its process is up (it may have died while idle, or while starting)."""
        return self._process is not None and self._process.poll() is None

    def start(self, generation: int = 0) -> None:
        self.spawn(generation)
        self.wait_ready()

    def spawn(self, generation: int = 0) -> None:
        """Start the process; ``wait_ready`` waits for its handler to be loaded."""
        self.generation = generation
        self._buffer = b""
        stderr: IO[bytes] | int | None = self.log
        env = self.env
        stream = None
        if self.agent is not None:
            stderr = subprocess.PIPE
            stream = self.agent.new_stream(self.spec.log_group)
            # As Lambda tells a function where its output goes.
            env = {
                **env,
                "AWS_LAMBDA_LOG_GROUP_NAME": stream.group,
                "AWS_LAMBDA_LOG_STREAM_NAME": stream.stream,
            }
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rung._dev.runtime",
                self.spec.handler,
                self.spec.logical_id,
                str(self.spec.memory_mb),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=self.cwd,
        )
        if self.agent is not None and stream is not None:
            assert self._process.stderr is not None  # (stderr=PIPE)
            # The previous process's pump (if any) ends on its own, at its pipe's end.
            self._pump = self.agent.pump(self._process.stderr, stream, self.log)

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self._process is not None
        line = self._read_line(time.monotonic() + timeout)
        reply = json.loads(line) if line else {}
        if "ready" not in reply:
            detail = reply.get("error") or f"exit status {self._process.poll()}"
            self.stop()
            raise RungError(
                f"{self.spec.logical_id}: cannot load handler {self.spec.handler!r}:\n{detail}"
            )

    def invoke(self, event: dict[str, Any], timeout: float) -> Invocation:
        """Run the handler once; the process is killed if it outlives ``timeout``."""
        process = self._process
        if process is None or process.poll() is not None:
            return Invocation(died="the worker process is not running")
        request_id = self._next_id
        self._next_id += 1
        request = {"id": request_id, "event": event, "deadline": time.time() + timeout}
        try:
            assert process.stdin is not None
            process.stdin.write((json.dumps(request) + "\n").encode())
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            return Invocation(died=self._death())
        deadline = time.monotonic() + timeout + 2
        line = self._read_line(deadline)
        if line is None:
            if time.monotonic() >= deadline:  # alive past its deadline: Lambda's timeout
                process.kill()
                process.wait()
                return Invocation(died=f"timed out after {timeout:g}s and was killed")
            return Invocation(died=self._death())  # EOF: the process is exiting
        reply = json.loads(line)
        if "error" in reply:
            return Invocation(error=str(reply["error"]))
        return Invocation(result=reply.get("result"))

    def _death(self) -> str:
        assert self._process is not None
        code = self._process.wait()
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def _read_line(self, deadline: float) -> str | None:
        assert self._process is not None and self._process.stdout is not None
        stream = self._process.stdout
        fd = stream.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(timeout=min(remaining, 0.5)):
                    if remaining <= 0:
                        return None
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None  # EOF: the process died
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def stop(self, grace: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin:
                process.stdin.close()  # the runtime's loop ends at EOF
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
        if self._pump is not None:
            self._pump.join()  # its output has ended: shipped before stop returns
            self._pump = None
