"""The embedded AWS emulator of ``rung dev``, as a process of its own.

It holds the state (moto keeps it in memory), so it lives apart from ``rung dev``:
when ``rung dev`` is killed outright, the emulator and every run in it survive,
and the next ``rung dev`` adopts it. A clean stop (Ctrl-C) stops it too. Its pid
and port are kept in ``.rung/emulator.json``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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


def _in_use(host: str, port: int) -> bool:
    """Whether a server could not listen on host:port (another program has it)."""
    with socket.socket() as probe:
        # As the emulator's server does: a port whose old connections linger is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _port_in_use(host: str, port: int) -> RungError:
    with socket.socket() as probe:
        probe.bind((host, 0))
        free = probe.getsockname()[1]
    return RungError(
        f"port {port} is in use; pass --port to use another (e.g. --port {free}), or stop "
        f"what listens on {host}:{port}"
    )


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
            f"an AWS emulator not started from {state_dir} already listens at {endpoint} "
            "(another rung dev?): pass --port to start one of this folder's own, or "
            f"--endpoint-url {endpoint} to use that one"
        )
    if _in_use(host, port):
        raise _port_in_use(host, port)
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
            if _in_use(host, port):  # taken between the check and the start
                raise _port_in_use(host, port)
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


def main() -> None:
    from rung._aws.emulator import EmbeddedEmulator

    host, port = sys.argv[1], int(sys.argv[2])
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
