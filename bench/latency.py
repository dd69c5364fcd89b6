"""Trigger -> first-step-start latency and runs per second on ``rung dev``'s embedded stack.

For 1, 2 and 4 worker processes (``DevOptions.workers``), a fresh ``DevStack`` (the
embedded moto emulator in its own process, template.yaml's data plane deployed to it,
the SQS event source played over worker processes) runs N one-step runs of
``bench.latency_app:app`` in three ways:

* **one at a time**: SERIAL_RUNS runs from one client, each triggered once the previous
  one has started (and had SERIAL_GAP to finish): no queueing at all, so latency / floor
  is the engine's own overhead.
* **burst**: all N triggered at once, by CLIENT_THREADS client threads as fast as they
  can. The queue fills faster than the workers drain it, so latency here is mostly
  time spent waiting in the backlog; the completed runs per second (first trigger to
  last ``finished_at``) is the stack's throughput.
* **steady**: min(N, 200) runs (``--steady-runs``) triggered at a steady rate,
  STEADY_FRACTION of the burst's throughput, by the same number of client threads on
  one shared schedule. The queue stays short (the workers are busy about half the
  time): everyday latency.

Latency is ``time.time()`` at the start of the step (the step writes it to a file)
minus ``time.time()`` taken just before ``client.trigger``; one clock, one machine.

Next to it, the emulator's floor for the calls on that critical path: a conditional
PutItem + SendMessage + ReceiveMessage round trip, FLOOR_ROUNDS times sequentially,
against the same emulator (its own table and queue, so the queue is empty; the message
is deleted outside the timed part). The engine's overhead is the ratio latency / floor.

The reconciler is switched off unless ``--reconcile-every`` is given (it re-sends the
message of every run that waits in a backlog longer than ``rung dev``'s 10 s grace:
duplicate work on an already saturated emulator); batch size is
the template's default (10) unless ``--batch-size`` says otherwise.

Run it: ``.venv/bin/python bench/latency.py [--runs 1000] [--workers 1 2 4]``; on a
2-core machine shared with other work (load average 3-5), ``--runs 200`` took 6 min and
the default 1000 took 13 min. Results go to bench/results/latency.json. Nothing is
asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import rung
from rung._aws import sessions
from rung._dev import DevOptions, DevStack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "latency.json"
APP = "bench.latency_app:app"
TASK = "one-step"
CLIENT_THREADS = 4
STEADY_FRACTION = 0.5
FLOOR_ROUNDS = 200
WARMUP_RUNS_PER_WORKER = 3
PHASE_TIMEOUT = 1800.0  # seconds; a phase that takes longer is reported as incomplete
SERIAL_RUNS = 50  # runs of the one-at-a-time phase (at most --runs)
SERIAL_GAP = 0.2  # seconds between a run's step start and the next trigger in that phase
STALL_TIMEOUT = 120.0  # seconds without a run starting: the phase is reported as incomplete
TRIGGER_DEV_WARM_START_MS = (100, 300)  # Trigger.dev's published warm start per task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50": round(pct(ms, 50), 2),
        "p90": round(pct(ms, 90), 2),
        "p99": round(pct(ms, 99), 2),
        "max": round(max(ms), 2),
        "mean": round(statistics.fmean(ms), 2),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the emulator's floor -----------------------------------------------------------------


def measure_floor(endpoint: str, rounds: int) -> dict[str, Any]:
    """PutItem (conditional) + SendMessage + ReceiveMessage, sequential, on an empty queue."""
    dynamodb = sessions.client("dynamodb", endpoint)
    sqs = sessions.client("sqs", endpoint)
    table = f"latency-floor-{time.time_ns()}"
    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    queue_url = sqs.create_queue(QueueName=table)["QueueUrl"]
    calls: dict[str, list[float]] = {"PutItem": [], "SendMessage": [], "ReceiveMessage": []}
    total: list[float] = []
    for n in range(rounds + 5):  # the first 5 warm the connections up
        t0 = time.perf_counter()
        dynamodb.put_item(
            TableName=table,
            Item={"pk": {"S": f"RUN#{n}"}, "sk": {"S": "#RUN"}, "status": {"S": "QUEUED"}},
            ConditionExpression="attribute_not_exists(pk)",
        )
        t1 = time.perf_counter()
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"run_id": f"RUN#{n}"}))
        t2 = time.perf_counter()
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
        t3 = time.perf_counter()
        for message in got.get("Messages", []):
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        if n >= 5:
            calls["PutItem"].append(t1 - t0)
            calls["SendMessage"].append(t2 - t1)
            calls["ReceiveMessage"].append(t3 - t2)
            total.append(t3 - t0)
    sqs.delete_queue(QueueUrl=queue_url)
    dynamodb.delete_table(TableName=table)
    return {
        "rounds": rounds,
        "round_trip_ms": summary_ms(total),
        "per_call_ms": {name: summary_ms(values) for name, values in calls.items()},
    }


# -- a phase: trigger N runs, wait for all of them -----------------------------------------


@dataclass
class Phase:
    mode: str  # "one at a time" | "steady" | "burst" | "warm-up"
    runs: int
    rate: float | None = None  # offered runs per second (steady); None: as fast as possible
    serial: bool = False  # one client; each run is triggered once the previous one is done
    trigger_at: dict[str, float] = field(default_factory=dict)  # run id -> time.time()
    trigger_call: list[float] = field(default_factory=list)  # seconds inside client.trigger
    errors: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, dev: DevStack, starts: Path, emulator_pid: int) -> None:
        self.dev = dev
        self.starts = starts
        self.emulator_pid = emulator_pid
        self.queue_url = dev.stack.outputs["QueueUrl"]
        self.clients = [
            rung.Client(
                dev.app,
                table_name=dev.stack.outputs["TableName"],
                queue_url=self.queue_url,
                endpoint_url=dev.endpoint_url,
            )
            for _ in range(CLIENT_THREADS)
        ]
        self._sqs = sessions.client("sqs", dev.endpoint_url)
        self._seen = 0  # lines of the starts file that belong to earlier phases

    def queue_depth(self) -> int:
        """Messages in the work queue (costly on moto with a deep queue: only when idle)."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return sum(int(v) for v in attributes.values())

    def read_starts(self) -> dict[str, float]:
        if not self.starts.exists():
            return {}
        out: dict[str, float] = {}
        for line in self.starts.read_text().splitlines()[self._seen :]:
            run_id, _, when = line.partition(" ")
            out.setdefault(run_id, float(when))  # a redelivered run: its first start counts
        return out

    def run_phase(self, phase: Phase) -> dict[str, Any]:
        lock = threading.Lock()
        origin = time.time() + 0.05

        def trigger(client: rung.Client, n: int) -> str | None:
            t0 = time.time()
            try:
                handle = client.trigger(TASK, n)
            except Exception as exc:  # noqa: BLE001 - counted and reported, not fatal
                with lock:
                    phase.errors.append(f"trigger {n}: {exc!r}")
                return None
            t1 = time.time()
            with lock:
                phase.trigger_at[handle.run_id] = t0
                phase.trigger_call.append(t1 - t0)
            return handle.run_id

        def client_thread(index: int) -> None:
            client = self.clients[index]
            for n in range(index, phase.runs, CLIENT_THREADS):
                if phase.rate is not None:  # one shared schedule: run n is due at n / rate
                    delay = origin + n / phase.rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                trigger(client, n)

        def serial_client() -> None:
            for n in range(phase.runs):
                run_id = trigger(self.clients[0], n)
                deadline = time.monotonic() + STALL_TIMEOUT
                while run_id and run_id not in self.read_starts():
                    if time.monotonic() > deadline:
                        phase.errors.append(f"{run_id} did not start; stopped")
                        return
                    time.sleep(0.002)
                time.sleep(SERIAL_GAP)  # let the run complete: the worker is free again

        cpu_before = self._cpu()
        if phase.serial:
            threads = [threading.Thread(target=serial_client)]
        else:
            threads = [
                threading.Thread(target=client_thread, args=(i,)) for i in range(CLIENT_THREADS)
            ]
        began = time.time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        triggered = time.time()
        expected = set(phase.trigger_at)
        deadline = time.monotonic() + PHASE_TIMEOUT
        starts: dict[str, float] = {}
        progress = (0, time.monotonic())
        while time.monotonic() < deadline:
            starts = self.read_starts()
            if expected <= set(starts):
                break
            if len(starts) != progress[0]:
                progress = (len(starts), time.monotonic())
            elif time.monotonic() - progress[1] > STALL_TIMEOUT:
                phase.errors.append(f"no run started for {STALL_TIMEOUT:g}s; gave up waiting")
                break
            time.sleep(0.1)
        while time.monotonic() < deadline and not (self.dev.idle() and self.queue_depth() == 0):
            time.sleep(0.1)
        drained = time.time()
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in self._cpu().items()}
        self._seen = len(self.starts.read_text().splitlines()) if self.starts.exists() else 0

        runs = self._read_runs(sorted(expected))
        completed = [r for r in runs if r.status == rung.RunStatus.COMPLETED]
        finished = [r.finished_at.timestamp() for r in completed if r.finished_at is not None]
        first_trigger = min(phase.trigger_at.values(), default=began)
        wall = (max(finished) - first_trigger) if finished else float("nan")
        latencies = [starts[r] - t for r, t in phase.trigger_at.items() if r in starts]
        backlog = _backlog(phase.trigger_at, starts)
        elapsed = drained - began
        return {
            "mode": phase.mode,
            "runs": phase.runs,
            "client_threads": 1 if phase.serial else CLIENT_THREADS,
            "offered_rate_per_s": round(phase.rate, 2) if phase.rate else None,
            "trigger_rate_per_s": round(len(phase.trigger_at) / max(triggered - began, 1e-9), 2),
            "trigger_errors": phase.errors[:5],
            "triggered": len(phase.trigger_at),
            "started": len(latencies),
            "completed": len(completed),
            "not_completed": [f"{r.run_id} {r.status}" for r in runs if r not in completed][:10],
            "latency_ms": summary_ms(latencies),
            "latency_by_tenth_ms": _by_tenth(phase.trigger_at, starts),
            "trigger_call_ms": summary_ms(phase.trigger_call),
            "trigger_call_first_last_tenth_ms": _first_last(phase.trigger_call),
            "wall_s": round(wall, 3),
            "runs_per_s": round(len(completed) / wall, 2) if finished and wall > 0 else None,
            "waiting_runs": {
                "max": max((d for _, d in backlog), default=0),
                "time_weighted_mean": _time_mean(backlog),
                "series": backlog[:: max(1, len(backlog) // 40)],
            },
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
            "cpu_share_of_machine": {
                k: round(v / max(elapsed, 1e-9) / (os.cpu_count() or 1), 2) for k, v in cpu.items()
            },
            "elapsed_s": round(elapsed, 2),
        }

    def _cpu(self) -> dict[str, float]:
        return {
            "emulator": cpu_seconds(self.emulator_pid),
            "workers": sum(cpu_seconds(pid) for pid in self.dev.worker_pids()),
            "bench_and_esm": cpu_seconds(os.getpid()),
        }

    def _read_runs(self, run_ids: list[str]) -> list[rung.Run]:
        out: list[rung.Run] = []
        lock = threading.Lock()

        def read(index: int) -> None:
            client = self.clients[index]
            for run_id in run_ids[index::CLIENT_THREADS]:
                run = client.get_run(run_id)
                with lock:
                    out.append(run)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return out

    def warm_up(self, runs: int) -> None:
        """A few runs first, so every worker process has handled one (a warm start)."""
        self.run_phase(Phase("warm-up", runs))


def _backlog(trigger_at: dict[str, float], starts: dict[str, float]) -> list[tuple[float, int]]:
    """Runs triggered but not started yet, after each trigger and start (t from the first).

    Taken from the runs' own times rather than by asking the queue: on moto,
    GetQueueAttributes scans every message and would load the emulator under test.
    """
    events = sorted(
        [(t, 1) for t in trigger_at.values()] + [(starts[r], -1) for r in trigger_at if r in starts]
    )
    if not events:
        return []
    origin, waiting, out = events[0][0], 0, []
    for when, change in events:
        waiting += change
        out.append((round(when - origin, 3), waiting))
    return out


def _time_mean(series: list[tuple[float, int]]) -> float:
    if len(series) < 2 or series[-1][0] <= series[0][0]:
        return 0.0
    area = sum((b[0] - a[0]) * a[1] for a, b in zip(series, series[1:], strict=False))
    return round(area / (series[-1][0] - series[0][0]), 1)


def _by_tenth(trigger_at: dict[str, float], starts: dict[str, float]) -> list[float]:
    """Median latency (ms) of each tenth of the runs, in trigger order: the backlog's shape."""
    ordered = [
        starts[r] - t for r, t in sorted(trigger_at.items(), key=lambda x: x[1]) if r in starts
    ]
    size = max(1, len(ordered) // 10)
    chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)][:10]
    return [round(statistics.median(c) * 1000, 1) for c in chunks if c]


def _first_last(values: list[float]) -> list[float]:
    size = max(1, len(values) // 10)
    return [
        round(statistics.median(values[:size]) * 1000, 2),
        round(statistics.median(values[-size:]) * 1000, 2),
    ]


# -- one configuration: a fresh stack with W worker processes --------------------------------


def run_config(
    workers: int,
    runs: int,
    steady_runs: int,
    batch_size: int,
    floor_rounds: int,
    reconcile_every: float | None,
    console: Console,
) -> dict[str, Any]:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rung-latency-") as tmp:
        starts = Path(tmp) / "starts.log"
        os.environ["RUNG_BENCH_STARTS"] = str(starts)  # the worker processes inherit it
        options = DevOptions(
            app=APP,
            template=ROOT / "template.yaml",
            port=free_port(),
            state_dir=Path(tmp) / ".rung",
            workers=workers,
            reload=False,
            print_events=False,
            reconcile_every=reconcile_every or 24 * 3600.0,  # default off: see the docstring
            parameters={"BatchSize": str(batch_size)},
        )
        lines: list[str] = []
        with DevStack(options, emit=lines.append) as dev:
            ready = time.monotonic() - began
            record = json.loads((options.state_dir / "emulator.json").read_text())
            bench = Bench(dev, starts, int(record["pid"]))

            def say(text: str) -> None:
                console.print(
                    f"[dim]{time.monotonic() - began:6.1f}s  {workers} worker(s): {text}[/]"
                )

            say(f"stack up in {ready:.1f}s; floor, {floor_rounds} round trips")
            floor = measure_floor(dev.endpoint_url, floor_rounds)
            bench.warm_up(WARMUP_RUNS_PER_WORKER * workers)
            serial_runs = min(SERIAL_RUNS, runs)
            say(f"{serial_runs} runs one at a time")
            serial = bench.run_phase(Phase("one at a time", serial_runs, serial=True))
            say(f"burst of {runs}")
            burst = bench.run_phase(Phase("burst", runs))
            rate = STEADY_FRACTION * (burst["runs_per_s"] or 1.0)
            say(f"steady, {steady_runs} at {rate:.1f}/s")
            steady = bench.run_phase(Phase("steady", steady_runs, rate))
            say("done")
            crashes = list(dev.crashes)
            started_workers = len(dev.worker_pids())
    return {
        "workers": workers,
        "worker_processes_seen": started_workers,
        "batch_size": batch_size,
        "stack_ready_s": round(ready, 2),
        "floor": floor,
        "phases": [serial, steady, burst],
        "worker_crashes": [f"{name}: {how}" for name, how, _ in crashes],
        "config_wall_s": round(time.monotonic() - began, 1),
    }


# -- reporting ------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.1f}x"


def offered(phase: dict[str, Any]) -> str:
    if phase["client_threads"] == 1:
        return "serial"
    rate = phase["offered_rate_per_s"]
    return f"{rate:.1f}" if rate else "at once"


def report(configs: list[dict[str, Any]], console: Console) -> None:
    nan = float("nan")
    table = Table(title="rung dev (embedded moto): trigger -> first step start, one-step runs")
    for column in (
        "workers",
        "mode",
        "runs",
        "offered/s",
        "latency ms p50 / p99",
        "floor ms p50 / p99",
        "x floor p50 / p99",
        "runs/s",
        "trigger() ms p50",
        "waiting max",
    ):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for c in configs:
        floor = c["floor"]["round_trip_ms"]
        for n, p in enumerate(c["phases"]):
            lat = p["latency_ms"]
            serial = p["client_threads"] == 1
            table.add_row(
                str(c["workers"]) if n == 0 else "",
                p["mode"],
                f"{p['completed']}/{p['runs']}",
                offered(p),
                f"{lat.get('p50', nan):.0f} / {lat.get('p99', nan):.0f}",
                f"{floor['p50']:.0f} / {floor['p99']:.0f}" if n == 0 else "",
                f"{ratio(lat.get('p50'), floor['p50'])} / {ratio(lat.get('p99'), floor['p99'])}",
                f"{p['runs_per_s']:.1f}" if p["runs_per_s"] and not serial else "-",
                f"{p['trigger_call_ms'].get('p50', nan):.0f}",
                str(p["waiting_runs"]["max"]),
                end_section=n == len(c["phases"]) - 1,
            )
    low, high = TRIGGER_DEV_WARM_START_MS
    table.add_row("ref", "Trigger.dev warm start", "", "", f"{low}-{high}", *[""] * 5)
    console.print(table)

    for c in configs:
        burst = next(p for p in c["phases"] if p["mode"] == "burst")
        steady = next(p for p in c["phases"] if p["mode"] == "steady")
        calls = c["floor"]["per_call_ms"]
        console.print(
            f"- {c['workers']} worker(s): floor per call p50 "
            + ", ".join(f"{k} {v['p50']:.1f}" for k, v in calls.items())
            + f" ms. Burst: latency by tenth of the runs {burst['latency_by_tenth_ms']} ms,"
            f" trigger() first/last tenth {burst['trigger_call_first_last_tenth_ms']} ms with up"
            f" to {burst['waiting_runs']['max']} runs waiting, CPU share of the machine"
            f" {burst['cpu_share_of_machine']}, emulator CPU per run"
            f" {1000 * burst['cpu_s']['emulator'] / max(burst['completed'], 1):.0f} ms."
            f" Steady: {steady['waiting_runs']['time_weighted_mean']} runs waiting on average."
            f" Stack up {c['stack_ready_s']}s; config {c['config_wall_s']}s"
            + (f"; crashes {c['worker_crashes']}" if c["worker_crashes"] else "")
        )


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "moto": metadata.version("moto"),
        "boto3": metadata.version("boto3"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000, help="runs per phase (default 1000)")
    parser.add_argument(
        "--steady-runs", type=int, help="runs of the steady phase (default: --runs, at most 200)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-size", type=int, default=10, help="SQS BatchSize (1-10)")
    parser.add_argument("--floor-rounds", type=int, default=FLOOR_ROUNDS)
    parser.add_argument(
        "--reconcile-every",
        type=float,
        help="run the reconciler every so many seconds, as rung dev does (default: off)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    console = Console(width=max(Console().width, 140))
    os.chdir(ROOT)  # the worker processes import bench.latency_app from here
    load_before = os.getloadavg()
    began = time.monotonic()
    steady_runs = args.steady_runs or min(args.runs, 200)
    configs = [
        run_config(
            w,
            args.runs,
            steady_runs,
            args.batch_size,
            args.floor_rounds,
            args.reconcile_every,
            console,
        )
        for w in args.workers
    ]
    total = time.monotonic() - began
    load_after = os.getloadavg()
    report(configs, console)
    data: dict[str, Any] = {
        "note": "trigger -> first step start on rung dev's embedded stack (moto), one-step runs",
        "machine": {
            **machine(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "settings": {
            "runs": args.runs,
            "one_at_a_time_runs": min(SERIAL_RUNS, args.runs),
            "steady_runs": steady_runs,
            "workers": args.workers,
            "batch_size": args.batch_size,
            "client_threads": CLIENT_THREADS,
            "burst": "all runs triggered at once by the client threads, as fast as they can",
            "steady_rate": f"{STEADY_FRACTION} x the burst's runs/s",
            "floor_rounds": args.floor_rounds,
            "reconciler": (
                f"every {args.reconcile_every:g}s, grace {DevOptions.reconcile_grace}s"
                if args.reconcile_every
                else "off"
            ),
        },
        "reference": {"trigger_dev_warm_start_ms": list(TRIGGER_DEV_WARM_START_MS)},
        "configs": configs,
        "total_s": round(total, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    console.print(
        f"load average before {[round(x, 2) for x in load_before]}, after"
        f" {[round(x, 2) for x in load_after]} ({os.cpu_count()} CPUs); total {total:.0f}s;"
        f" wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
