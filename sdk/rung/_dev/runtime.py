"""A local Lambda runtime: one worker process that runs one function's handler.

``rung dev`` starts one of these per concurrent invocation, so a task that
crashes, calls ``os._exit``, segfaults or runs out of memory kills only its own
process. The protocol is JSON lines: invocations on stdin, results on the
process's original stdout; the handler's own prints and logs go to stderr.

    {"id": 7, "event": {...}, "deadline": 1700000000.5}   ->   {"id": 7, "result": {...}}
                                                          or   {"id": 7, "error": "..."}
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any


class LocalContext:
    """What Lambda passes as ``context``, for a local invocation."""

    def __init__(self, function_name: str, deadline: float, request_id: str, memory: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.memory_limit_in_mb = memory
        self.aws_request_id = request_id
        # Where rung dev ships this process's output (rung._dev.logagent), as on Lambda.
        self.log_group_name = os.environ.get(
            "AWS_LAMBDA_LOG_GROUP_NAME", f"/aws/lambda/{function_name}"
        )
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", f"local/{os.getpid()}")
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._deadline - time.time()) * 1000), 0)


def load_handler(spec: str) -> Any:
    """``"handler/worker.lambda_handler"`` -> the function, as Lambda resolves it."""
    path, _, name = spec.rpartition(".")
    module = importlib.import_module(path.replace("/", "."))
    return getattr(module, name)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process if its parent dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the closed stdin ends the loop instead


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space near the function's MemorySize (plus the interpreter's own).

    A task that exhausts it gets a MemoryError in its own process instead of
    dragging the machine into swap or the OOM killer onto rung dev.
    """
    try:
        import resource

        limit = (memory_mb + 1024) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def main() -> int:
    handler_spec, function_name, memory = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _die_with_parent()
    _limit_memory(memory)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # print() and log lines of the handler go to stderr
    # The code of the version this process runs (rung._dev.versions), else the code root.
    sys.path.insert(0, os.environ.get("RUNG_CODE_DIR") or str(Path.cwd()))
    try:
        handler = load_handler(handler_spec)
    except Exception:
        protocol.write(json.dumps({"id": 0, "error": traceback.format_exc()}) + "\n")
        return 1
    protocol.write(json.dumps({"id": 0, "ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        context = LocalContext(
            function_name, float(request["deadline"]), str(request["id"]), memory
        )
        try:
            result = handler(request["event"], context)
            reply = {"id": request["id"], "result": result}
        except Exception:
            reply = {"id": request["id"], "error": traceback.format_exc()}
        protocol.write(json.dumps(reply, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
