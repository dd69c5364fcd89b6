"""The app that tests/functional/test_lambda_handler.py deploys behind the Lambda handler.

The handler imports it by name, as on AWS: ``RUNG_APP=tests.functional.handler_app:app``.
``calls`` counts real executions of each step (replays do not call the function).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import timedelta

from aws_lambda_powertools import Logger

import rung

app = rung.App("handler-test")
#: The task code's own Powertools logger, as Lambda users write one (its own handler).
user_logger = Logger(service="handler-test-user")
calls: Counter[str] = Counter()
#: How many times the "flaky" step fails before it succeeds.
failures_before_success = 1


def _count(name: str) -> None:
    calls[name] += 1


@app.task(id="greet")
def greet(ctx: rung.Context, payload: dict[str, str]) -> str:
    return ctx.step("hello", _hello, payload["name"])


def _hello(name: str) -> str:
    _count("hello")
    return f"hello {name}"


@app.task(id="greet-async")
async def greet_async(ctx: rung.AsyncContext, payload: dict[str, str]) -> str:
    """``greet`` as an async task: an async step on the loop, a plain one on a thread,
    and a map of async branches."""
    hello = await ctx.step("hello", _hello_async, payload["name"])
    loud = await ctx.step("shout", str.upper, hello)
    batch = await ctx.map(list(payload["name"]), _letter)
    return f"{loud} ({'-'.join(batch.results())})"


async def _hello_async(name: str) -> str:
    _count("hello-async")
    await asyncio.sleep(0)
    return f"hello {name}"


async def _letter(ctx: rung.AsyncContext, letter: str) -> str:
    return await ctx.step("letter", _upper, letter)


async def _upper(letter: str) -> str:
    _count("letter")
    return letter.upper()


@app.task(
    id="flaky",
    retry=rung.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=3)),
)
def flaky(ctx: rung.Context, payload: None) -> str:
    return ctx.step("call-api", _call_api)


def _call_api() -> str:
    _count("call-api")
    if calls["call-api"] <= failures_before_success:
        raise ConnectionError("the API is briefly unavailable")
    return "ok"


@app.task(id="two-steps")
def two_steps(ctx: rung.Context, payload: None) -> list[str]:
    first = ctx.step("first", _named, "first")
    second = ctx.step("second", _named, "second")
    return [first, second]


def _named(name: str) -> str:
    _count(name)
    return name


@app.task(id="chatty")
def chatty(ctx: rung.Context, payload: None) -> str:
    user_logger.info("before the step")
    return ctx.step("talk", _talk)


def _talk() -> str:
    user_logger.info("inside the step")
    return "said"


#: Set by the first execution of step "long" once it runs; it then blocks until the test
#: sets ``long_gate`` (later executions return at once).
long_entered = threading.Event()
long_gate = threading.Event()


@app.task(id="long-step")
def long_step(ctx: rung.Context, payload: None) -> str:
    return ctx.step("long", _long)


def _long() -> str:
    _count("long")
    if calls["long"] == 1:
        long_entered.set()
        long_gate.wait(120)
    return "done"


class InvocationKilled(BaseException):
    """The invocation stops dead inside a step (kill -9, out of memory, the function
    timeout): a BaseException, so that nothing of the engine's handles it. moto cannot
    run or kill a Lambda, so the test plays the death in-process; what matters to the
    recovery is what the dead invocation left behind (its lease, its messages'
    visibility), and that is real."""


@app.task(id="dies-once", retry=rung.RetryPolicy(max_attempts=3))
def dies_once(ctx: rung.Context, payload: None) -> list[str]:
    before = ctx.step("before", _named, "before")
    return [before, ctx.step("fatal", _fatal)]


def _fatal() -> str:
    _count("fatal")
    if calls["fatal"] == 1:
        raise InvocationKilled()
    return "survived"


@app.task(id="long-then-more")
def long_then_more(ctx: rung.Context, payload: None) -> list[str]:
    return [ctx.step("long", _long), ctx.step("more", _named, "more")]


@app.task(id="solo-long", queue=rung.Queue("solo", concurrency_limit=1))
def solo_long(ctx: rung.Context, payload: None) -> str:
    """One run at a time; the first execution of its step blocks at ``long_gate``."""
    return ctx.step("long", _long)
