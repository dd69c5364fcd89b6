"""What Lambda's log agent does, for `rung dev`'s worker processes.

On AWS, everything a function writes to stdout and stderr reaches CloudWatch Logs:
the function's log group, one stream per execution environment. ``rung dev`` plays
that part in the supervising process, not in the worker: each worker process's
stderr (the handler's prints and log lines; ``rung._dev.runtime`` points stdout there
too) is a pipe read by a thread of ``rung dev``, which passes every byte on to where
it went before (``.rung/logs/<worker>.log``, or the console with ``worker_logs``) and
ships each line to the process's own stream (``rung._aws.logs.LogStream``).

Lines are shipped at least every ``FLUSH_EVERY`` seconds and at once when the process's
output ends, so a worker killed with kill -9 loses none of the lines it had written:
they are in the pipe, and the pipe outlives the process. A process started again
(after a crash, or on a code reload) gets a new stream, as a new execution
environment does on Lambda. Each line is one event, stamped when ``rung dev`` reads
it; a line that is not JSON is shipped as it is. A line in CloudWatch's embedded metric
format (the worker's metrics) also becomes metrics in the emulator's CloudWatch, as
CloudWatch extracts them from a Lambda's log on AWS.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import IO, Any

from rung._aws.cloudwatch import is_emf, put_emf
from rung._aws.logs import LogStream, stream_name
from rung._util.clock import SystemClock

#: Seconds between two shipments of what the workers wrote.
FLUSH_EVERY = 0.5


class LogAgent:
    """Ships worker processes' output to CloudWatch Logs (one ``StreamPump`` each)."""

    def __init__(self, client: Any, cloudwatch: Any = None) -> None:
        self.client = client
        #: where the EMF lines' metrics go (CloudWatch extracts them on AWS); None: nowhere
        self.cloudwatch = cloudwatch
        self._streams: set[LogStream] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, daemon=True, name="rung-logs")
        self._thread.start()

    def new_stream(self, group: str) -> LogStream:
        """A new stream of ``group`` (named as Lambda names them), for a new process."""
        return LogStream(self.client, group, stream_name(SystemClock().now()))

    def pump(self, pipe: IO[bytes], stream: LogStream, tee: IO[bytes] | None) -> StreamPump:
        """Start reading ``pipe`` (a new process's stderr) into ``stream``; ``tee``: where
        its bytes also go (None: this process's stderr, the console)."""
        with self._lock:
            self._streams.add(stream)
        return StreamPump(self, pipe, stream, tee)

    def _done(self, stream: LogStream) -> None:
        stream.flush()
        with self._lock:
            self._streams.discard(stream)

    def _flush_loop(self) -> None:
        while not self._stopping.wait(FLUSH_EVERY):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.flush()

    def stop(self) -> None:
        """Ship what is left; the pumps of processes still running stop shipping."""
        self._stopping.set()
        self._thread.join(timeout=10)
        self.flush()


class StreamPump:
    """One worker process's stderr: read on a thread until it ends, teed and shipped."""

    def __init__(
        self, agent: LogAgent, pipe: IO[bytes], stream: LogStream, tee: IO[bytes] | None
    ) -> None:
        self.agent = agent
        self.pipe = pipe
        self.stream = stream
        self.tee = tee
        self._last_ms = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="rung-log-pump")
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        """Wait until the process's output has ended and been shipped."""
        self._thread.join(timeout)

    def _run(self) -> None:
        fd = self.pipe.fileno()
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break  # EOF: the process (and whatever inherited its stderr) is gone
                self._tee(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._ship(line)
            self._ship(pending)  # a last line without its newline
        finally:
            self.agent._done(self.stream)
            with contextlib.suppress(OSError):
                self.pipe.close()

    def _tee(self, chunk: bytes) -> None:
        try:
            if self.tee is None:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(2, view) :]
            else:
                self.tee.write(chunk)
                self.tee.flush()
        except (OSError, ValueError):  # the file was closed (rung dev is stopping)
            pass

    def _ship(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return  # CloudWatch Logs takes no empty events
        # Stamped when read; never before the line above it, so the stream keeps its order.
        self._last_ms = max(self._last_ms, time.time_ns() // 1_000_000)
        self.stream.write(self._last_ms, text)
        if self.agent.cloudwatch is not None and (document := is_emf(text)) is not None:
            put_emf(self.agent.cloudwatch, document)  # as CloudWatch extracts EMF lines
