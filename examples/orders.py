"""Process an order durably: fetch it, charge the card, email the receipt.

The payment gateway times out once, after it has taken the money (the classic
lost response). The run retries and resumes at the charge step: the order is not
fetched again, and the retried charge reuses the step's idempotency key, so the
provider returns the first charge instead of taking the money twice.

Run it with ``make demo`` (or ``.venv/bin/python examples/orders.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

import rung
import rung.testing

if TYPE_CHECKING:  # the demo's terminal output; the task code needs no rich on Lambda
    from rich.console import Console

app = rung.App("shop")


class OrderIn(pydantic.BaseModel):
    order_id: str


class Order(pydantic.BaseModel):
    id: str
    email: str
    total_cents: int


class Charge(pydantic.BaseModel):
    id: str
    amount_cents: int


class FakePayments:
    """Stands in for Stripe: charges are de-duplicated by idempotency key.

    The first call with a key takes the money and then times out, so the caller never
    sees the answer. Only the idempotency key keeps the retry from charging twice. Its
    state is a JSON file, so that it is shared by `rung dev`'s worker processes; each
    charge (each run's charge step) times out once, so every order shows the retry,
    however many ran before with the same file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"charges": {}}
        return dict(json.loads(self.path.read_text()))

    @property
    def charges(self) -> dict[str, Any]:
        return dict(self._load()["charges"])

    def charge(self, amount_cents: int, idempotency_key: str) -> Charge:
        state = self._load()
        known = state["charges"].get(idempotency_key)
        if known is None:  # take the money ... and lose the answer
            charge_id = f"ch_{len(state['charges']) + 1}"
            state["charges"][idempotency_key] = {"id": charge_id, "amount_cents": amount_cents}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(state))
            raise ConnectionError("payment gateway timeout")
        return Charge(**known)


STATE_DIR = Path(os.environ.get("RUNG_DEMO_STATE", Path(tempfile.gettempdir()) / "rung-demo"))
payments = FakePayments(STATE_DIR / "payments.json")


def record_call(step: str, note: str = "") -> None:
    """Count real executions of step functions, across processes."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / "calls.log").open("a") as log:
        log.write(f"{step}\t{note}\n")


def calls() -> Counter[str]:
    path = STATE_DIR / "calls.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split("\t")[0] for line in lines)


@rung.step
def fetch_order(order_id: str) -> Order:
    record_call("fetch_order")
    return Order(id=order_id, email="ada@example.com", total_cents=4200)


def charge_card(order: Order) -> Charge:
    record_call("charge")
    key = rung.current_step().idempotency_key  # the same on every attempt of this step
    return payments.charge(order.total_cents, idempotency_key=key)


def send_email(order: Order, charge: Charge) -> None:
    record_call("email", f"to {order.email}: order {order.id} paid, charge {charge.id}")


@app.task(
    id="process-order",
    retry=rung.RetryPolicy(
        max_attempts=5,
        initial_interval=timedelta(seconds=1),
        backoff=2.0,
        max_interval=timedelta(minutes=1),
    ),
)
def process_order(ctx: rung.Context, payload: OrderIn) -> dict[str, str]:
    order = fetch_order(payload.order_id)  # a @rung.step call: checkpointed
    charge = ctx.step("charge", charge_card, order)  # the explicit form
    ctx.step("email", send_email, order, charge)
    return {"order_id": order.id, "charge_id": charge.id}


# -- the demo: run it end to end on the in-process emulator ---------------------------


def print_trace(console: Console, history: list[rung.HistoryEvent]) -> None:
    from rich.table import Table

    start = history[0].timestamp
    table = Table()
    for column in ("event", "step", "attempt", "t", "delay", "error"):
        table.add_column(column, justify="right" if column in ("attempt", "t") else "left")
    for event in history:
        offset = (event.timestamp - start).total_seconds()
        table.add_row(
            event.type,
            event.step or "",
            str(event.attempt or ""),
            f"+{offset:.3f}s",
            f"{event.delay.total_seconds():g}s" if event.delay is not None else "",
            str(event.error) if event.error is not None else "",
        )
    console.print(table)


def main() -> int:
    """Run the demo: ``--dev`` on the embedded stack (as `make demo`), else in-process."""
    from rich.console import Console

    shutil.rmtree(STATE_DIR, ignore_errors=True)
    STATE_DIR.mkdir(parents=True)
    console = Console(width=max(Console().width, 110))  # one line per event, even piped
    began = time.monotonic()
    if "--dev" in sys.argv[1:]:
        run, again, history = _on_the_embedded_stack(console)
    else:
        with rung.testing.LocalEngine(app) as engine:
            handle = engine.trigger("process-order", {"order_id": "o-1"}, idempotency_key="o-1")
            run = engine.wait(handle.run_id, timeout=30)
            again = engine.trigger("process-order", {"order_id": "o-1"}, idempotency_key="o-1")
            history = engine.history(handle.run_id)
        console.print(f"run {run.run_id}: {run.status} after {run.attempt} attempts")
        console.print(f"output: {run.output}")
        print_trace(console, history)
    elapsed = time.monotonic() - began
    counted = calls()
    emails = [
        line.split("\t")[1]
        for line in (STATE_DIR / "calls.log").read_text().splitlines()
        if line.startswith("email")
    ]
    console.print(f"email sent: {emails[0] if emails else '(none)'}")
    console.print(
        f"the same idempotency key again: run {again.run_id} "
        f"({'a new run' if again.created else 'the same run, not re-run'})"
    )
    console.print(
        f"fetch_order ran {counted['fetch_order']}x, charge ran {counted['charge']}x "
        f"(retry resumed at the charge step), email ran {counted['email']}x; "
        f"card charged {len(payments.charges)}x"
    )
    console.print(f"took {elapsed:.1f}s of wall time")
    expected = Counter({"fetch_order": 1, "charge": 2, "email": 1})
    ok = (
        run.status == rung.RunStatus.COMPLETED
        and counted == expected
        and len(payments.charges) == 1
        and again.run_id == run.run_id
    )
    if not ok:
        console.print("[bold red]unexpected result[/]: see the trace above")
    return 0 if ok else 1


def _on_the_embedded_stack(
    console: Console,
) -> tuple[rung.Run, rung.RunHandle, list[rung.HistoryEvent]]:
    """`rung dev` in miniature: emulator, stack, worker processes; then `rung runs trace`."""
    from rung._dev import DevOptions, DevStack

    os.environ["RUNG_DEMO_STATE"] = str(STATE_DIR)  # the worker processes share the fakes
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    options = DevOptions(
        app="examples.orders:app", port=port, workers=2, state_dir=STATE_DIR / ".rung", reload=False
    )
    with DevStack(
        options, emit=lambda line: console.print(line, highlight=False, soft_wrap=True)
    ) as dev:
        handle = dev.client.trigger("process-order", {"order_id": "o-1"}, idempotency_key="o-1")
        run = dev.wait(handle.run_id, timeout=60)
        again = dev.client.trigger("process-order", {"order_id": "o-1"}, idempotency_key="o-1")
        history = dev.client.history(handle.run_id)
        time.sleep(0.5)  # let the console catch the last events
        console.rule(f"rung runs trace {run.run_id}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rung.cli",
                "--endpoint-url",
                dev.endpoint_url,
                "--stack",
                dev.stack_name,
                "runs",
                "trace",
                run.run_id,
            ],
            check=False,
            env={**os.environ, "COLUMNS": str(console.width)},
        )
    return run, again, history


if __name__ == "__main__":
    sys.exit(main())
