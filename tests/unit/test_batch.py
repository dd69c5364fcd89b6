"""Completion rules and BatchResult: pure logic, no engine."""

from __future__ import annotations

import re
from typing import Any

import pytest

import rung


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"min_successes": 0}, "min_successes=...) must be an int >= 1"),
        ({"min_successes": 2.5}, "min_successes=...) must be an int >= 1"),
        ({"tolerated_failures": -1}, "tolerated_failures=...) must be an int >= 0"),
        ({"tolerated_failures": True}, "tolerated_failures=...) must be an int >= 0"),
        ({"tolerated_failure_pct": 150}, "a number from 0 to 100"),
        ({"tolerated_failure_pct": "5%"}, "a number from 0 to 100"),
    ],
)
def test_completion_refuses_bad_arguments_with_a_clear_message(
    kwargs: dict[str, Any], text: str
) -> None:
    with pytest.raises(rung.InvalidConfig, match=re.escape(text)):
        rung.Completion(**kwargs)


def test_by_default_every_item_must_succeed() -> None:
    rule = rung.Completion()
    assert rule.verdict(total=3, succeeded=2, failed=0) is None
    assert rule.verdict(total=3, succeeded=1, failed=1) is False  # the first failure decides
    assert rule.verdict(total=3, succeeded=3, failed=0) is True
    assert rule.verdict(total=0, succeeded=0, failed=0) is True


def test_tolerated_failures_and_percentage() -> None:
    count = rung.Completion(tolerated_failures=2)
    assert count.verdict(total=10, succeeded=5, failed=2) is None
    assert count.verdict(total=10, succeeded=5, failed=3) is False
    assert count.verdict(total=10, succeeded=8, failed=2) is True
    pct = rung.Completion(tolerated_failure_pct=10)
    assert pct.verdict(total=50, succeeded=45, failed=5) is True  # 10% is tolerated
    assert pct.verdict(total=50, succeeded=1, failed=6) is False
    both = rung.Completion(tolerated_failures=10, tolerated_failure_pct=5)
    assert both.verdict(total=100, succeeded=0, failed=6) is False  # the stricter one


def test_min_successes_decides_early_and_fails_when_out_of_reach() -> None:
    rule = rung.Completion(min_successes=3)
    assert rule.verdict(total=5, succeeded=3, failed=0) is True
    assert rule.verdict(total=5, succeeded=2, failed=2) is None
    assert rule.verdict(total=5, succeeded=2, failed=3) is False  # 3 can no longer succeed
    assert "needed 3 successful items and got 2" in rule.explain_failure(
        total=5, succeeded=2, failed=3
    )
    strict = rung.Completion(min_successes=3, tolerated_failures=0)
    assert strict.verdict(total=5, succeeded=1, failed=1) is False
    with pytest.raises(rung.InvalidConfig, match="needs min_successes=3 but has only 2"):
        rule.check_size(2, "ctx.map")


def test_batch_result_helpers_keep_input_order() -> None:
    error = rung.ErrorInfo("ValueError", "bad")
    batch: rung.BatchResult[int] = rung.BatchResult(
        [
            rung.BatchItem(0, "succeeded", result=10),
            rung.BatchItem(1, "failed", error=error),
            rung.BatchItem(2, "succeeded", result=None),
            rung.BatchItem(3, "skipped"),
        ]
    )
    assert batch.results() == [10, None]
    assert (batch.succeeded, batch.failed, batch.skipped) == (2, 1, 1)


def test_batch_failed_is_a_step_failed_that_carries_the_result() -> None:
    batch: rung.BatchResult[Any] = rung.BatchResult([rung.BatchItem(0, "skipped")])
    exc = rung.BatchFailed("/map#1", rung.ErrorInfo("BatchFailed", "too many"), batch)
    assert isinstance(exc, rung.StepFailed)
    assert exc.result is batch and exc.step_id == "/map#1" and exc.message == "too many"
