"""`rung dev` with real processes: crashes of workers and of rung dev itself.

Side effects are counted in a file the test owns (RUNG_TEST_EFFECTS), across
worker processes and restarts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import rung
from rung._aws import cloudformation, sessions
from rung._dev import DevOptions, DevStack, load_app

pytestmark = pytest.mark.slow
APP = "tests.integration.dev_app:app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def effects(path: Path) -> Counter[tuple[str, str]]:
    if not path.exists():
        return Counter()
    return Counter((line.split()[0], line.split()[1]) for line in path.read_text().splitlines())


def wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped, as in containers whose init does not, is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def effects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.log"
    monkeypatch.setenv("RUNG_TEST_EFFECTS", str(path))
    return path


def dev_options(tmp_path: Path, **overrides: object) -> DevOptions:
    options = DevOptions(
        app=APP,
        port=free_port(),
        state_dir=tmp_path / ".rung",
        lease_seconds=2,
        workers=2,
        reload=False,
        print_events=False,
    )
    for key, value in overrides.items():
        setattr(options, key, value)
    return options


@pytest.mark.timeout(300)
@pytest.mark.parametrize("task", ["pipeline", "pipeline-async"])
def test_kill_9_of_a_worker_mid_step_retries_the_run_and_repeats_no_completed_step(
    tmp_path: Path, effects_file: Path, task: str
) -> None:
    gate = tmp_path / "gate"
    with DevStack(dev_options(tmp_path)) as dev:
        handle = dev.client.trigger(task, {"gate": str(gate)})
        pid = int(wait_for(Path(str(gate) + ".pid")))
        assert pid in dev.worker_pids()
        os.kill(pid, signal.SIGKILL)  # the worker dies in the middle of step "slow"
        gate.touch()
        run = dev.wait(handle.run_id, timeout=60)
        history = dev.client.history(handle.run_id)
        crashes = list(dev.crashes)
    assert run.status == "COMPLETED" and run.output == ["one", "two", "slow", "after"]
    assert run.attempt == 2
    counts = effects(effects_file)
    assert counts == {(handle.run_id, f"/{s}#1"): 1 for s in ("one", "two", "slow", "after")}
    assert [str(e.type) for e in history].count("WorkerLost") == 1
    assert len(crashes) == 1 and "SIGKILL" in crashes[0][1]


@pytest.mark.timeout(300)
def test_without_workers_rung_dev_starts_as_many_workers_as_the_machine_can_run(
    tmp_path: Path, effects_file: Path
) -> None:
    lines: list[str] = []
    cpus = len(os.sched_getaffinity(0))
    with DevStack(dev_options(tmp_path, workers=None), emit=lines.append) as dev:
        run = dev.wait(dev.client.trigger("resume", {"x": 1}).run_id, timeout=60)
    [ready] = [line for line in lines if "ready;" in line]
    started = int(ready.split("ready; ")[1].split()[0])
    # The template's MaximumConcurrency is 10; a machine with fewer CPUs gets fewer.
    assert 1 <= started <= max(2, cpus), ready
    assert "--workers" in ready  # says how to change it
    assert run.status == "COMPLETED"


@pytest.mark.timeout(300)
def test_rung_dev_keeps_finished_runs_for_the_templates_retention_days(
    tmp_path: Path, effects_file: Path
) -> None:
    options = dev_options(tmp_path, workers=1, parameters={"RetentionDays": "7"})
    with DevStack(options) as dev:
        run = dev.wait(dev.client.trigger("resume", {"x": 1}).run_id, timeout=60)
    # The worker process read RUNG_RETENTION_DAYS from the template's environment.
    assert run.status == "COMPLETED" and run.finished_at is not None
    assert run.expires_at == run.finished_at + timedelta(days=7)


def run_dev_cli(options: DevOptions, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rung._dev.command",
            "--app",
            APP,
            "--port",
            str(options.port),
            "--state-dir",
            str(options.state_dir),
            "--lease",
            "2",
            "--workers",
            "2",
            "--no-reload",
            "--reconcile-every",
            "1",
            "--reconcile-grace",
            "2",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(log: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("ready;") >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"rung dev did not become ready:\n{log.read_text()}")


@pytest.mark.timeout(400)
def test_kill_9_of_rung_dev_then_a_restart_finishes_in_flight_runs(
    tmp_path: Path, effects_file: Path
) -> None:
    options = dev_options(tmp_path)
    log = tmp_path / "dev.log"
    first = run_dev_cli(options, log)
    wait_ready(log, 1)
    # A client of the running stack, found through its outputs as the CLI does.
    endpoint = f"http://127.0.0.1:{options.port}"
    stack = cloudformation.describe(sessions.client("cloudformation", endpoint), "rung-devtest")
    client = rung.Client(
        load_app(APP),
        table_name=stack.outputs["TableName"],
        queue_url=stack.outputs["QueueUrl"],
        endpoint_url=endpoint,
    )
    gates = [tmp_path / f"gate-{n}" for n in range(4)]
    # sync and async runs alike
    tasks = ["pipeline", "pipeline-async", "pipeline", "pipeline-async"]
    handles = [client.trigger(t, {"gate": str(g)}) for t, g in zip(tasks, gates, strict=True)]
    wait_for(Path(str(gates[0]) + ".pid"))
    killed_at = datetime.now(UTC)
    first.send_signal(signal.SIGKILL)  # rung dev dies with runs in flight
    first.wait()
    worker_pids = [
        int(Path(str(g) + ".pid").read_text()) for g in gates if Path(str(g) + ".pid").exists()
    ]
    deadline = time.monotonic() + 10  # the parent-death signal takes a moment under load
    while any(alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in worker_pids)  # its workers died with it
    emulator = json.loads((options.state_dir / "emulator.json").read_text())
    assert alive(emulator["pid"])  # the state survives in the emulator

    for gate in gates:
        gate.touch()
    second = run_dev_cli(options, log)
    try:
        wait_ready(log, 2)
        assert "adopted the running embedded AWS emulator" in log.read_text()
        runs = [wait_terminal(client, h.run_id) for h in handles]
        histories = {h.run_id: client.history(h.run_id) for h in handles}
    finally:
        second.send_signal(signal.SIGINT)  # a clean stop
        assert second.wait(timeout=60) == 0
    assert [r.status for r in runs] == ["COMPLETED"] * 4
    counts = effects(effects_file)
    checked = 0
    for handle in handles:
        for event in histories[handle.run_id]:
            if str(event.type) != "StepSucceeded":
                continue
            assert event.step is not None
            # A step checkpointed before the kill never runs again. One cut off between
            # its side effect and its checkpoint may run twice: steps are at-least-once.
            if event.timestamp < killed_at:
                assert counts[(handle.run_id, event.step)] == 1, (handle.run_id, event.step)
                checked += 1
            else:
                assert counts[(handle.run_id, event.step)] >= 1
    assert checked >= 2  # run 0's steps one and two were done before the kill
    assert not alive(emulator["pid"])  # Ctrl-C stopped the emulator too: nothing orphaned
    assert not (options.state_dir / "emulator.json").exists()


def wait_terminal(client: rung.Client, run_id: str, timeout: float = 90) -> rung.Run:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        if run.status.is_terminal or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


@pytest.mark.timeout(900)
def test_120_runs_with_random_failures_all_end_and_no_completed_step_repeats(
    tmp_path: Path, effects_file: Path
) -> None:
    # A long reconciler grace: a backlog of 120 runs is not stranded, only queued. One
    # message per invocation, so that an injected crash takes down one run's attempt,
    # not a batch of ten (with batches, Lambda would redeliver all ten as well).
    options = dev_options(
        tmp_path, workers=4, reconcile_grace=120, lease_seconds=5, parameters={"BatchSize": "1"}
    )
    with DevStack(options) as dev:
        handles = [dev.client.trigger("chaos", n) for n in range(120)]
        runs = [wait_terminal(dev.client, h.run_id, timeout=240) for h in handles]
        crashes = len(dev.crashes)
    statuses = Counter(str(r.status) for r in runs)
    assert set(statuses) <= {"COMPLETED", "FAILED"}, statuses  # none stuck
    assert statuses["COMPLETED"] >= 90  # ~8% fail by design (NonRetryable rolls)
    for run in runs:
        if run.status == "FAILED":
            assert run.error is not None and run.error.type in ("NonRetryable", "WorkerLost")
    counts = effects(effects_file)
    assert max(counts.values()) == 1  # zero duplicated completed steps
    for run in runs:
        if run.status == "COMPLETED":
            assert run.output == 3
            assert all(counts[(run.run_id, f"/s{n}#1")] == 1 for n in range(3))
    assert crashes > 0  # the injected os._exit crashes really happened


@pytest.mark.timeout(300)
def test_a_segfault_or_memory_exhaustion_harms_only_its_own_run(
    tmp_path: Path, effects_file: Path
) -> None:
    # One message per invocation: a crash takes down the invocation's whole batch, on
    # Lambda too, and this test is about the run that crashed, not its batch-mates.
    with DevStack(dev_options(tmp_path, workers=2, parameters={"BatchSize": "1"})) as dev:
        segfault = dev.client.trigger("hostile", "segfault")
        memory = dev.client.trigger("hostile", "memory")
        bystanders = [dev.client.trigger("resume", {"x": n}) for n in range(3)]
        runs = [dev.wait(h.run_id, timeout=90) for h in (segfault, memory, *bystanders)]
        segfault_history = [str(e.type) for e in dev.client.history(segfault.run_id)]
        memory_history = dev.client.history(memory.run_id)
        bystander_histories = [dev.client.history(h.run_id) for h in bystanders]
        crashes = list(dev.crashes)
    assert runs[0].status == "COMPLETED" and runs[0].output == "segfault"
    assert "WorkerLost" in segfault_history  # the worker died of SIGSEGV; the run went on
    assert any("SIGSEGV" in how for _, how, _ in crashes)
    assert runs[1].status == "COMPLETED" and runs[1].output == "memory"
    errors = [e.error for e in memory_history if e.error is not None]
    assert errors and errors[0].type == "MemoryError"  # capped near MemorySize, in-process
    assert all(r.status in ("COMPLETED", "FAILED") for r in runs[2:])
    # the bystanders were not harmed: each completed, lost no worker, and took the two
    # attempts its own deliberate first-attempt error asks for
    assert [(r.status, r.output, r.attempt) for r in runs[2:]] == [
        ("COMPLETED", n * 10 + 1, 2) for n in range(3)
    ]
    for history in bystander_histories:
        assert "WorkerLost" not in [str(e.type) for e in history]
    hostile = {f'{{"v":1,"run_id":"{segfault.run_id}"}}'}
    assert all(set(bodies) <= hostile for _, _, bodies in crashes)


RELOAD_APP = """
import rung

app = rung.App("reloadtest")
VERSION = "{version}"


@app.task(id="version")
def version(ctx: rung.Context, payload: None) -> str:
    return ctx.step("read", lambda: VERSION)
"""


@pytest.mark.timeout(300)
def test_changed_task_code_is_picked_up_by_fresh_worker_processes(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    module = project / "reload_app.py"
    module.write_text(RELOAD_APP.format(version="v1"))
    lines: list[str] = []
    # A project with no template.yaml or handler/: rung's own are used.
    options = dev_options(tmp_path, app="reload_app:app", code_root=project, reload=True)
    with DevStack(options, emit=lines.append) as dev:
        first = dev.wait(dev.client.trigger("version").run_id, timeout=60)
        time.sleep(1.1)  # a later mtime than the first version's
        module.write_text(RELOAD_APP.format(version="v2"))
        deadline = time.monotonic() + 30
        while not any("changed; restarting" in line for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.1)
        second = dev.wait(dev.client.trigger("version").run_id, timeout=60)
    assert (first.output, second.output) == ("v1", "v2")
    assert any("reload_app.py changed" in line for line in lines)


@pytest.mark.timeout(300)
def test_kill_9_of_workers_holding_slots_the_limit_recovers_and_never_breaks(
    tmp_path: Path, effects_file: Path
) -> None:
    gate = tmp_path / "gate"
    # One message per invocation, so no run waits in a batch behind a blocked holder;
    # a 5 s run lease (the slots have their own, the function timeout + 60 s, renewed
    # only at step boundaries, so they outlast the others' parking on a loaded machine).
    options = dev_options(tmp_path, workers=4, lease_seconds=5, parameters={"BatchSize": "1"})
    with DevStack(options) as dev:
        handles = [dev.client.trigger("limited", {"gate": str(gate)}) for _ in range(6)]
        deadline = time.monotonic() + 60
        while len(_entries(effects_file)) < 2 or dev.client.get_queue("dev-limited").parked < 4:
            assert time.monotonic() < deadline, "two runs never started, or four never parked"
            time.sleep(0.05)
        time.sleep(1.0)  # room for a third, wrong, start on the two idle workers
        holders = _entries(effects_file)
        assert dev.client.get_queue("dev-limited").parked == 4
        for _, pid, _ in holders:
            os.kill(pid, signal.SIGKILL)  # both slot holders die mid-step
        killed_at = time.time()
        gate.touch()
        runs = [dev.wait(h.run_id, timeout=120) for h in handles]
        crashes = list(dev.crashes)
        # A run gives its slot back just after its final write: wait for the last one.
        deadline = time.monotonic() + 30
        while dev.client.get_queue("dev-limited").running and time.monotonic() < deadline:
            time.sleep(0.05)
        queue = dev.client.get_queue("dev-limited")

    assert len(holders) == 2  # the limit held while the holders were blocked
    assert [r.status for r in runs] == ["COMPLETED"] * 6
    killed = {run_id for run_id, _, _ in holders}
    assert sorted(r.attempt for r in runs) == [1, 1, 1, 1, 2, 2]
    assert {r.run_id for r in runs if r.attempt == 2} == killed
    assert len(crashes) == 2 and all("SIGKILL" in c[1] for c in crashes)
    # Executions as the tasks saw them (a killed one ends at the kill): never above 2.
    lines = [line.split() for line in effects_file.read_text().splitlines()]
    open_at: dict[tuple[str, str], float] = {}
    spans: list[tuple[float, float]] = []
    for kind, run_id, process, at in lines:
        if kind == "enter":
            open_at[(run_id, process)] = float(at)
        else:
            spans.append((open_at.pop((run_id, process)), float(at)))
    spans += [(start, killed_at) for (run_id, _), start in open_at.items() if run_id in killed]
    assert not [key for key in open_at if key[0] not in killed]  # every other run left
    assert len(spans) == 8  # 6 runs, 2 of them twice
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 2, sorted(spans)
    assert (queue.running, queue.parked) == (0, 0)


def _entries(path: Path) -> list[tuple[str, int, float]]:
    """(run id, pid, time) of each step entry recorded so far."""
    if not path.exists():
        return []
    return [
        (parts[1], int(parts[2]), float(parts[3]))
        for parts in (line.split() for line in path.read_text().splitlines())
        if parts and parts[0] == "enter"
    ]


CRASH_KINDS = ("kill", "exit", "segfault", "oom")


@pytest.mark.timeout(300)
def test_each_kind_of_worker_death_is_retried_and_completes_with_no_step_repeated(
    tmp_path: Path, effects_file: Path
) -> None:
    # rung dev's own lease (10 s, kept alive by the heartbeat while a step runs), so
    # what is printed is the recovery a user sees. One message per invocation: a death
    # takes down only its own run (on Lambda the whole batch comes back, all innocent).
    options = dev_options(tmp_path, workers=4, parameters={"BatchSize": "1"})
    options.lease_seconds = DevOptions.lease_seconds
    marks = {how: tmp_path / f"{how}.mark" for how in CRASH_KINDS}
    with DevStack(options) as dev:
        handles = {
            how: dev.client.trigger("crash", {"how": how, "mark": str(mark)})
            for how, mark in marks.items()
        }
        pid = int(wait_for(marks["kill"]).split()[0])
        os.kill(pid, signal.SIGKILL)  # kill -9 from outside, in the middle of a step
        killed_at = time.time()
        runs = {how: dev.wait(h.run_id, timeout=90) for how, h in handles.items()}
        histories = {how: dev.client.history(h.run_id) for how, h in handles.items()}
        crashes = list(dev.crashes)

    recovered: dict[str, float] = {}
    for how in CRASH_KINDS:
        assert (runs[how].status, runs[how].output, runs[how].attempt) == (
            "COMPLETED",
            ["before", "fatal"],
            2,
        ), how
        assert [str(e.type) for e in histories[how]].count("WorkerLost") == 1, how
        died = killed_at if how == "kill" else float(marks[how].read_text().split()[1])
        retried = float(Path(f"{marks[how]}.retry").read_text().split()[1])
        recovered[how] = retried - died
    # Each step's side effect once: "before" was checkpointed before the death and
    # never ran again; "fatal" died before its effect and ran once, on the retry.
    counts = effects(effects_file)
    assert counts == {
        (h.run_id, f"/{step}#1"): 1 for h in handles.values() for step in ("before", "fatal")
    }
    hows = sorted(how for _, how, _ in crashes)
    assert len(hows) == 4, crashes
    assert sum("SIGKILL" in how for how in hows) == 2  # kill -9, and the OOM kill
    assert any("SIGSEGV" in how for how in hows) and any("status 1" in how for how in hows)
    print("\nrecovery (death -> retry running), lease 10 s:")
    for how, seconds in recovered.items():
        print(f"  {how:9} {seconds:5.1f} s")
