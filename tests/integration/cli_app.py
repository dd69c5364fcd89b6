"""Tasks for the CLI tests (tests/integration/test_cli.py), named by ``--app``."""

from __future__ import annotations

from datetime import timedelta

import pydantic

import rung
from rung.testing import SimulatedCrash

app = rung.App("clitest")

FAST_RETRY = rung.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1))


class Greeting(pydantic.BaseModel):
    name: str


class Order(pydantic.BaseModel):
    order_id: str


@app.task(id="nightly")
def nightly(ctx: rung.Context, event: rung.ScheduleEvent) -> str:
    return event.scheduled_at.isoformat()


@app.task(id="greet")
def greet(ctx: rung.Context, payload: Greeting) -> dict[str, str]:
    text = ctx.step("compose", lambda: f"hello {payload.name}")
    return {"greeting": text}


@rung.step
def fetch_order(order_id: str) -> dict[str, str]:
    return {"id": order_id}


def charge_card(order: dict[str, str]) -> str:
    if rung.current_step().attempt == 1:
        raise ConnectionError("payment gateway timeout")
    return f"ch_{order['id']}"


@app.task(id="process-order", retry=FAST_RETRY)
def process_order(ctx: rung.Context, payload: Order) -> dict[str, str]:
    order = fetch_order(payload.order_id)
    charge = ctx.step("charge", charge_card, order)
    ctx.step("email", lambda: f"receipt for {charge}")
    return {"order_id": order["id"], "charge_id": charge}


@app.task(id="decline", retry=rung.RetryPolicy(max_attempts=1))
def decline(ctx: rung.Context, payload: Order) -> None:
    def charge() -> None:
        raise ValueError(f"card declined for order {payload.order_id}")

    ctx.step("charge", charge)


@app.task(id="crash-once", retry=FAST_RETRY)
def crash_once(ctx: rung.Context, payload: None) -> str:
    def work() -> str:
        if ctx.attempt == 1:
            raise SimulatedCrash("the worker dies here")  # the test's worker loop lets it go
        return "done"

    return ctx.step("work", work)


# -- the lifecycle: tokens, cancel, redrive, children ------------------------------------

#: Switched by the redrive test: the "bug" in step three, fixed before the redrive.
FLAGS = {"bug": True}


@app.task(id="approve")
def approve(ctx: rung.Context, payload: None) -> dict[str, object]:
    token = ctx.create_token("approval", heartbeat_timeout=timedelta(hours=1))
    try:
        return {"answer": ctx.wait_for_token(token)}
    except rung.TokenFailed as exc:
        return {"rejected": exc.message}


@app.task(id="sign")
def sign(ctx: rung.Context, payload: None) -> object:
    token = ctx.create_token("signature")  # no heartbeat_timeout
    return ctx.wait_for_token(token)


@app.task(id="nap")
def nap(ctx: rung.Context, payload: None) -> str:
    ctx.wait(timedelta(hours=1))
    return "rested"


@app.task(id="nap-family")
def nap_family(ctx: rung.Context, payload: None) -> object:
    return ctx.trigger_and_wait(nap, None)  # the parent waits with no timer of its own


@app.task(id="pipeline", retry=rung.RetryPolicy(max_attempts=1))
def pipeline(ctx: rung.Context, payload: None) -> list[str]:
    def three() -> str:
        if FLAGS["bug"]:
            raise KeyError("the bug")
        return "three"

    return [
        ctx.step("one", lambda: "one"),
        ctx.step("two", lambda: "two"),
        ctx.step("three", three),
    ]


@app.task(id="family")
def family(ctx: rung.Context, payload: Greeting) -> object:
    return ctx.trigger_and_wait(greet, payload)


# -- a task on a queue, for `rung queues ...` ---------------------------------------------

OUTBOX = rung.Queue("outbox", concurrency_limit=2)


@app.task(id="post", queue=OUTBOX)
def post(ctx: rung.Context, payload: Greeting) -> str:
    return ctx.step("send", lambda: f"posted to {payload.name}")
