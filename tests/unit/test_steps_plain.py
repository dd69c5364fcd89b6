"""Steps and tasks outside a run, and misuse that must fail clearly."""

from __future__ import annotations

from datetime import timedelta

import pydantic
import pytest

import rung
from rung.errors import InvalidConfig, UsageError


def test_a_step_called_outside_a_run_executes_plainly() -> None:
    @rung.step
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5


def test_current_step_outside_a_step_says_where_to_call_it() -> None:
    with pytest.raises(UsageError, match="outside a step"):
        rung.current_step()


def test_step_names_with_separators_are_refused() -> None:
    with pytest.raises(UsageError, match="contains '/' or '#'"):
        rung.step(name="a/b")


def test_flow_control_declaration_errors_are_clear() -> None:
    app = rung.App("t")
    with pytest.raises(rung.InvalidConfig, match="must be a rung.Queue"):
        app.task(id="x", queue="q")  # type: ignore[call-overload]
    with pytest.raises(rung.InvalidConfig, match="needs a queue"):
        app.task(id="x", concurrency_key=lambda p: p)
    with pytest.raises(rung.InvalidConfig, match="limits per key: give the task a concurrency_key"):
        app.task(id="x", queue=rung.Queue("q", concurrency_limit=4, per_key_limit=2))
    with pytest.raises(rung.InvalidConfig, match="per_key_limit \\(5\\) is above"):
        rung.Queue("q", concurrency_limit=4, per_key_limit=5)
    with pytest.raises(rung.InvalidConfig, match="between 1 and 1000"):
        rung.Queue("q", concurrency_limit=0)
    with pytest.raises(rung.InvalidConfig, match="queue name"):
        rung.Queue("no spaces")
    with pytest.raises(rung.InvalidConfig, match="Rate limit must be an int"):
        rung.Rate(2.5)  # type: ignore[arg-type]
    with pytest.raises(rung.InvalidConfig, match="Rate per must be positive"):
        rung.Rate(5, per=0)
    with pytest.raises(rung.InvalidConfig, match="priority"):
        app.task(id="x", priority="high")  # type: ignore[call-overload]
    app.task(id="a", queue=rung.Queue("shared", concurrency_limit=2))(lambda ctx, p: p)
    with pytest.raises(rung.InvalidConfig, match="declared twice with different limits"):
        app.task(id="b", queue=rung.Queue("shared", concurrency_limit=3))(lambda ctx, p: p)
    # The same limits under the same name: shared.
    app.task(id="c", queue=rung.Queue("shared", concurrency_limit=2))(lambda ctx, p: p)


def test_max_duration_must_be_a_positive_duration() -> None:
    app = rung.App("t")
    with pytest.raises(rung.InvalidConfig, match="max_duration must be positive"):
        app.task(id="x", max_duration=0)
    with pytest.raises(rung.InvalidConfig, match="max_duration"):
        app.task(id="x", max_duration="10m")  # type: ignore[call-overload]
    assert app.task(id="ok", max_duration=90)(lambda ctx, p: p).max_duration == timedelta(
        seconds=90
    )


def test_task_declaration_errors() -> None:
    app = rung.App("t")

    @app.task(id="one")
    def one(ctx: rung.Context, payload: None) -> None: ...

    with pytest.raises(InvalidConfig, match="already has a task 'one'"):
        app.task(id="one")(lambda ctx, p: None)
    with pytest.raises(InvalidConfig, match=r"must take \(ctx, payload\)"):
        app.task(id="two")(lambda ctx: None)
    with pytest.raises(InvalidConfig, match="task id 'bad id'"):
        app.task(id="bad id")(lambda ctx, p: None)
    with pytest.raises(InvalidConfig, match="App name"):
        rung.App("")


class In(pydantic.BaseModel):
    n: int


def test_a_task_is_callable_directly_and_knows_its_payload_model() -> None:
    app = rung.App("t")

    @app.task(id="double")
    def double(ctx: object, payload: In) -> int:
        return payload.n * 2

    assert double(None, In(n=4)) == 8
    assert double.payload_model is In
    assert app.get_task("double") is double


def test_an_unresolvable_payload_annotation_is_refused_not_ignored() -> None:
    class Local(pydantic.BaseModel):
        n: int

    app = rung.App("t")
    with pytest.raises(InvalidConfig, match="define the payload model at module level"):

        @app.task(id="local")
        def local(ctx: object, payload: Local) -> None: ...
