from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner, Result

import rung
from rung.cli import main
from rung.cli._common import _took


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"rung, version {rung.__version__}"


#: Nothing listens here: a command that reached AWS would exit 1 ("nothing is listening").
NOWHERE = ["--stack", "s", "--endpoint-url", "http://127.0.0.1:1"]


def _error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_token_value_that_is_not_json_is_refused_before_any_request() -> None:
    result = CliRunner().invoke(main, [*NOWHERE, "tokens", "complete", "tok_abc", "{bad"])

    assert result.exit_code == 2
    assert _error_line(result).startswith("error: Invalid value for '[VALUE_JSON]': not JSON (")


def test_an_empty_failure_message_is_refused_before_any_request() -> None:
    result = CliRunner().invoke(main, [*NOWHERE, "tokens", "fail", "tok_abc", "  "])

    assert result.exit_code == 2
    assert "the message must not be empty" in _error_line(result)


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "cancel"],
        ["runs", "replay"],
        ["runs", "redrive"],
        ["tokens", "show"],
        ["tokens", "fail", "tok_abc"],
    ],
)
def test_lifecycle_commands_without_their_arguments_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(main, [*NOWHERE, *args])

    assert result.exit_code == 2
    assert "Missing argument" in _error_line(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set-limit", "q", "--limit", "0"], "Invalid value for '--limit': 0 is not in the range"),
        (["set-limit", "q", "--limit", "1001"], "Invalid value for '--limit': 1001 is not in"),
        (["set-limit", "q", "--limit", "ten"], "Invalid value for '--limit': 'ten' is not a valid"),
        (["set-limit", "q", "--per-key-limit", "-1"], "Invalid value for '--per-key-limit'"),
        (["set-limit", "q"], "give --limit, --per-key-limit or --reset"),
        (["set-limit", "q", "--limit", "2", "--reset"], "--reset goes back to the code's limits"),
        (["set-limit"], "Missing argument 'NAME'"),
        (["show"], "Missing argument 'NAME'"),
        (["pause"], "Missing argument 'NAME'"),
        (["resume"], "Missing argument 'NAME'"),
    ],
)
def test_queue_commands_with_bad_arguments_are_usage_errors_before_any_request(
    args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, [*NOWHERE, "queues", *args])

    assert result.exit_code == 2
    assert message in _error_line(result)


@pytest.mark.parametrize(
    ("delta", "shown"),
    [
        (timedelta(seconds=-5), "-5s"),  # clocks of two workers disagree
        (timedelta(milliseconds=-3), "-3ms"),
        (timedelta(microseconds=400), "<1ms"),
        (timedelta(days=1, seconds=-5), "23h59m"),
    ],
)
def test_durations_read_as_durations_even_below_zero(delta: timedelta, shown: str) -> None:
    assert _took(delta) == shown
    assert "day" not in _took(delta)
