"""``rung schedules``: list, show, create, pause, resume, delete cron schedules
(docs/schedules.md)."""

from __future__ import annotations

from typing import Any

import click
from rich import box
from rich.table import Table

from rung.cli._common import _compact, _console, _json_option, _json_value, _print_json, _Target
from rung.schedules import ScheduleInfo


@click.group()
def schedules() -> None:
    """See and change cron schedules: declared on tasks, or created per tenant."""


@schedules.command("list")
@click.option("--task", metavar="TASK", help="Only this task's schedules.")
@_json_option
@click.pass_obj
def list_schedules(target: _Target, task: str | None, as_json: bool) -> None:
    """Every schedule of the stack, by id, with its next firing time."""
    found = target.client().list_schedules(task)
    if as_json:
        _print_json([schedule_json(s) for s in found])
        return
    out = _console()
    if not found:
        out.print("no schedules")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("schedule", "task", "cron", "timezone", "state", "next (UTC)", "external id"):
        table.add_column(column)
    for info in found:
        table.add_row(
            info.id,
            info.task_id,
            info.cron.expression,
            info.cron.timezone,
            ("paused" if info.paused else "active") + (", declared" if info.declared else ""),
            info.next_at.strftime("%Y-%m-%d %H:%M") if info.next_at else "",
            info.external_id or "",
        )
    out.print(table)


@schedules.command("show")
@click.argument("schedule_id")
@_json_option
@click.pass_obj
def show_schedule(target: _Target, schedule_id: str, as_json: bool) -> None:
    """One schedule: its task, cron, time zone, state, payload and next firing."""
    _print(target.client().get_schedule(schedule_id), as_json)


@schedules.command("create")
@click.argument("task")
@click.argument("cron")
@click.option("--timezone", metavar="TZ", help="An IANA time zone. [default: UTC]")
@click.option(
    "--payload",
    callback=_json_value,
    metavar="JSON",
    help="Given to each run as ScheduleEvent.payload; @FILE reads it from a file.",
)
@click.option("--external-id", metavar="ID", help="Given to each run (a tenant's id).")
@click.option(
    "--dedup-key", metavar="KEY", help="Create once: again with this key updates the schedule."
)
@_json_option
@click.pass_obj
def create_schedule(
    target: _Target,
    task: str,
    cron: str,
    timezone: str | None,
    payload: Any,
    external_id: str | None,
    dedup_key: str | None,
    as_json: bool,
) -> None:
    """Run TASK on CRON (five fields, quoted: '0 9 * * MON-FRI').

    \b
    Example:
      rung schedules create digest '0 9 * * MON-FRI' --timezone Europe/Paris \\
          --external-id tenant-42 --dedup-key tenant-42
    """
    info = target.client(need_app=True).create_schedule(
        task,
        cron,
        timezone=timezone,
        payload=payload,
        external_id=external_id,
        dedup_key=dedup_key,
    )
    _print(info, as_json)


@schedules.command("pause")
@click.argument("schedule_id")
@_json_option
@click.pass_obj
def pause_schedule(target: _Target, schedule_id: str, as_json: bool) -> None:
    """Stop firing it; times that pass while paused are not replayed (unless it is
    resumed with --catch-up)."""
    _print(target.client().pause_schedule(schedule_id), as_json)


@schedules.command("resume")
@click.argument("schedule_id")
@click.option(
    "--catch-up",
    is_flag=True,
    help="Also fire, once each and now, the times it missed while paused (the latest 1,000).",
)
@_json_option
@click.pass_obj
def resume_schedule(target: _Target, schedule_id: str, catch_up: bool, as_json: bool) -> None:
    """Fire it again from its next time on (with --catch-up, the missed times too)."""
    _print(target.client().resume_schedule(schedule_id, catch_up=catch_up), as_json)


@schedules.command("delete")
@click.argument("schedule_id")
@click.pass_obj
def delete_schedule(target: _Target, schedule_id: str) -> None:
    """Delete it (runs it started go on)."""
    target.client().delete_schedule(schedule_id)
    click.echo(f"deleted schedule {schedule_id}")


def schedule_json(info: ScheduleInfo) -> dict[str, Any]:
    """A schedule as ``--json`` prints it."""
    return {
        "id": info.id,
        "task_id": info.task_id,
        "cron": info.cron.expression,
        "timezone": info.cron.timezone,
        "aws_expression": info.cron.aws_expression,
        "paused": info.paused,
        "declared": info.declared,
        "payload": info.payload,
        "external_id": info.external_id,
        "next_at": info.next_at.isoformat() if info.next_at else None,
        "paused_at": info.paused_at.isoformat() if info.paused_at else None,
    }


def _print(info: ScheduleInfo, as_json: bool) -> None:
    if as_json:
        _print_json(schedule_json(info))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("schedule", info.id)
    grid.add_row("task", info.task_id)
    grid.add_row("cron", f"{info.cron.expression}  ({info.cron.timezone})")
    paused = "paused" + (f" since {info.paused_at.isoformat()}" if info.paused_at else "")
    grid.add_row("state", paused if info.paused else "active")
    if info.declared:
        grid.add_row("declared", "on its task (@app.task(schedule=)); change it in the code")
    if info.next_at:
        grid.add_row("next", info.next_at.isoformat())
    if info.external_id:
        grid.add_row("external id", info.external_id)
    if info.payload is not None:
        grid.add_row("payload", _compact(info.payload))
    _console().print(grid)
