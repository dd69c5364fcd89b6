"""The embedded AWS emulator of ``rung dev``, as a process of its own.

It holds the state (moto keeps it in memory), so it lives apart from ``rung dev``:
when ``rung dev`` is killed outright, the emulator and every run in it survive,
and the next ``rung dev`` adopts it. A clean stop (Ctrl-C) stops it too. Its pid
and port are kept in ``.rung/emulator.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rung.errors import RungError


@dataclass(frozen=True)
class EmulatorProcess:
    pid: int
    endpoint_url: str
    adopted: bool  # True when it was already running (a previous rung dev died)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def ensure(state_dir: Path, host: str, port: int, timeout: float = 20.0) -> EmulatorProcess:
    """Adopt the emulator recorded in ``state_dir`` if it is alive, else start one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    record = state_dir / "emulator.json"
    if record.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            data = json.loads(record.read_text())
            if _alive(int(data["pid"])) and _healthy(data["endpoint_url"]):
                return EmulatorProcess(int(data["pid"]), data["endpoint_url"], adopted=True)
    endpoint = f"http://{host}:{port}"
    if _healthy(endpoint):
        raise RungError(
            f"something else is already listening at {endpoint}; stop it or pick another "
            "port with --port"
        )
    log = (state_dir / "emulator.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "rung._dev.emulator", host, str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # not killed with rung dev's process group: it holds the state
    )
    deadline = time.monotonic() + timeout
    while not _healthy(endpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RungError(
                f"the embedded emulator did not start at {endpoint}; see {state_dir}/emulator.log"
            )
        time.sleep(0.05)
    record.write_text(json.dumps({"pid": process.pid, "endpoint_url": endpoint}))
    return EmulatorProcess(process.pid, endpoint, adopted=False)


def stop(state_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the recorded emulator; True if one was running."""
    record = state_dir / "emulator.json"
    try:
        pid = int(json.loads(record.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    record.unlink(missing_ok=True)
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def _atomic_sqs_receives() -> None:
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

    SQSBackend.receive_message = receive_message  # type: ignore[method-assign]
    SQSBackend.delete_message = delete_message  # type: ignore[method-assign]


def main() -> None:
    from rung.testing._emulator import EmbeddedEmulator

    host, port = sys.argv[1], int(sys.argv[2])
    _atomic_sqs_receives()
    emulator = EmbeddedEmulator(host, port)
    stopping = []

    def on_term(signum: int, frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is rung dev's
    print(f"emulator listening at {emulator.endpoint_url}", flush=True)
    while not stopping:
        time.sleep(0.2)
    emulator.stop()


if __name__ == "__main__":
    main()
