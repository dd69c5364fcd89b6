"""``rung tokens``: list a run's tokens, show one, or answer it."""

from __future__ import annotations

from typing import Any

import click
from rich import box
from rich.table import Table
from rich.text import Text

from rung._util.durations import format_duration
from rung.cli._common import (
    _console,
    _error,
    _json_option,
    _json_value,
    _print_json,
    _Target,
    _time,
    _token_style,
    token_json,
)
from rung.models import TokenState


@click.group()
def tokens() -> None:
    """List a run's tokens, show one, or answer it: complete, fail, heartbeat."""


@tokens.command("list")
@click.argument("run_id")
@_json_option
@click.pass_obj
def list_tokens(target: _Target, run_id: str, as_json: bool) -> None:
    """The tokens RUN_ID created, oldest first: id, name, status, deadline.

    \b
    A script that answers a waiting run's token:
      rung tokens list RUN_ID --json | jq -r '.[] | select(.status=="WAITING") | .token_id'
    """
    client = target.client()
    client.get_run(run_id)  # an unknown run is an error, not an empty list
    found = client.list_tokens(run_id)
    if as_json:
        _print_json([token_json(s) for s in found])
        return
    out = _console()
    if not found:
        out.print(f"run {run_id} has created no token")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("token", "name", "step", "status", "created (UTC)", "deadline / resolved"):
        table.add_column(column)
    for state in found:
        table.add_row(
            state.id,
            state.name,
            state.step_id,
            Text(state.status, style=_token_style(state)),
            _time(state.created_at),
            _time(state.deadline if state.resolved_at is None else state.resolved_at),
        )
    out.print(table)


@tokens.command("show")
@click.argument("token_id")
@_json_option
@click.pass_obj
def show_token(target: _Target, token_id: str, as_json: bool) -> None:
    """A token's status, its run, its deadline and its answer."""
    _print_token(target.client().get_token(token_id), as_json)


@tokens.command("complete")
@click.argument("token_id")
@click.argument("value", required=False, callback=_json_value, metavar="[VALUE_JSON]")
@_json_option
@click.pass_obj
def complete_token(target: _Target, token_id: str, value: Any, as_json: bool) -> None:
    """Complete a token with VALUE_JSON (default null): its run resumes with it.

    \b
    Examples:
      rung tokens complete tok_abc '{"approved": true}'
      rung tokens complete tok_abc @answer.json
    """
    _print_token(target.client().complete_token(token_id, value), as_json)


@tokens.command("fail")
@click.argument("token_id")
@click.argument("message")
@_json_option
@click.pass_obj
def fail_token(target: _Target, token_id: str, message: str, as_json: bool) -> None:
    """Fail a token: its run's wait_for_token raises TokenFailed with MESSAGE."""
    if not message.strip():
        raise click.BadParameter("the message must not be empty", param_hint="'MESSAGE'")
    _print_token(target.client().fail_token(token_id, message), as_json)


@tokens.command("heartbeat")
@click.argument("token_id")
@_json_option
@click.pass_obj
def heartbeat_token(target: _Target, token_id: str, as_json: bool) -> None:
    """Tell a token's run that its work goes on (pushes its heartbeat deadline).

    A token created without a heartbeat timeout has no heartbeat deadline to push: that
    is an error (exit 1) and changes nothing.
    """
    client = target.client()
    state = client.get_token(token_id)
    if state.heartbeat_timeout is None:
        raise _error(
            f"token {state.id} ({state.name!r} of run {state.run_id}) has no heartbeat "
            f"timeout, so a heartbeat changes nothing: it stays open until its timeout "
            f"({state.timeout_at.isoformat()}); give create_token a heartbeat_timeout to "
            "use heartbeats"
        )
    _print_token(client.heartbeat_token(token_id), as_json)


def _print_token(state: TokenState, as_json: bool) -> None:
    if as_json:
        _print_json(token_json(state))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("token", state.id)
    grid.add_row("name", state.name)
    grid.add_row("run", state.run_id)
    grid.add_row("step", state.step_id)
    grid.add_row("status", Text(state.status, style=_token_style(state)))
    grid.add_row("created", _time(state.created_at))
    grid.add_row("timeout", _time(state.timeout_at))
    if state.heartbeat_timeout is not None:
        grid.add_row("heartbeat", f"every {format_duration(state.heartbeat_timeout)}")
    if state.status == "WAITING":
        grid.add_row("deadline", _time(state.deadline))
    if state.resolved_at is not None:
        grid.add_row("resolved", _time(state.resolved_at))
    if state.result_json is not None:
        grid.add_row("value", Text(state.result_json))
    if state.error is not None:
        grid.add_row("error", Text(str(state.error), style="red"))
    _console().print(grid)
