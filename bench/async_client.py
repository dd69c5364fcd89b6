"""``rung.AsyncClient`` against the sync ``Client``: what the thread pool costs and buys.

On the embedded emulator in a process of its own (as ``rung dev`` runs it, so the
client's process waits on sockets as it would on AWS), with 50 runs stored:

* **one call**: ``get_run`` awaited one after another, against the sync client's
  call: the pool's hop costs this much per call (the ratio is the overhead).
* **50 at once**: ``asyncio.gather`` of 50 ``get_run`` calls (``max_workers`` 16)
  against the same 50 made one after another by the sync client.
* **the loop**: while the 50 are in flight, a ticker on the loop sleeps 1 ms at a
  time; its longest gap is how long the loop was kept from running other work
  (a sync call made on the loop would keep it for the whole call).

Why threads and not aiobotocore (an async botocore): docs/async.md.

Run it: ``.venv/bin/python bench/async_client.py``. Results go to
bench/results/async_client.json.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import rung
from rung._aws import sessions
from rung._aws.dynamodb import DynamoStore
from rung._aws.sqs import SqsQueue
from rung._dev import emulator as dev_emulator

RESULTS = Path(__file__).parent / "results" / "async_client.json"
RUNS = 50
ROUNDS = 5

app = rung.App("bench-async-client")


@app.task(id="noop")
def noop(ctx: rung.Context, payload: int) -> int:
    return payload


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def ticker(stop: asyncio.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def measure(client: rung.AsyncClient, ids: list[str]) -> dict[str, float]:
    sync = client.sync
    began = time.perf_counter()
    for run_id in ids:
        sync.get_run(run_id)
    sync_each = (time.perf_counter() - began) / len(ids)
    began = time.perf_counter()
    for run_id in ids:
        await client.get_run(run_id)
    async_each = (time.perf_counter() - began) / len(ids)
    stop, gaps = asyncio.Event(), []  # type: ignore[var-annotated]
    tick = asyncio.create_task(ticker(stop, gaps))
    await asyncio.sleep(0.01)
    gaps.clear()
    began = time.perf_counter()
    await asyncio.gather(*(client.get_run(run_id) for run_id in ids))
    gathered = time.perf_counter() - began
    stop.set()
    await tick
    began = time.perf_counter()
    for run_id in ids:
        sync.get_run(run_id)
    sequential = time.perf_counter() - began
    return {
        "sync_call_ms": sync_each * 1000,
        "async_call_ms": async_each * 1000,
        "gathered_50_ms": gathered * 1000,
        "sequential_50_ms": sequential * 1000,
        "loop_longest_gap_ms": max(gaps) * 1000 if gaps else 0.0,
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as state:
        emulator = dev_emulator.ensure(Path(state), "127.0.0.1", free_port())
        try:
            name = f"rung-bench-client-{secrets.token_hex(3)}"
            store = DynamoStore(sessions.client("dynamodb", emulator.endpoint_url), name)
            store.create_table()
            sqs = sessions.client("sqs", emulator.endpoint_url)
            queue_url, _ = SqsQueue.create(sqs, name, visibility_timeout=timedelta(seconds=60))
            client = rung.Client(
                app, table_name=name, queue_url=queue_url, endpoint_url=emulator.endpoint_url
            )
            ids = [client.trigger("noop", n).run_id for n in range(RUNS)]

            async def rounds() -> list[dict[str, float]]:
                async with rung.AsyncClient.of(client) as pooled:
                    await measure(pooled, ids)  # warm the pool and the connections
                    return [await measure(pooled, ids) for _ in range(ROUNDS)]

            results = asyncio.run(rounds())
        finally:
            dev_emulator.stop(Path(state))
    median: dict[str, Any] = {
        key: round(statistics.median(r[key] for r in results), 3) for key in results[0]
    }
    median["overhead_ratio"] = round(median["async_call_ms"] / median["sync_call_ms"], 2)
    median["gather_speedup"] = round(median["sequential_50_ms"] / median["gathered_50_ms"], 2)
    table = Table(title=f"get_run, emulator in its own process (median of {ROUNDS} rounds)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("sync Client, one call", f"{median['sync_call_ms']:.2f} ms")
    table.add_row(
        "AsyncClient, one call awaited",
        f"{median['async_call_ms']:.2f} ms (x{median['overhead_ratio']})",
    )
    table.add_row("50 calls, sync one after another", f"{median['sequential_50_ms']:.1f} ms")
    table.add_row(
        "50 calls, AsyncClient gathered",
        f"{median['gathered_50_ms']:.1f} ms (x{median['gather_speedup']} faster)",
    )
    table.add_row(
        "longest the loop waited during the 50", f"{median['loop_longest_gap_ms']:.1f} ms"
    )
    Console(width=120).print(table)
    RESULTS.write_text(json.dumps({"runs": RUNS, "rounds": ROUNDS, **median}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
