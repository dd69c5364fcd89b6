"""What a run's telemetry adds: trace segments, log lines, EMF metrics, events, and their
cost at list price next to the run's orchestration cost.

Runs three 5-step tasks on ``rung.testing.LocalEngine``, one run at a time: plain, with
one step that fails once and is retried, and with a 1-hour ``ctx.wait`` after the
second step (virtual time: the hour passes at once, with the same invocations as on
AWS). LocalEngine plays on the embedded emulator what Lambda and CloudWatch do on AWS
(rung.testing.telemetry), and the bench counts what each run hands them:

* **trace**: every ``PutTraceSegments`` request and the segment documents in it,
  counted at the botocore layer of the engine's X-Ray client, with their bytes (the
  JSON that ``rung._aws.xray.XRay.put`` encodes). Off Lambda that is one request per
  invocation; on Lambda (``Tracing: Active``) the same documents go to the X-Ray daemon
  as UDP datagrams: no request. The run's trace is read back with ``BatchGetTraces``
  (``engine.trace``) to count the segments it holds.
* **logs**: the run's lines, read back from the emulator's CloudWatch Logs with
  ``FilterLogEvents`` (``engine.logs``), billed as CloudWatch Logs bills ingestion: the
  UTF-8 bytes of each message plus 26 bytes per event. On Lambda, Powertools Logger adds
  the invocation's keys to every line (``cold_start``, ``function_name``, ...,
  ``message_id``); the "on Lambda" figure adds them (``LAMBDA_KEYS``, representative
  values) to each line measured here.
* **metrics**: the EMF documents the worker reports (``engine.worker.sinks.metrics``
  wrapped); each is one JSON line of the function's output on Lambda, ingested by
  CloudWatch Logs like any line. CloudWatch bills the metrics themselves per metric
  (name and dimension values) per month, not per run: the bench counts the distinct ones.
* **events**: ``PutEvents`` requests and their entries, counted at the botocore layer of
  the engine's EventBridge client.

Requests that only the emulator needs (``PutLogEvents`` and ``PutMetricData``: Lambda
ships the output itself and CloudWatch extracts EMF from it) are counted and shown, but
cost nothing on AWS beyond the ingestion above. Lambda's own ``START``/``END``/``REPORT``
lines are ingested with or without rung's telemetry and are not counted.

Last, the wall-clock time of 200 runs of 5 steps on LocalEngine with ``telemetry=True``
against ``telemetry=False`` (engines alternating, medians): a ratio, never asserted.

Run it: ``make bench`` or ``.venv/bin/python bench/observability.py``. Results go to
bench/results/observability.json; the orchestration cost comes from
bench/results/api_calls.json (``bench/api_calls.py``) and the wait's from
bench/results/waits.json (``bench/waits.py``).
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import rung
import rung.testing

RESULTS_DIR = Path(__file__).parent / "results"
RESULTS = RESULTS_DIR / "observability.json"
REPEATS = 5
SPEED_RUNS, SPEED_STEPS, SPEED_ROUNDS = 200, 5, 3

# List prices, us-east-1, at the time of writing.
PRICE_LOGS_PER_GB = 0.50  # $ per GB ingested by CloudWatch Logs (standard log class)
PRICE_XRAY_RECORDED = 5.00  # $ per million X-Ray traces recorded
PRICE_XRAY_SCANNED = 0.50  # $ per million X-Ray traces retrieved or scanned
PRICE_EVENTS = 1.00  # $ per million EventBridge custom events (64 KB chunks) put
PRICE_METRIC_MONTH = 0.30  # $ per custom metric per month, the first 10,000 metrics
GB = 10**9  # bytes: the larger of the two readings of a GB, so the higher estimate
LOG_EVENT_OVERHEAD = 26  # bytes CloudWatch Logs bills per event besides its message
EVENT_CHUNK = 64 * 1024  # EventBridge bills an event per started 64 KB of its entry
TRACES_PER_RUN = 1  # rung writes one trace per run, however many invocations
SCANS_PER_TRACE = 1  # assumed: each trace is retrieved or scanned once

#: The keys Powertools Logger adds to every line on Lambda (``inject_lambda_context``,
#: the invocation's X-Ray trace, and the SQS message id the worker appends), with
#: representative values: LocalEngine's lines do not have them.
LAMBDA_KEYS: dict[str, Any] = {
    "cold_start": False,
    "function_name": "rung-bench-worker",
    "function_memory_size": "1024",
    "function_arn": "arn:aws:lambda:us-east-1:123456789012:function:rung-bench-worker",
    "function_request_id": "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d",
    "xray_trace_id": "1-6752a1b0-5e0c1f3d2a4b6c8d9e0f1a2b",
    "message_id": "059f36b4-87a3-44ab-83d2-661975830a7d",
}
#: What adding them costs a line: ``,"key":value`` each.
LAMBDA_KEY_BYTES = sum(
    len(f",{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}".encode())
    for k, v in LAMBDA_KEYS.items()
)


# -- the tasks measured ------------------------------------------------------------------

app = rung.App("bench")
_failed_once: set[str] = set()


def work(i: int) -> int:
    return i


def flaky(i: int) -> int:
    """Fails the first time it runs in each run (a transient error), then succeeds."""
    key = rung.current_step().idempotency_key
    if key not in _failed_once:
        _failed_once.add(key)
        raise ConnectionError("transient failure (bench)")
    return i


_RETRY = rung.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1))


@app.task(id="steps-5", retry=_RETRY)
def steps_5(ctx: rung.Context, payload: dict[str, str]) -> int:
    return sum(ctx.step("work", work, i) for i in range(5))


@app.task(id="steps-5-retry", retry=_RETRY)
def steps_5_retry(ctx: rung.Context, payload: dict[str, str]) -> int:
    return sum(ctx.step("work", flaky if i == 2 else work, i) for i in range(5))


@app.task(id="steps-5-wait", retry=_RETRY)
def steps_5_wait(ctx: rung.Context, payload: dict[str, str]) -> int:
    total = 0
    for i in range(5):
        if i == 2:
            ctx.wait(timedelta(hours=1))
        total += ctx.step("work", work, i)
    return total


@dataclass(frozen=True)
class Variant:
    name: str
    task_id: str


VARIANTS = [
    Variant("5 steps", "steps-5"),
    Variant("5 steps, one retry", "steps-5-retry"),
    Variant("5 steps, 1-hour wait", "steps-5-wait"),
]


# -- the meter -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What one run handed to X-Ray, CloudWatch and EventBridge."""

    requests: Counter[str] = field(default_factory=Counter)  # by operation
    invocations: int = 0  # its AttemptStarted and AttemptResumed lines: one per invocation
    segment_documents: int = 0
    segment_bytes: int = 0
    trace_segments: int = 0  # distinct segments and subsegments X-Ray holds for the run
    log_lines: int = 0
    log_bytes: int = 0  # the messages' UTF-8 bytes
    emf_documents: int = 0
    emf_bytes: int = 0  # the JSON lines' UTF-8 bytes
    events: int = 0  # PutEvents entries
    event_chunks: int = 0  # billed events: one per started 64 KB of an entry
    metrics: set[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=set)

    @property
    def log_bytes_billed(self) -> int:
        return self.log_bytes + LOG_EVENT_OVERHEAD * self.log_lines

    @property
    def log_bytes_billed_lambda(self) -> int:
        return self.log_bytes_billed + LAMBDA_KEY_BYTES * self.log_lines

    @property
    def emf_bytes_billed(self) -> int:
        return self.emf_bytes + LOG_EVENT_OVERHEAD * self.emf_documents

    def counts(self) -> tuple[Any, ...]:
        """What must not vary between repeats (sizes do: timestamps, durations)."""
        return (
            self.invocations,
            tuple(sorted(self.requests.items())),
            self.segment_documents,
            self.trace_segments,
            self.log_lines,
            self.emf_documents,
            self.events,
            frozenset(self.metrics),
        )


class Meter:
    """Counts the telemetry of the engine's runs: botocore hooks on its X-Ray,
    EventBridge, CloudWatch Logs and CloudWatch clients, and a wrapper around the
    worker's EMF sink."""

    OPERATIONS = ("PutTraceSegments", "PutEvents", "PutLogEvents", "PutMetricData")

    def __init__(self, engine: rung.testing.LocalEngine) -> None:
        telemetry = engine.telemetry
        events = engine.worker.sinks.events
        emf = engine.worker.sinks.metrics
        assert telemetry is not None and events is not None and emf is not None
        self._lock = threading.Lock()
        self.tally = Tally()
        for client in (
            telemetry.xray.client,
            events.client,
            telemetry.stream.client,
            telemetry.cloudwatch,
        ):
            client.meta.events.register("before-parameter-build", self._count)
        sink: Callable[[dict[str, Any]], None] = emf

        def metered(document: dict[str, Any]) -> None:
            self._emf(document)
            sink(document)

        engine.worker.sinks.metrics = metered

    def reset(self) -> Tally:
        with self._lock:
            done, self.tally = self.tally, Tally()
        return done

    def _count(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        op: str = model.name
        if op not in self.OPERATIONS:
            return  # reading back (BatchGetTraces, FilterLogEvents...) is the bench's
        with self._lock:
            tally = self.tally
            tally.requests[op] += 1
            if op == "PutTraceSegments":
                documents = params["TraceSegmentDocuments"]
                tally.segment_documents += len(documents)
                tally.segment_bytes += sum(len(d.encode()) for d in documents)
            elif op == "PutEvents":
                for entry in params["Entries"]:
                    tally.events += 1
                    size = len(json.dumps(entry, default=str).encode())
                    tally.event_chunks += -(-size // EVENT_CHUNK)

    def _emf(self, document: dict[str, Any]) -> None:
        line = json.dumps(document, separators=(",", ":"))  # as the Lambda worker prints it
        with self._lock:
            tally = self.tally
            tally.emf_documents += 1
            tally.emf_bytes += len(line.encode())
            for directive in document["_aws"]["CloudWatchMetrics"]:
                for dimensions in directive["Dimensions"]:
                    values = tuple((d, str(document[d])) for d in dimensions)
                    for metric in directive["Metrics"]:
                        tally.metrics.add((metric["Name"], values))


# -- running ---------------------------------------------------------------------------------


@dataclass
class Measured:
    variant: Variant
    tallies: list[Tally]

    @property
    def stable(self) -> bool:
        return all(t.counts() == self.tallies[0].counts() for t in self.tallies)

    @property
    def tally(self) -> Tally:
        return self.tallies[0]

    def mean(self, attribute: str) -> float:
        return float(statistics.mean(getattr(t, attribute) for t in self.tallies))

    def per_task_metrics(self) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        """The metrics by app and task (and step): billed for each task of the app."""
        return {m for t in self.tallies for m in t.metrics if m[1][0][0] != "table"}

    def per_stack_metrics(self) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        """The metrics by table alone: one set for the stack, whatever its tasks."""
        return {m for t in self.tallies for m in t.metrics if m[1][0][0] == "table"}


def measure(engine: rung.testing.LocalEngine, meter: Meter, variant: Variant) -> Measured:
    tallies = []
    for _ in range(REPEATS):
        meter.reset()
        handle = engine.trigger(variant.task_id, {"order_id": "o-1"})
        # wait() returns once no worker still handles the run's messages: its segments,
        # metrics and events are sent, and its lines flushed to the log group.
        run = engine.wait(handle.run_id, timeout=60)
        if run.status != rung.RunStatus.COMPLETED:
            raise SystemExit(f"{variant.name}: run {run.run_id} ended {run.status}: {run.error}")
        tally = meter.reset()
        lines = engine.logs(handle.run_id)
        tally.log_lines = len(lines)
        tally.invocations = sum(
            line.fields.get("rung_event") in ("AttemptStarted", "AttemptResumed") for line in lines
        )
        tally.log_bytes = sum(len(line.message.encode()) for line in lines)
        tally.trace_segments = len(_segment_ids(engine.trace(handle.run_id)))
        tallies.append(tally)
    return Measured(variant, tallies)


def _segment_ids(documents: list[dict[str, Any]]) -> set[str]:
    ids: set[str] = set()

    def walk(document: dict[str, Any]) -> None:
        ids.add(document["id"])
        for sub in document.get("subsegments", []):
            walk(sub)

    for document in documents:
        walk(document)
    return ids


def wall_clock_ratio(console: Console) -> dict[str, Any]:
    """200 runs x 5 steps with telemetry on and off, engines alternating."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(SPEED_ROUNDS):
        for telemetry in (False, True):
            with rung.testing.LocalEngine(app, telemetry=telemetry) as engine:
                engine.wait(engine.trigger("steps-5", {}).run_id)  # warm the worker's path
                began = time.perf_counter()
                handles = [engine.trigger("steps-5", {}) for _ in range(SPEED_RUNS)]
                runs = [engine.wait(h.run_id, timeout=600) for h in handles]
                times[telemetry].append(time.perf_counter() - began)
            if any(r.status != rung.RunStatus.COMPLETED for r in runs):
                raise SystemExit("a run of the wall-clock comparison did not complete")
    off, on = statistics.median(times[False]), statistics.median(times[True])
    console.print(
        f"wall clock, {SPEED_RUNS} runs x {SPEED_STEPS} steps on LocalEngine (median of"
        f" {SPEED_ROUNDS}): telemetry off {off:.2f}s, on {on:.2f}s:"
        f" [bold]{on / off:.2f}x[/] (the emulator's X-Ray, CloudWatch Logs, CloudWatch and"
        " EventBridge handlers do the added work; on Lambda the segments go over UDP and the"
        " lines to stdout, so this ratio says nothing about Lambda)"
    )
    return {
        "runs": SPEED_RUNS,
        "steps": SPEED_STEPS,
        "rounds": SPEED_ROUNDS,
        "telemetry_off_s": [round(t, 3) for t in times[False]],
        "telemetry_on_s": [round(t, 3) for t in times[True]],
        "median_off_s": round(off, 3),
        "median_on_s": round(on, 3),
        "ratio_on_over_off": round(on / off, 3),
    }


# -- cost ----------------------------------------------------------------------------------


def cost_per_million(m: Measured) -> dict[str, float]:
    """Added $ per million runs at list price, by service."""
    logs_bytes = m.mean("log_bytes_billed_lambda") + m.mean("emf_bytes_billed")
    return {
        "cloudwatch_logs": logs_bytes * 1e6 / GB * PRICE_LOGS_PER_GB,
        "xray": TRACES_PER_RUN * (PRICE_XRAY_RECORDED + SCANS_PER_TRACE * PRICE_XRAY_SCANNED),
        "eventbridge": m.tally.event_chunks * PRICE_EVENTS,
    }


def orchestration() -> dict[str, float | None]:
    """The orchestration $ per million runs of each variant, from the other benches'
    results: api_calls.json for the plain and the retried run; the wait's added cost
    (waits.json, 1 hour) on top of the plain run for the run with a wait."""
    costs = json.loads((RESULTS_DIR / "api_calls.json").read_text())[
        "cost_per_million_5_step_runs_usd"
    ]
    base = float(costs["rung"])
    waits_file = RESULTS_DIR / "waits.json"
    wait: float | None = None
    if waits_file.exists():
        wait = base + float(
            json.loads(waits_file.read_text())["waits"]["1 hour"]["added_cost_usd_per_million_runs"]
        )
    return {
        "5 steps": base,
        "5 steps, one retry": float(costs["rung, every run retries once"]),
        "5 steps, 1-hour wait": wait,
    }


# -- reporting ---------------------------------------------------------------------------


def _bytes(value: float) -> str:
    return f"{value:,.0f}"


def report(results: list[Measured], speed: dict[str, Any], console: Console) -> dict[str, Any]:
    table = Table(title="what a run hands to X-Ray, CloudWatch and EventBridge (LocalEngine)")
    table.add_column("per run")
    for m in results:
        table.add_column(m.variant.name + ("" if m.stable else " (varied!)"), justify="right")

    def row(label: str, cell: Callable[[Measured], str], end: bool = False) -> None:
        table.add_row(label, *[cell(m) for m in results], end_section=end)

    row("invocations (AttemptStarted/Resumed lines)", lambda m: str(m.tally.invocations))
    row("trace: segment documents sent", lambda m: str(m.tally.segment_documents))
    row("trace: bytes sent", lambda m: _bytes(m.mean("segment_bytes")))
    row("trace: segments in X-Ray (BatchGetTraces)", lambda m: str(m.tally.trace_segments))
    row(
        "trace: PutTraceSegments off Lambda",
        lambda m: str(m.tally.requests["PutTraceSegments"]),
    )
    row("trace: requests on Lambda (UDP to the daemon)", lambda m: "0", end=True)
    row("logs: lines", lambda m: str(m.tally.log_lines))
    row("logs: bytes billed (message + 26 each)", lambda m: _bytes(m.mean("log_bytes_billed")))
    row(
        f"logs: bytes billed on Lambda (+{LAMBDA_KEY_BYTES} keys a line)",
        lambda m: _bytes(m.mean("log_bytes_billed_lambda")),
        end=True,
    )
    row("metrics: EMF documents (log lines)", lambda m: str(m.tally.emf_documents))
    row("metrics: EMF bytes billed (line + 26 each)", lambda m: _bytes(m.mean("emf_bytes_billed")))
    row(
        "metrics: distinct metrics, by task (+ by table)",
        lambda m: f"{len(m.per_task_metrics())} (+{len(m.per_stack_metrics())})",
        end=True,
    )
    row("events: PutEvents requests", lambda m: str(m.tally.requests["PutEvents"]))
    row("events: billed events", lambda m: str(m.tally.event_chunks), end=True)
    row(
        "emulator only: PutLogEvents / PutMetricData",
        lambda m: f"{m.tally.requests['PutLogEvents']} / {m.tally.requests['PutMetricData']}",
    )
    console.print(table)
    for m in results:
        if not m.stable:
            console.print(f"[red]{m.variant.name}: the counts differ between repeats[/]")

    orch = orchestration()
    cost = Table(title="added cost per million runs, list price (us-east-1)")
    cost.add_column("$ per million runs")
    for m in results:
        cost.add_column(m.variant.name, justify="right")
    costs = {m.variant.name: cost_per_million(m) for m in results}
    labels = {
        "cloudwatch_logs": "CloudWatch Logs ingestion (log + EMF lines)",
        "xray": "X-Ray: 1 trace recorded + scanned once",
        "eventbridge": "EventBridge events",
    }
    for key, label in labels.items():
        cost.add_row(label, *[f"${costs[m.variant.name][key]:,.2f}" for m in results])
    totals = {name: sum(c.values()) for name, c in costs.items()}
    cost.add_row(
        "[bold]telemetry, total[/]",
        *[f"[bold]${totals[m.variant.name]:,.2f}[/]" for m in results],
        end_section=True,
    )

    def orch_cell(m: Measured) -> str:
        value = orch.get(m.variant.name)
        return "n/a" if value is None else f"${value:,.2f}"

    cost.add_row("orchestration (bench/api_calls.py, waits.py)", *[orch_cell(m) for m in results])

    def share(m: Measured, part: float) -> str:
        value = orch.get(m.variant.name)
        return "n/a" if not value else f"+{part / value:.0%}"

    cost.add_row(
        "tracing, against orchestration",
        *[share(m, costs[m.variant.name]["xray"]) for m in results],
    )
    cost.add_row(
        "all telemetry, against orchestration",
        *[share(m, totals[m.variant.name]) for m in results],
    )
    console.print(cost)

    per_task = max(len(m.per_task_metrics()) for m in results)
    per_stack = len(set().union(*(m.per_stack_metrics() for m in results)))
    every_task = set().union(*(m.per_task_metrics() for m in results))
    console.print(
        f"- metrics are billed per metric per month, not per run (${PRICE_METRIC_MONTH:.2f} a"
        f" metric-month for the first 10,000, prorated by the hour they receive data): a 5-step"
        f" task reports {len(results[0].per_task_metrics())} by app and task (and step),"
        f" {per_task} once it retries ({len(every_task)} over these three tasks, which differ"
        f" in name), each also by table: {per_stack} for the stack. A task whose runs retry"
        f" costs about ${per_task * PRICE_METRIC_MONTH:.2f} a month however many runs it has;"
        " each further step name adds StepDuration (and StepFailures when it fails)."
    )

    base_name = results[0].variant.name
    base_orch = orch[base_name]
    assert base_orch is not None
    xray = costs[base_name]["xray"]
    doubles = xray > base_orch
    console.print(
        f"- full tracing adds [bold]${xray:.2f}[/] per million runs against"
        f" ${base_orch:.2f} of orchestration for a 5-step run (+{xray / base_orch:.0%}):"
        f" it does {'' if doubles else 'not '}more than double the cost, so"
        + (
            " runs should be sampled by default."
            if doubles
            else " every run is traced by default (RUNG_TRACE_SAMPLE_RATE=1)."
        )
        + f" All telemetry together adds ${totals[base_name]:.2f}"
        f" (+{totals[base_name] / base_orch:.0%})."
    )
    console.print(
        f"- prices: CloudWatch Logs ${PRICE_LOGS_PER_GB:.2f}/GB ingested (GB = 10^9 bytes);"
        f" X-Ray ${PRICE_XRAY_RECORDED:.2f}/M traces recorded, ${PRICE_XRAY_SCANNED:.2f}/M"
        f" retrieved or scanned (the first 100,000 recorded and 1,000,000 scanned a month are"
        f" free; not deducted); EventBridge ${PRICE_EVENTS:.2f}/M custom events; CloudWatch"
        f" ${PRICE_METRIC_MONTH:.2f}/metric-month. Compute left out, as in the orchestration"
        " cost."
    )

    return {
        "note": "what a run's telemetry adds, on rung.testing.LocalEngine, and its list price",
        "repeats": REPEATS,
        "lambda_key_bytes_per_line": LAMBDA_KEY_BYTES,
        "variants": [
            {
                "name": m.variant.name,
                "task_id": m.variant.task_id,
                "invocations": m.tally.invocations,
                "stable_across_repeats": m.stable,
                "trace": {
                    "segment_documents": m.tally.segment_documents,
                    "bytes": round(m.mean("segment_bytes")),
                    "segments_in_xray": m.tally.trace_segments,
                    "put_trace_segments_requests_off_lambda": m.tally.requests["PutTraceSegments"],
                    "requests_on_lambda": 0,
                },
                "logs": {
                    "lines": m.tally.log_lines,
                    "bytes": round(m.mean("log_bytes")),
                    "bytes_billed": round(m.mean("log_bytes_billed")),
                    "bytes_billed_on_lambda": round(m.mean("log_bytes_billed_lambda")),
                },
                "metrics": {
                    "emf_documents": m.tally.emf_documents,
                    "emf_bytes": round(m.mean("emf_bytes")),
                    "emf_bytes_billed": round(m.mean("emf_bytes_billed")),
                    "distinct_metrics_by_task": len(m.per_task_metrics()),
                    "distinct_metrics_by_table": len(m.per_stack_metrics()),
                    "names": sorted({name for name, _ in m.per_task_metrics()}),
                },
                "events": {
                    "put_events_requests": m.tally.requests["PutEvents"],
                    "billed_events": m.tally.event_chunks,
                },
                "emulator_only_requests": {
                    "PutLogEvents": m.tally.requests["PutLogEvents"],
                    "PutMetricData": m.tally.requests["PutMetricData"],
                },
                "added_cost_usd_per_million_runs": {
                    **{k: round(v, 4) for k, v in costs[m.variant.name].items()},
                    "total": round(totals[m.variant.name], 4),
                },
                "orchestration_usd_per_million_runs": orch.get(m.variant.name),
            }
            for m in results
        ],
        "metrics_per_month": {
            "billed": "per metric (name + dimension values) per month, not per run",
            "by_task_5_steps": len(results[0].per_task_metrics()),
            "by_task_with_retries": per_task,
            "by_table_per_stack": per_stack,
            "usd_per_metric_month": PRICE_METRIC_MONTH,
        },
        "tracing": {
            "usd_per_million_runs": round(xray, 4),
            "orchestration_usd_per_million_5_step_runs": base_orch,
            "more_than_doubles": doubles,
        },
        "prices": {
            "cloudwatch_logs_usd_per_gb": PRICE_LOGS_PER_GB,
            "xray_usd_per_million_traces_recorded": PRICE_XRAY_RECORDED,
            "xray_usd_per_million_traces_scanned": PRICE_XRAY_SCANNED,
            "eventbridge_usd_per_million_events": PRICE_EVENTS,
            "cloudwatch_usd_per_metric_month": PRICE_METRIC_MONTH,
        },
        "wall_clock": speed,
    }


def main() -> int:
    console = Console(width=max(Console().width, 120))
    began = time.monotonic()
    with rung.testing.LocalEngine(app) as engine:
        meter = Meter(engine)
        # The first flush creates the log group and stream: not a run's cost.
        engine.wait(engine.trigger("steps-5", {}).run_id)
        meter.reset()
        results = [measure(engine, meter, v) for v in VARIANTS]
    speed = wall_clock_ratio(console)
    data = report(results, speed, console)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"wrote {RESULTS} in {time.monotonic() - began:.1f}s")
    return 0 if all(m.stable for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
