"""How fast ``rung.testing.LocalEngine`` runs a test suite's workload, and where the time goes.

``LocalEngine`` is what users' test suites run on, so its speed is their suite's speed.
Each measure runs in a fresh Python process (the first engine of a process pays for
the imports and the emulator's start), on one worker thread (the default):

* **200 x 5**: 200 runs of a 5-step task (``bench/harness_app.py``; the steps do
  nothing), triggered one after another, then ``engine.wait`` on each: a suite's worth
  of small runs. Wall time from the first trigger to the last run seen COMPLETED, and
  the process's CPU time over the same span.
* **1 x 50**: one run of 50 steps: the cost of a step without the per-run part.
* **setup**: ``import rung.testing``, then the first ``LocalEngine`` started (the
  emulator, the clients, the table and queues), then a second engine in the same
  process (its table and queues only).

``--against DIR`` measures another checkout of rung in the same sitting, for a
before/after comparison on one machine: the measuring process puts ``DIR/sdk`` first
on ``PYTHONPATH`` (same virtualenv, same moto and botocore). Rounds alternate between
the two trees so that the machine's load falls on both alike; the table shows medians.
A last round per tree is instrumented (thread CPU time around every AWS request and
around moto's handler) to say where the 200 x 5 time goes; its numbers are CPU
seconds, so they add up across threads, and the instrumentation itself is not in the
timed rounds. ``--suite`` also times the project's own
``pytest -q -m "not slow" tests/functional tests/unit`` in each tree, once.

Next to it, the figures the issue measured side by side on this machine for DBOS on
SQLite and the AWS durable execution testing runner (not re-measured here: neither is
a dependency of rung).

Run it: ``.venv/bin/python bench/harness.py [--rounds 5] [--against /path/to/old/tree]
[--suite]``. Results go to bench/results/harness.json. Nothing is asserted: it is a
measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "harness.json"
ROOT = Path(__file__).resolve().parent.parent
RUNS, STEPS, LONG_STEPS = 200, 5, 50
# Measured side by side on this machine, as the issue reports them (not re-run here).
REFERENCE = {
    "DBOS on SQLite": {"many_s": 2.7, "per_step_ms": 2.1, "first_engine_ms": 46.0},
    "AWS durable execution testing runner": {"many_s": 22.4},
}


# -- the measuring process ---------------------------------------------------------------


class Breakdown:
    """Thread CPU time inside AWS requests and inside moto's handlers, per operation."""

    def __init__(self, engine: Any) -> None:
        import moto.core.responses

        self.lock = threading.Lock()
        self.local = threading.local()
        self.request_cpu: Counter[str] = Counter()
        self.moto_cpu: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.empty_receives = 0
        self.enabled = False
        base = moto.core.responses.BaseResponse
        original = base._dispatch
        breakdown = self

        def timed_dispatch(self: Any, *args: Any, **kwargs: Any) -> Any:
            began = time.thread_time()
            try:
                return original(self, *args, **kwargs)
            finally:
                breakdown.local.moto = time.thread_time() - began

        base._dispatch = timed_dispatch  # type: ignore[method-assign]
        for client in (engine.dynamodb, engine.sqs):
            client.meta.events.register_first("before-parameter-build", self._begin)
            client.meta.events.register("after-call", self._end)

    def _begin(self, **_: Any) -> None:
        self.local.began = time.thread_time()
        self.local.moto = 0.0

    def _end(self, model: Any, parsed: dict[str, Any], **_: Any) -> None:
        spent = time.thread_time() - self.local.began
        if not self.enabled:
            return
        with self.lock:
            if model.name == "ReceiveMessage" and not parsed.get("Messages"):
                self.empty_receives += 1
                return
            self.calls[model.name] += 1
            self.request_cpu[model.name] += spent
            self.moto_cpu[model.name] += self.local.moto


def measure(runs: int, steps: int, long_steps: int, breakdown: bool) -> dict[str, Any]:
    """One round, in this (fresh) process."""
    t0 = time.perf_counter()
    import rung
    import rung.testing

    imported = time.perf_counter()
    sys.path.insert(0, str(Path(__file__).parent))  # the task, whichever rung is measured
    from harness_app import app
    from harness_app import steps as steps_task

    began = time.perf_counter()
    engine = rung.testing.LocalEngine(app)
    engine.start()
    started = time.perf_counter()
    out: dict[str, Any] = {
        "import_s": imported - t0,
        "first_engine_s": started - began,
        "import_and_first_engine_s": started - t0,
    }
    try:
        counting = Breakdown(engine) if breakdown else None
        engine.wait(engine.trigger(steps_task, 1).run_id)  # the worker's path, warmed up
        if counting is not None:
            counting.enabled = True

        began, cpu = time.perf_counter(), time.process_time()
        handles = [engine.trigger(steps_task, steps) for _ in range(runs)]
        finished = [engine.wait(h.run_id, timeout=600) for h in handles]
        out["many_s"], out["many_cpu_s"] = time.perf_counter() - began, time.process_time() - cpu
        assert all(r.status == rung.RunStatus.COMPLETED for r in finished), "a run failed"
        if counting is not None:
            counting.enabled = False
            out["breakdown"] = {
                "cpu_s": out["many_cpu_s"],
                "requests": dict(counting.calls),
                "empty_receives": counting.empty_receives,
                "request_cpu_s": dict(counting.request_cpu),
                "moto_cpu_s": dict(counting.moto_cpu),
            }
            return out

        began, cpu = time.perf_counter(), time.process_time()
        one = engine.wait(engine.trigger(steps_task, long_steps).run_id, timeout=600)
        out["long_s"], out["long_cpu_s"] = time.perf_counter() - began, time.process_time() - cpu
        assert one.status == rung.RunStatus.COMPLETED, one
    finally:
        engine.stop()
    began = time.perf_counter()
    with rung.testing.LocalEngine(app):
        out["second_engine_s"] = time.perf_counter() - began
    return out


# -- the driver --------------------------------------------------------------------------


def _env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "sdk"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def one_round(tree: Path, args: argparse.Namespace, breakdown: bool = False) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", "--runs", str(args.runs)]
    command += ["--steps", str(args.steps), "--long-steps", str(args.long_steps)]
    command += ["--breakdown"] if breakdown else []
    out = subprocess.run(
        command, env=_env(tree), cwd=tree, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"measuring {tree} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def time_suite(tree: Path) -> dict[str, Any]:
    """The project's own fast suite in ``tree``, with this virtualenv's pytest."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"]
    command += ["tests/functional", "tests/unit"]
    began = time.perf_counter()
    out = subprocess.run(
        command, env=_env(tree), cwd=tree, capture_output=True, text=True, check=False
    )
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]
    return {"wall_s": round(time.perf_counter() - began, 1), "result": tail}


def _git(tree: Path, *args: str) -> str:
    command = ["git", "-C", str(tree), *args]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def medians(results: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in results[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(r[k] for r in results) for k in keys}


def derived(med: dict[str, float], args: argparse.Namespace) -> dict[str, float]:
    return {
        "many_s": med["many_s"],
        "many_cpu_s": med["many_cpu_s"],
        "per_run_ms": med["many_s"] / args.runs * 1000,
        "long_ms": med["long_s"] * 1000,
        "per_step_ms": med["long_s"] / args.long_steps * 1000,
        "import_ms": med["import_s"] * 1000,
        "first_engine_ms": med["first_engine_s"] * 1000,
        "import_and_first_engine_ms": med["import_and_first_engine_s"] * 1000,
        "second_engine_ms": med["second_engine_s"] * 1000,
    }


def where_it_goes(breakdown: dict[str, Any], runs: int) -> dict[str, Any]:
    """CPU seconds of the 200 x 5 workload: moto, botocore and the transport, the rest."""
    cpu = breakdown["cpu_s"]
    requests = sum(breakdown["request_cpu_s"].values())
    moto = sum(breakdown["moto_cpu_s"].values())
    calls = sum(breakdown["requests"].values())
    per_op = {
        op: {
            "per_run": round(n / runs, 2),
            "cpu_ms": round(breakdown["request_cpu_s"][op] / n * 1000, 3),
            "moto_cpu_ms": round(breakdown["moto_cpu_s"][op] / n * 1000, 3),
        }
        for op, n in sorted(breakdown["requests"].items(), key=lambda kv: -kv[1])
    }
    return {
        "cpu_s": round(cpu, 3),
        "moto_handlers_s": round(moto, 3),
        "botocore_and_transport_s": round(requests - moto, 3),
        "rest_s": round(cpu - requests, 3),
        "requests_per_run": round(calls / runs, 2),
        "empty_receives": breakdown["empty_receives"],
        "by_operation": per_op,
    }


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "moto": metadata.version("moto"),
        "boto3": metadata.version("boto3"),
        "botocore": metadata.version("botocore"),
    }


ROWS = [
    ("200 x 5: wall s", "many_s", "{:.2f}"),
    ("200 x 5: CPU s", "many_cpu_s", "{:.2f}"),
    ("per run ms (200 x 5)", "per_run_ms", "{:.1f}"),
    ("1 x 50: wall ms", "long_ms", "{:.0f}"),
    ("per step ms (1 x 50)", "per_step_ms", "{:.2f}"),
    ("import rung.testing ms", "import_ms", "{:.0f}"),
    ("first engine start ms", "first_engine_ms", "{:.0f}"),
    ("import + first engine ms", "import_and_first_engine_ms", "{:.0f}"),
    ("second engine ms", "second_engine_ms", "{:.0f}"),
]


def report(data: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    trees = data["trees"]
    names = list(trees)
    table = Table(title="rung.testing.LocalEngine: a test suite's workload (medians)")
    table.add_column("measure", justify="left")
    for name in names:
        table.add_column(f"{name}\n{trees[name]['label']}", justify="right")
    if len(names) == 2:
        table.add_column("speed-up", justify="right")
    for label in REFERENCE:
        table.add_column(label, justify="right")
    for title, key, fmt in ROWS:
        cells = [fmt.format(trees[n]["derived"][key]) for n in names]
        if len(names) == 2:
            before, after = trees[names[1]]["derived"][key], trees[names[0]]["derived"][key]
            cells.append(f"{before / after:.1f}x" if after else "-")
        for ref in REFERENCE.values():
            ref_key = key if key in ref else key.replace("import_and_", "")
            value = ref.get(ref_key) if key != "first_engine_ms" else None
            cells.append(fmt.format(value) if value is not None else "")
        table.add_row(title, *cells)
    for name in names:
        if "suite" in trees[name]:
            suite = trees[name]["suite"]
            console.print(f"- suite in {name}: {suite['wall_s']}s ({suite['result']})")
    console.print(table)

    split = Table(title="where the 200 x 5 time goes (CPU seconds, instrumented round)")
    split.add_column("", justify="left")
    for name in names:
        split.add_column(name, justify="right")
    rows = [
        ("process CPU", "cpu_s"),
        ("moto's handlers (DynamoDB, SQS)", "moto_handlers_s"),
        ("botocore + transport to moto", "botocore_and_transport_s"),
        ("rung, LocalEngine's threads, the rest", "rest_s"),
        ("requests per run", "requests_per_run"),
    ]
    for title, key in rows:
        split.add_row(title, *[str(trees[n]["where"][key]) for n in names])
    console.print(split)
    ops = Table(title="per request (this tree): CPU ms per call, of which in moto")
    for column in ("operation", "per run", "CPU ms", "moto ms"):
        ops.add_column(column, justify="left" if column == "operation" else "right")
    for op, row in trees[names[0]]["where"]["by_operation"].items():
        ops.add_row(op, str(row["per_run"]), f"{row['cpu_ms']:.2f}", f"{row['moto_cpu_ms']:.2f}")
    console.print(ops)
    for note in data["notes"]:
        console.print(f"- {note}")


NOTES = [
    "The instrumented round's CPU seconds include the instrumentation (a few percent).",
    "moto's handlers: parsing the request against the botocore model, the DynamoDB "
    "expression parser and validator, the item copies an update makes (the old image, "
    "the validated tree), evaluating conditions, building the response and serializing "
    "it against the model; SQS: scanning the queue's messages on every receive.",
    "botocore + transport: building, validating and serializing each request, endpoint "
    "resolution, the event hooks, parsing the response; before the change also SigV4 "
    "signing, a WSGI round trip, moto's dispatcher (which re-scanned its backends per "
    "request) and Flask.",
    "The rest: rung's engine (replay, checkpoints, serialization of values), the "
    "worker and wait threads, trigger validation: small beside the emulator.",
    "Setup: importing rung (boto3 is most of it), importing moto and creating its "
    "DynamoDB and SQS backends, botocore loading the two service models, the table's "
    "and queues' creation.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--long-steps", type=int, default=LONG_STEPS)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per tree")
    parser.add_argument("--against", type=Path, help="another rung checkout to compare with")
    parser.add_argument("--suite", action="store_true", help="also time each tree's test suite")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.runs, args.steps, args.long_steps, args.breakdown)))
        return 0

    from rich.console import Console

    console = Console(width=max(Console().width, 150))
    trees = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    load_before = os.getloadavg()
    began = time.monotonic()
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for n in range(args.rounds):
        for name, tree in trees.items():
            rounds[name].append(one_round(tree, args))
            console.print(f"[dim]round {n + 1}/{args.rounds} {name}: {rounds[name][-1]}[/]")
    out: dict[str, Any] = {}
    for name, tree in trees.items():
        breakdown = one_round(tree, args, breakdown=True)["breakdown"]
        commit = _git(tree, "log", "-1", "--format=%h %s")
        if _git(tree, "status", "--porcelain", "--", "sdk"):
            commit = commit.replace(" ", " (with uncommitted changes to sdk/) ", 1)
        med = medians(rounds[name])
        out[name] = {
            "tree": str(tree),
            "commit": commit,
            "label": commit.split()[0] + ("+" if "uncommitted" in commit else ""),
            "medians": {k: round(v, 4) for k, v in med.items()},
            "derived": {k: round(v, 3) for k, v in derived(med, args).items()},
            "where": where_it_goes(breakdown, args.runs),
            "rounds": rounds[name],
        }
        if args.suite:
            console.print(f"[dim]timing the test suite in {tree}[/]")
            out[name]["suite"] = time_suite(tree)
    load_after = os.getloadavg()
    data: dict[str, Any] = {
        "note": "rung.testing.LocalEngine on a test suite's workload: 200 runs x 5 steps, "
        "1 run x 50 steps, engine setup; each round in a fresh process",
        "machine": {
            **machine(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "settings": {
            "runs": args.runs,
            "steps": args.steps,
            "long_steps": args.long_steps,
            "rounds": args.rounds,
            "workers": 1,
        },
        "reference_from_the_issue": REFERENCE,
        "trees": out,
        "speed_up": (
            {
                key: round(out["against"]["derived"][key] / out["this"]["derived"][key], 2)
                for _, key, _ in ROWS
            }
            if "against" in out
            else None
        ),
        "notes": NOTES,
        "total_s": round(time.monotonic() - began, 1),
    }
    report(data, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    console.print(
        f"load average before {data['machine']['load_average_before']}, after"
        f" {data['machine']['load_average_after']} ({os.cpu_count()} CPUs);"
        f" total {data['total_s']:.0f}s; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
