"""Process an order durably: fetch it, charge the card, email the receipt.

The payment gateway times out once, after it has taken the money (the classic
lost response). The run retries and resumes at the charge step: the order is not
fetched again, and the retried charge reuses the step's idempotency key, so the
provider returns the first charge instead of taking the money twice.

Run it with ``make demo`` (or ``.venv/bin/python examples/orders.py``).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import timedelta

import pydantic
from rich.console import Console
from rich.table import Table

import rung
import rung.testing

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

    The first call takes the money and then times out, so the caller never sees
    the answer. Only the idempotency key keeps the retry from charging twice.
    """

    def __init__(self) -> None:
        self.charges: dict[str, Charge] = {}
        self.timeouts_left = 1

    def charge(self, amount_cents: int, idempotency_key: str) -> Charge:
        if idempotency_key not in self.charges:
            charge_id = f"ch_{len(self.charges) + 1}"
            self.charges[idempotency_key] = Charge(id=charge_id, amount_cents=amount_cents)
        if self.timeouts_left:
            self.timeouts_left -= 1
            raise ConnectionError("payment gateway timeout")
        return self.charges[idempotency_key]


payments = FakePayments()
outbox: list[str] = []
calls: Counter[str] = Counter()  # how often each step function really ran


@rung.step
def fetch_order(order_id: str) -> Order:
    calls["fetch_order"] += 1
    return Order(id=order_id, email="ada@example.com", total_cents=4200)


def charge_card(order: Order) -> Charge:
    calls["charge"] += 1
    key = rung.current_step().idempotency_key  # the same on every attempt of this step
    return payments.charge(order.total_cents, idempotency_key=key)


def send_email(order: Order, charge: Charge) -> None:
    calls["email"] += 1
    outbox.append(f"to {order.email}: order {order.id} paid, charge {charge.id}")


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
    console = Console(width=max(Console().width, 110))  # one line per event, even piped
    began = time.monotonic()
    with rung.testing.LocalEngine(app) as engine:
        handle = engine.trigger("process-order", {"order_id": "o-1"}, idempotency_key="o-1")
        run = engine.wait(handle.run_id, timeout=30)
        again = engine.trigger("process-order", {"order_id": "o-1"}, idempotency_key="o-1")
        history = engine.history(handle.run_id)
    elapsed = time.monotonic() - began

    console.print(f"run {run.run_id}: {run.status} after {run.attempt} attempts")
    console.print(f"output: {run.output}")
    print_trace(console, history)
    console.print(f"email sent: {outbox[0] if outbox else '(none)'}")
    console.print(
        f"the same idempotency key again: run {again.run_id} "
        f"({'a new run' if again.created else 'the same run, not re-run'})"
    )
    console.print(
        f"fetch_order ran {calls['fetch_order']}x, charge ran {calls['charge']}x "
        f"(retry resumed at the charge step), email ran {calls['email']}x; "
        f"card charged {len(payments.charges)}x"
    )
    console.print(
        f"took {elapsed:.1f}s of wall time: the virtual clock skipped the 1s backoff, "
        "the trace keeps it"
    )

    expected = Counter({"fetch_order": 1, "charge": 2, "email": 1})
    ok = (
        run.status == rung.RunStatus.COMPLETED
        and calls == expected
        and len(payments.charges) == 1
        and again.run_id == run.run_id
    )
    if not ok:
        console.print("[bold red]unexpected result[/]: see the trace above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
