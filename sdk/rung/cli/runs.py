"""``rung trigger`` and ``rung runs``: list, show, trace, logs, cancel, replay, redrive."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

import rung
from rung._aws.logs import LogEvent
from rung._util.clock import SystemClock
from rung._util.durations import HELP as DURATION_HELP
from rung._util.durations import format_duration, parse_duration
from rung.cli._common import (
    DEFAULT_WAIT,
    EXIT_TIMEOUT,
    _child_json,
    _compact,
    _console,
    _due,
    _duration,
    _error,
    _handle_json,
    _json_option,
    _json_value,
    _offset,
    _print_json,
    _status,
    _summary,
    _Target,
    _time,
    _token_style,
    _took,
    event_json,
    run_json,
    token_json,
)
from rung.cli.logs import level_of, level_style, log_json, log_text, message_of, print_run_logs
from rung.cli.trace import attach_logs, build_trace
from rung.client import Client
from rung.models import Run, RunStatus


@click.command()
@click.argument("task")
@click.option(
    "--payload",
    callback=_json_value,
    metavar="JSON",
    help="The payload, as JSON; @FILE reads it from a file. [default: null]",
)
@click.option("--idempotency-key", metavar="KEY", help="Triggers with the same key get one run.")
@click.option(
    "--delay",
    callback=_duration,
    metavar="DURATION",
    help=f"Start the run later ({DURATION_HELP}).",
)
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="A tag (repeat for more).")
@click.option(
    "--metadata",
    callback=_json_value,
    metavar="JSON",
    help="The run's first metadata values, a JSON object; @FILE reads it from a file.",
)
@click.option("--debounce", "debounce_key", metavar="KEY", help="Collapse triggers of this key.")
@click.option(
    "--debounce-window",
    callback=_duration,
    metavar="DURATION",
    help="With --debounce: start the run this long after the last trigger of the key.",
)
@click.option(
    "--debounce-max-wait",
    callback=_duration,
    metavar="DURATION",
    help="With --debounce: start it at the latest this long after the first trigger.",
)
@click.option(
    "--ttl",
    callback=_duration,
    metavar="DURATION",
    help="Expire the run if it has not started this long after it is due.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait until the run ends: exit 0 if it COMPLETED, 1 if it ended otherwise.",
)
@click.option(
    "--timeout",
    callback=_duration,
    metavar="DURATION",
    help="How long --wait waits before giving up with exit code 3. [default: 5m]",
)
@_json_option
@click.pass_obj
def trigger(
    target: _Target,
    task: str,
    payload: Any,
    idempotency_key: str | None,
    delay: timedelta | None,
    tags: tuple[str, ...],
    metadata: Any,
    debounce_key: str | None,
    debounce_window: timedelta | None,
    debounce_max_wait: timedelta | None,
    ttl: timedelta | None,
    wait: bool,
    timeout: timedelta | None,
    as_json: bool,
) -> None:
    """Start a run of TASK; print its id.

    \b
    Examples:
      rung --app examples.orders:app trigger process-order --payload '{"order_id": "o-1"}'
      rung trigger process-order --payload @order.json --idempotency-key o-1 --wait
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    debounce = None
    if debounce_key is not None or debounce_window is not None or debounce_max_wait is not None:
        if debounce_key is None or debounce_window is None:
            raise click.UsageError("--debounce KEY and --debounce-window DURATION go together")
        debounce = rung.Debounce(debounce_key, debounce_window, debounce_max_wait)
    client = target.client(need_app=True)
    handle = client.trigger(
        task,
        payload,
        idempotency_key=idempotency_key,
        delay=delay,
        tags=tags or None,
        ttl=ttl,
        metadata=metadata,
        debounce=debounce,
    )
    if not wait:
        if as_json:
            _print_json(_handle_json(handle.run_id, handle.task_id, handle.created))
        else:
            click.echo(handle.run_id)
            _note_existing(handle.created, idempotency_key)
        return
    if not as_json:
        click.echo(handle.run_id)
        _note_existing(handle.created, idempotency_key)
    run = _wait(client, handle.run_id, timeout or DEFAULT_WAIT)
    if as_json:
        _print_json({**_handle_json(run.run_id, run.task_id, handle.created), "run": run_json(run)})
    else:
        out = _console()
        out.print(_summary(run))
        if run.status == RunStatus.COMPLETED:
            out.print(Text(f"output: {_compact(run.output)}"))
    if run.status != RunStatus.COMPLETED:
        reason = f": {run.error}" if run.error is not None else ""
        raise _error(f"run {run.run_id} {run.status}{reason}")


def _note_existing(created: bool, key: str | None) -> None:
    if not created:
        click.echo(
            f"note: idempotency key {key!r} matched this existing run; nothing new was triggered",
            err=True,
        )


def _wait(client: Client, run_id: str, timeout: timedelta) -> Run:
    deadline = time.monotonic() + timeout.total_seconds()
    status = Console(stderr=True)
    pause = 0.05
    try:
        with status.status(f"waiting for {run_id}") if status.is_terminal else _nothing():
            while True:
                run = client.get_run(run_id)
                if run.status.is_terminal:
                    return run
                if time.monotonic() >= deadline:
                    raise _error(
                        f"run {run_id} is still {run.status} (attempt {run.attempt}) after "
                        f"{format_duration(timeout)} of waiting; it goes on: rung runs show "
                        f"{run_id}",
                        EXIT_TIMEOUT,
                    )
                time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
                pause = min(pause * 1.5, 1.0)
    except KeyboardInterrupt:
        raise _error(
            f"stopped waiting; run {run_id} goes on: rung runs show {run_id}", 130
        ) from None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@click.group()
def runs() -> None:
    """List runs, show one, or trace its steps."""


def _moment(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An option's time: ISO 8601 (UTC unless it says otherwise), or a duration ago."""
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return SystemClock().now() - parse_duration(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a time (2026-12-05T09:00:00Z) nor a duration ago (2h, 3d)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _more(cursor: str | None) -> None:
    """Where the next page is, on stderr: stdout stays the table (or the JSON list)."""
    if cursor is not None:
        click.echo(f"more: rung runs list ... --cursor {cursor}", err=True)


@runs.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in RunStatus], case_sensitive=False),
    help="Only runs in this status.",
)
@click.option("--task", metavar="TASK", help="Only runs of this task.")
@click.option(
    "--since",
    metavar="WHEN",
    callback=_moment,
    help="Only runs created at or after WHEN: a time (ISO 8601, UTC) or a duration ago (2h).",
)
@click.option(
    "--until",
    metavar="WHEN",
    callback=_moment,
    help="Only runs created before WHEN (as --since).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only runs triggered with this tag (repeat: with all of them).",
)
@click.option("--cursor", metavar="CURSOR", help="The next page: the cursor a page printed.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most N."
)
@_json_option
@click.pass_obj
def list_runs(
    target: _Target,
    status: str | None,
    task: str | None,
    since: datetime | None,
    until: datetime | None,
    tags: tuple[str, ...],
    cursor: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Runs, newest first, a page at a time."""
    found = target.client().list_runs(
        status=status,
        task=task,
        limit=limit,
        created_after=since,
        created_before=until,
        tags=tags or None,
        cursor=cursor,
    )
    if as_json:
        _print_json([run_json(r) for r in found])  # a list, as before pages existed
        _more(found.cursor)
        return
    out = _console()
    if not found:
        filtered = status or task or since or until or tags or cursor
        out.print("no runs" + (" match" if filtered else " yet"))
        _more(found.cursor)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("run")
    table.add_column("task")
    table.add_column("status")
    table.add_column("attempt", justify="right")
    table.add_column("version")
    table.add_column("created (UTC)")
    table.add_column("took", justify="right")
    for run in found:
        table.add_row(
            run.run_id,
            run.task_id,
            _status(run.status),
            str(run.attempt),
            run.version or "",
            _time(run.created_at),
            format_duration(run.finished_at - run.created_at) if run.finished_at else "",
        )
    out.print(table)
    _more(found.cursor)


@runs.command("show")
@click.argument("run_id")
@_json_option
@click.pass_obj
def show_run(target: _Target, run_id: str, as_json: bool) -> None:
    """A run's status, attempts, times, payload, output and error; its parent and children."""
    client = target.client()
    run = client.get_run(run_id)
    children = client.list_children(run_id)
    tokens = client.list_tokens(run_id)
    if as_json:
        _print_json(
            {
                **run_json(run),
                "children": [_child_json(c) for c in children],
                "tokens": [token_json(s) for s in tokens],
            }
        )
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("run", run.run_id)
    grid.add_row("task", run.task_id)
    grid.add_row("status", _status(run.status))
    if run.status == RunStatus.EXPIRED:
        grid.add_row("attempt", "none: it expired before its body started")
    else:
        grid.add_row("attempt", str(run.attempt) if run.started_at else "none yet")
    if run.version:
        grid.add_row("version", run.version)
    if run.status == RunStatus.WAITING and run.waiting_for:
        grid.add_row("waiting for", run.waiting_for)
    grid.add_row("created", _time(run.created_at))
    due = _due(run)
    if due is not None and due > run.created_at and not run.status.is_terminal:
        grid.add_row("due", _time(due))
    if run.started_at and run.status != RunStatus.EXPIRED:
        grid.add_row("started", _time(run.started_at))
    if run.start_by:
        began = "; started in time" if run.began_at else ""
        grid.add_row("start by", f"{_time(run.start_by)} (its ttl{began})")
    if run.finished_at:
        grid.add_row("finished", _time(run.finished_at))
        grid.add_row("took", format_duration(run.finished_at - run.created_at))
    if run.idempotency_key:
        grid.add_row("idempotency key", run.idempotency_key)
    if run.tags:
        grid.add_row("tags", ", ".join(run.tags))
    if run.triggers > 1:
        grid.add_row("debounced", f"{run.triggers} triggers collapsed into this run")
    if run.metadata:
        grid.add_row("metadata", json.dumps(run.metadata, indent=2, ensure_ascii=False))
    if run.parent_run_id:
        grid.add_row("parent", run.parent_run_id)
    if run.replay_of:
        grid.add_row("replay of", run.replay_of)
    if run.trace_id:
        grid.add_row("trace", f"{run.trace_id} (X-Ray)")
    for redrive in run.redrives:
        where = f" at step {redrive.step_id}" if redrive.step_id else ""
        grid.add_row(
            "redriven",
            f"{_time(redrive.at)} after attempt {redrive.attempt} failed{where}"
            + (f" (was on version {redrive.from_version})" if redrive.from_version else ""),
        )
    if children:
        grid.add_row(
            "children",
            Text("\n").join(
                Text.assemble(f"{c.run_id}  {c.task_id}  ", _status(c.status)) for c in children
            ),
        )
    if tokens:
        grid.add_row(
            "tokens",
            Text("\n").join(
                Text.assemble(f"{s.id}  {s.name}  ", Text(s.status, style=_token_style(s)))
                for s in tokens
            ),
        )
    grid.add_row("payload", Text(_compact(run.payload)))
    if run.status == RunStatus.COMPLETED:
        grid.add_row("output", Text(_compact(run.output)))
    if run.error is not None:
        grid.add_row("error", Text(str(run.error), style="red"))
        if run.error.traceback:
            grid.add_row("traceback", Text(run.error.traceback.rstrip(), style="dim"))
    out = _console()
    out.print(grid)
    out.print(Text(f"steps: rung runs trace {run.run_id}", style="dim"))


@runs.command("trace")
@click.argument("run_id")
@click.option(
    "--logs", "with_logs", is_flag=True, help="Show the run's log lines under their steps."
)
@_json_option
@click.pass_obj
def trace_run(target: _Target, run_id: str, with_logs: bool, as_json: bool) -> None:
    """A run's timeline: attempts, steps and their durations, errors, retry delays.

    Offsets are from the trigger. A retry resumes at the step that failed: the
    attempt's line says which, and how many completed steps were replayed from
    their checkpoints instead of running again. With --logs, each log line of the
    run (CloudWatch Logs, as `rung runs logs` prints them) shows under the step it
    was written in, or under its attempt.
    """
    client = target.client()
    run = client.get_run(run_id)
    events = client.history(run_id)
    tokens = client.list_tokens(run_id)
    lines = build_trace(run, events, tokens)
    log_events = target.worker_logs().run_events(run) if with_logs else []
    attach_logs(lines, log_events)
    if as_json:
        _print_json(
            {
                "run": run_json(run),
                "events": [event_json(e) for e in events],
                "steps": [line.step_json() for line in lines if line.kind == "step"],
                "tokens": [token_json(s) for s in tokens],
                **({"logs": [log_json(e) for e in log_events]} if with_logs else {}),
            }
        )
        return
    out = _console()
    out.print(_summary(run))
    if run.metadata:
        out.print(Text(f"metadata: {_compact(run.metadata)}"))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("at", justify="right")
    table.add_column("attempt", justify="right")
    table.add_column("what")
    table.add_column("took", justify="right")
    table.add_column("detail", overflow="fold")
    previous_attempt: int | None = None
    for line in lines:
        if line.kind == "attempt" and previous_attempt is not None:
            table.add_section()
        if line.attempt is not None:
            previous_attempt = line.attempt
        table.add_row(
            _offset(line.at - run.created_at),
            str(line.attempt) if line.attempt is not None else "",
            Text(line.what, style=line.style),
            _took(line.took),
            Text(line.detail, style="red" if line.error else ""),
        )
        for log_event in line.logs:
            table.add_row(
                Text(_offset(log_event.timestamp - run.created_at), style="dim"),
                "",
                Text(f"  │ {level_of(log_event) or 'log'}", style=level_style(log_event) or "dim"),
                "",
                Text(message_of(log_event), style="dim"),
            )
    out.print(table)
    if run.status == RunStatus.COMPLETED:
        out.print(Text(f"output: {_compact(run.output)}"))
    elif run.error is not None and run.status.is_terminal:
        out.print(Text(f"{run.status.lower()}: {run.error}", style="red"))


@runs.command("logs")
@click.argument("run_id")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new lines until the run has ended (or Ctrl-C).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line: its fields, timestamp and stream.",
)
@click.pass_obj
def run_logs(target: _Target, run_id: str, follow: bool, as_json: bool) -> None:
    """The log lines of a run, from every attempt, oldest first.

    They are read from the worker function's log group in CloudWatch Logs (on AWS,
    LocalStack and `rung dev` alike): time (UTC), attempt, step id, level and message
    of each line; a line that is not JSON as it is.
    """
    client = target.client()
    worker = target.worker_logs()
    out = _console()

    def emit(event: LogEvent) -> None:
        if as_json:
            click.echo(json.dumps(log_json(event), ensure_ascii=False, default=str))
        else:
            out.print(log_text(event))

    try:
        count = print_run_logs(client, worker, run_id, emit, follow=follow)
    except KeyboardInterrupt:
        click.get_current_context().exit(130)  # as for SIGINT; following is what stops
    if count == 0 and not as_json:
        click.echo(f"no log lines for {run_id} in {worker.group}", err=True)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", metavar="TEXT", help="Why; stored as the run's error message.")
@_json_option
@click.pass_obj
def cancel_run(target: _Target, run_id: str, reason: str | None, as_json: bool) -> None:
    """Cancel a run that has not finished, and its children (unless detached).

    A queued, delayed or waiting run is canceled at once; a running one stops at
    its next step boundary. Cancelling a finished run is an error (exit 1) and
    changes nothing.
    """
    run = target.client().cancel(run_id, reason=reason)
    if as_json:
        _print_json(run_json(run))
        return
    _console().print(_summary(run))


@runs.command("replay")
@click.argument("run_id")
@_json_option
@click.pass_obj
def replay_run(target: _Target, run_id: str, as_json: bool) -> None:
    """Start a new run of RUN_ID's task with the same payload; print its id.

    The new run records which run it replays (`rung runs show`); the original is
    not touched. Any run can be replayed, finished or not.
    """
    handle = target.client().replay(run_id)
    if as_json:
        _print_json({**_handle_json(handle.run_id, handle.task_id, True), "replay_of": run_id})
        return
    click.echo(handle.run_id)


@runs.command("redrive")
@click.argument("run_id")
@_json_option
@click.pass_obj
def redrive_run(target: _Target, run_id: str, as_json: bool) -> None:
    """Resume a FAILED run from its failed step, after deploying a fix.

    Steps that completed keep their results and do not run again; the failed step
    runs again, with a fresh retry budget. A run that is not FAILED is an error
    (exit 1) and changes nothing.
    """
    run = target.client().redrive(run_id)
    if as_json:
        _print_json(run_json(run))
        return
    out = _console()
    out.print(_summary(run))
    step = run.redrives[-1].step_id if run.redrives else None
    out.print(
        Text(
            f"resumes at {step}" if step else "resumes where it failed",
            style="dim",
        )
        + Text(f"; follow it: rung runs trace {run.run_id}", style="dim")
    )
