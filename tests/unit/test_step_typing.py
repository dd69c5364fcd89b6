"""mypy checks a step's arguments against its function (``Context.step`` is typed with
a ParamSpec): the mistakes a user would make are errors, the right calls are not."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

USER_CODE = """
import pydantic

import rung

app = rung.App("typed")


def add(a: int, b: int) -> int:
    return a + b


@app.task(id="t")
def t(ctx: rung.Context, payload: None) -> int:
    good: int = ctx.step("add", add, 1, 2)
    keyword: int = ctx.step("add", add, 1, b=2)
    retried: int = ctx.step("add", add, 1, 2, retry=rung.RetryPolicy(max_attempts=2))
    once: int = ctx.step("add", add, 1, 2, at_most_once=True)
    ctx.step("add", add, 1, "two")  # line 19: a str for an int
    ctx.step("add", add, 1)  # line 20: b missing
    ctx.step("add", add, 1, 2, c=3)  # line 21: no such parameter
    wrong: str = ctx.step("add", add, 1, 2)  # line 22: the result is an int
    return good + keyword + retried + once


class Order(pydantic.BaseModel):
    id: str


@app.task(id="charge")
def charge(ctx: rung.Context, order: Order) -> int:
    return len(order.id)


@app.task(id="parent")
def parent(ctx: rung.Context, payload: None) -> int:
    total: int = ctx.trigger_and_wait(charge, Order(id="o-1"))
    again: int = ctx.trigger_and_wait(charge, {"id": "o-2"})  # its JSON form is fine
    ctx.trigger_and_wait(charge, 3)  # line 39: not an Order
    ctx.trigger(charge, "o-3")  # line 40: not an Order
    ctx.batch_trigger_and_wait(charge, [Order(id="a"), {"id": "b"}, 4])  # line 41: not 4
    rung.Client(app).trigger(charge, ["o"])  # line 42: not an Order
    ctx.trigger_and_wait("charge", 3)  # by id: not known statically, not checked
    return total + again
"""


ASYNC_USER_CODE = """
import rung

app = rung.App("typed")


def add(a: int, b: int) -> int:
    return a + b


async def fetch(url: str) -> bytes:
    return url.encode()


@app.task(id="t")
async def t(ctx: rung.AsyncContext, payload: None) -> int:
    good: int = await ctx.step("add", add, 1, 2)
    page: bytes = await ctx.step("fetch", fetch, "https://example.com")
    retried: int = await ctx.step("add", add, 1, 2, retry=rung.RetryPolicy(max_attempts=2))
    await ctx.step("add", add, 1, "two")  # line 20: a str for an int
    await ctx.step("fetch", fetch, 3)  # line 21: an int for a str
    wrong: str = await ctx.step("fetch", fetch, "u")  # line 22: the result is bytes
    return good + retried + len(page)


async def main() -> None:
    out: rung.Task[int] = t  # an async task is a Task of what it returns
    bad: rung.Task[str] = t  # line 28: not of a str


async def own_options(ctx: rung.AsyncContext) -> bytes:
    marked: bytes = await ctx.step("fetch", fetch, "u", at_most_once=True)
    retried: int = await ctx.step("add", add, 1, 2, retry=rung.RetryPolicy(max_attempts=2))
    return marked * retried
"""


def mypy_error_lines(tmp_path: Path, code: str) -> set[int]:
    """The lines of ``code`` that ``mypy --strict`` reports errors on."""
    source = tmp_path / "user_tasks.py"
    source.write_text(code)
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--follow-imports=silent", str(source)]
    )
    assert status == 1, out + err
    return {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("code", "errors"),
    [
        pytest.param(USER_CODE, {19, 20, 21, 22, 39, 40, 41, 42}, id="sync"),
        pytest.param(ASYNC_USER_CODE, {20, 21, 22, 28}, id="async"),
    ],
)
def test_mypy_checks_a_steps_arguments_and_result(
    tmp_path: Path, code: str, errors: set[int]
) -> None:
    assert mypy_error_lines(tmp_path, code) == errors
