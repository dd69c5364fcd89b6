"""``rung queues``: limits, running and parked runs; set limits, pause, resume."""

from __future__ import annotations

import click
from rich import box
from rich.table import Table
from rich.text import Text

from rung._util.durations import format_duration
from rung.cli._common import _console, _json_option, _print_json, _Target, queue_json
from rung.flow import MAX_LIMIT, QueueInfo


@click.group()
def queues() -> None:
    """See queues' limits, running and parked runs; change limits, pause, resume."""


@queues.command("list")
@_json_option
@click.pass_obj
def list_queues(target: _Target, as_json: bool) -> None:
    """The app's queues (with --app) and every queue that has run, by name.

    Without --app, the limits the code sets are those the workers recorded when they
    last started or parked a run of the queue ("?" until one has).
    """
    found = target.client().list_queues()
    if as_json:
        _print_json([queue_json(q) for q in found])
        return
    out = _console()
    if not found:
        out.print("no queues" + ("" if target.app() is not None else " have run yet"))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("queue")
    table.add_column("state")
    table.add_column("running", justify="right")
    table.add_column("parked", justify="right")
    table.add_column("limit", justify="right")
    table.add_column("per key", justify="right")
    table.add_column("rate")
    table.add_column("tasks")
    for info in found:
        table.add_row(
            info.name,
            _queue_state(info),
            str(info.running),
            str(info.parked),
            *_limits(info),
            _rate(info),
            ", ".join(info.tasks),
        )
    out.print(table)
    if not all(info.code_known for info in found):
        out.print(
            "?: set in the code; not known until a worker has started or parked a run of "
            "the queue (or pass --app)"
        )


@queues.command("show")
@click.argument("name")
@_json_option
@click.pass_obj
def show_queue(target: _Target, name: str, as_json: bool) -> None:
    """A queue's limits (in force, in code, overridden), running runs per key, parked runs."""
    _print_queue(target.client().get_queue(name), as_json)


@queues.command("set-limit")
@click.argument("name")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    metavar="N",
    help=f"Runs executing at once (1-{MAX_LIMIT}).",
)
@click.option(
    "--per-key-limit",
    type=click.IntRange(1, MAX_LIMIT),
    metavar="N",
    help="Runs executing at once per concurrency key; at most the limit.",
)
@click.option("--reset", is_flag=True, help="Drop the overrides: the code's limits apply again.")
@_json_option
@click.pass_obj
def set_queue_limit(
    target: _Target,
    name: str,
    limit: int | None,
    per_key_limit: int | None,
    reset: bool,
    as_json: bool,
) -> None:
    """Override a queue's limits now (until --reset); a deploy does not change them.

    A lower limit holds for every start from now on (running runs finish); a higher
    one starts parked runs at once.

    \b
    Examples:
      rung queues set-limit emails --limit 2
      rung queues set-limit tenants --limit 50 --per-key-limit 5
      rung queues set-limit emails --reset
    """
    if reset and (limit is not None or per_key_limit is not None):
        raise click.UsageError("--reset goes back to the code's limits: give it alone")
    if not reset and limit is None and per_key_limit is None:
        raise click.UsageError("give --limit, --per-key-limit or --reset")
    info = target.client().set_queue_limit(name, limit, per_key_limit, reset=reset)
    _print_queue(info, as_json)


@queues.command("pause")
@click.argument("name")
@_json_option
@click.pass_obj
def pause_queue(target: _Target, name: str, as_json: bool) -> None:
    """Start no more runs of the queue; running runs finish, new ones wait (parked)."""
    _print_queue(target.client().pause_queue(name), as_json)


@queues.command("resume")
@click.argument("name")
@_json_option
@click.pass_obj
def resume_queue(target: _Target, name: str, as_json: bool) -> None:
    """Start runs of the queue again: parked runs get the free slots at once."""
    _print_queue(target.client().resume_queue(name), as_json)


def _print_queue(info: QueueInfo, as_json: bool) -> None:
    if as_json:
        _print_json(queue_json(info))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("queue", info.name)
    grid.add_row("state", _queue_state(info))
    grid.add_row("running", str(info.running))
    grid.add_row("parked", str(info.parked))
    limit, per_key = _limits(info)
    grid.add_row("limit", limit)
    grid.add_row("per key", per_key)
    if info.shards > 1:
        grid.add_row("shards", f"{info.shards} (limit split in shares; queue-level counts)")
    if not info.code_known:
        grid.add_row("", "?: set in the code; not known until a worker has started or parked a run")
    if info.rate_limit is not None or not info.code_known:
        grid.add_row("rate", _rate(info))
    if info.tasks:
        grid.add_row("tasks", ", ".join(info.tasks))
    if info.running_per_key:
        grid.add_row(
            "running by key",
            ", ".join(f"{key or '(no key)'}: {n}" for key, n in info.running_per_key.items()),
        )
    _console().print(grid)


def _queue_state(info: QueueInfo) -> Text:
    return Text("paused", style="yellow") if info.paused else Text("active", style="green")


def _limits(info: QueueInfo) -> tuple[str, str]:
    """The limit and per-key limit in force, each noting an operator's override."""

    def one(in_force: int | None, override: int | None, code: int | None) -> str:
        if not info.code_known:  # no --app, and no worker has recorded the code's yet
            return "?" if override is None else f"{override} (set; code: ?)"
        shown = "none" if in_force is None else str(in_force)
        if override is None:
            return shown
        return f"{shown} (set; code: {'none' if code is None else code})"

    return (
        one(info.concurrency_limit, info.concurrency_limit_override, info.code_concurrency_limit),
        one(info.per_key_limit, info.per_key_limit_override, info.code_per_key_limit),
    )


def _rate(info: QueueInfo) -> str:
    rate = info.rate_limit
    if not info.code_known:
        return "?"
    if rate is None:
        return ""
    return f"{rate.limit} per {format_duration(rate.window)}" + (" per key" if rate.per_key else "")
