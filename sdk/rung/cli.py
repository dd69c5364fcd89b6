"""The ``rung`` command: trigger runs and read them, for people and for scripts.

    rung [--app M:A] [--stack NAME] [--endpoint-url URL] [--region R] COMMAND
        trigger TASK [--payload JSON] [--idempotency-key K] [--delay 30s] [--tag T]...
                     [--wait [--timeout 5m]]
        runs list [--status S] [--task T] [--limit N]
        runs show RUN_ID
        runs trace RUN_ID
        runs cancel RUN_ID [--reason TEXT]
        runs replay RUN_ID
        runs redrive RUN_ID
        tokens show TOKEN_ID
        tokens complete TOKEN_ID [VALUE_JSON]
        tokens fail TOKEN_ID MESSAGE
        tokens heartbeat TOKEN_ID
        queues list
        queues show NAME
        queues set-limit NAME [--limit N] [--per-key-limit N] [--reset]
        queues pause NAME
        queues resume NAME
        dev ...                       (rung._dev.command, when it is installed)

The table and queue are found from the stack's outputs (``rung._stack.describe``);
``--endpoint-url`` points at ``rung dev``, LocalStack or (unset) AWS. People get
rich tables on stdout; every command takes ``--json`` for scripts.

Errors are one line on stderr, ``error: <reason>``, never a traceback. Exit codes:

    0  done (with --wait: the run COMPLETED)
    1  the run FAILED (--wait); the run, token, queue, stack or endpoint is not there;
       the run or token is not in a state that allows it (cancel of a finished
       run, redrive of a run that did not fail, a token answered already);
       AWS refused a request
    2  usage: a bad option or duration, an unknown task, an invalid payload, no
       --stack and no --app, an --app that does not import
    3  --wait gave up after --timeout; the run goes on
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

import rung
from rung._durations import HELP as DURATION_HELP
from rung._durations import format_duration, parse_duration
from rung.app import App
from rung.client import Client
from rung.errors import (
    InvalidConfig,
    InvalidPayload,
    PayloadTooLarge,
    RungError,
    UnknownTask,
    UsageError,
)
from rung.flow import MAX_LIMIT, QueueInfo
from rung.models import EventType, HistoryEvent, Run, RunStatus, TokenState

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
DEFAULT_WAIT = timedelta(minutes=5)
_USAGE_ERRORS = (UnknownTask, InvalidPayload, PayloadTooLarge, InvalidConfig, UsageError)
_STATUS_STYLE = {
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.RUNNING: "cyan",
    RunStatus.QUEUED: "yellow",
    RunStatus.DELAYED: "yellow",
    RunStatus.WAITING: "yellow",
    RunStatus.CANCELED: "magenta",
    RunStatus.TIMED_OUT: "red",
}


# -- errors: one line on stderr ---------------------------------------------------------


class CliError(click.ClickException):
    """An error the CLI reports as ``error: <reason>`` on one line of stderr (exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the source

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _UsageFailure(CliError):
    exit_code = EXIT_USAGE


class _WaitTimedOut(CliError):
    exit_code = EXIT_TIMEOUT


class _WaitInterrupted(CliError):
    exit_code = 130  # as for SIGINT


def _error(message: str, exit_code: int = EXIT_FAILED) -> CliError:
    """A one-line error with this exit code (click keeps exit codes on the class)."""
    kinds: dict[int, type[CliError]] = {
        EXIT_USAGE: _UsageFailure,
        EXIT_TIMEOUT: _WaitTimedOut,
        130: _WaitInterrupted,
    }
    return kinds.get(exit_code, CliError)(message)


def _as_cli_error(exc: Exception, target: _Target | None) -> CliError | None:
    """The one line (and exit code) for an error, or None to let it propagate."""
    where = target.endpoint_url if target is not None and target.endpoint_url else None
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, click.UsageError):
        if type(exc).__name__ == "NoArgsIsHelpError":
            return None  # `rung` alone prints the help
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _error(exc.format_message() + hint, EXIT_USAGE)
    if isinstance(exc, click.ClickException):
        return _error(exc.format_message())
    # rung._stack.describe turns every failure to reach CloudFormation into a StackError;
    # what it was is kept as the exception's context.
    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, EndpointConnectionError):
            if where is None:
                return _error(f"cannot reach AWS: {cause}; check the network and --region")
            return _error(f"nothing is listening at {where}: is `rung dev` running?")
        if isinstance(cause, NoCredentialsError):
            return _error(
                "no AWS credentials: configure them (aws configure, AWS_PROFILE), or point "
                "--endpoint-url / AWS_ENDPOINT_URL at `rung dev` or LocalStack"
            )
    if isinstance(exc, BotoConnectionError):
        return _error(f"cannot talk to {where or 'AWS'}: {exc}")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "a request")
        return _error(
            f"AWS refused {operation}: {error.get('Code', '?')}: {error.get('Message', exc)}"
        )
    if isinstance(exc, BotoCoreError):
        return _error(str(exc))
    if isinstance(exc, _USAGE_ERRORS):
        return _error(str(exc), EXIT_USAGE)
    if isinstance(exc, RungError):  # RunNotFound, StackError, ...
        return _error(str(exc))
    return None


class _RungGroup(click.Group):
    """The root group: every error below it becomes one ``error:`` line."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except Exception as exc:
            error = _as_cli_error(exc, None)
            if error is None:
                raise
            raise error from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            target = ctx.obj if isinstance(ctx.obj, _Target) else None
            error = _as_cli_error(exc, target)
            if error is None:
                raise
            raise error from None


# -- where the runs are: app, stack, endpoint -------------------------------------------


@dataclass
class _Target:
    app_ref: str | None
    stack: str | None
    endpoint_url: str | None
    region: str | None
    _app: App | None = field(default=None, repr=False)

    def app(self) -> App | None:
        """The --app's App, imported once, or None when --app/RUNG_APP is not given."""
        if self._app is None and self.app_ref:
            self._app = load_app(self.app_ref)
        return self._app

    def client(self, *, need_app: bool = False) -> Client:
        app = self.app()
        if need_app and app is None:
            raise _error(
                "this command needs the app to validate payloads: pass --app module:attr "
                "(e.g. --app examples.orders:app) or set RUNG_APP",
                EXIT_USAGE,
            )
        stack = self.stack or (f"rung-{app.name}" if app is not None else None)
        if stack is None:
            raise _error(
                "which stack? pass --stack NAME (or set RUNG_STACK), or --app module:attr "
                "(or RUNG_APP) to use the stack rung-<app name>",
                EXIT_USAGE,
            )
        return Client.from_stack(app, stack, endpoint_url=self.endpoint_url, region=self.region)


def load_app(ref: str) -> App:
    """Import ``module:attr`` (from the current directory too) and check it is an App."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise _error(
            f"--app must be module:attr (like examples.orders:app), got {ref!r}", EXIT_USAGE
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise _error(
                f"--app {ref}: no module named {module_name!r} here ({cwd}); run rung from "
                "the directory that holds it, or add that directory to PYTHONPATH",
                EXIT_USAGE,
            ) from None
        raise _import_failed(ref, module_name, exc) from None
    except Exception as exc:
        raise _import_failed(ref, module_name, exc) from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        found = "nothing" if app is None else f"a {type(app).__name__}"
        raise _error(f"--app {ref}: {module_name}.{attr} is {found}, not a rung.App", EXIT_USAGE)
    return app


def _import_failed(ref: str, module_name: str, exc: Exception) -> CliError:
    return _error(
        f"--app {ref}: importing {module_name} failed with {type(exc).__name__}: {exc} "
        f"(python -c 'import {module_name}' shows the traceback)",
        EXIT_USAGE,
    )


# -- option types -----------------------------------------------------------------------


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _json_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {value[1:]}: {exc.strerror}", ctx, param
            ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc}): {text[:60]!r}", ctx, param) from None


_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables."
)


# -- the commands -------------------------------------------------------------------------


@click.group(cls=_RungGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rung.__version__, prog_name="rung")
@click.option(
    "--app",
    "app_ref",
    envvar="RUNG_APP",
    metavar="MODULE:ATTR",
    help="Your rung.App, e.g. examples.orders:app (imported from the current directory). "
    "Needed to trigger; names the default stack. [env RUNG_APP]",
)
@click.option(
    "--stack",
    envvar="RUNG_STACK",
    metavar="NAME",
    help="The stack deployed from template.yaml. [env RUNG_STACK; default rung-<app name>]",
)
@click.option(
    "--endpoint-url",
    envvar="AWS_ENDPOINT_URL",
    metavar="URL",
    help="`rung dev` or LocalStack, e.g. http://127.0.0.1:4599; unset: AWS. [env AWS_ENDPOINT_URL]",
)
@click.option("--region", metavar="REGION", help="AWS region. [env AWS_REGION; default us-east-1]")
@click.pass_context
def main(
    ctx: click.Context,
    app_ref: str | None,
    stack: str | None,
    endpoint_url: str | None,
    region: str | None,
) -> None:
    """rung: durable task execution for Python on your own AWS account.

    Errors are one line on stderr ("error: ..."). Exit codes: 0 done; 1 the run
    failed, or the run, stack or endpoint is not there; 2 usage (bad option, unknown
    task, invalid payload); 3 --wait timed out.
    """
    ctx.obj = _Target(app_ref or None, stack or None, endpoint_url or None, region or None)


@main.command()
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
    "--wait", is_flag=True, help="Wait until the run ends: exit 0 if COMPLETED, 1 if FAILED."
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
    client = target.client(need_app=True)
    handle = client.trigger(
        task, payload, idempotency_key=idempotency_key, delay=delay, tags=tags or None
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


@main.group()
def runs() -> None:
    """List runs, show one, or trace its steps."""


@runs.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in RunStatus], case_sensitive=False),
    help="Only runs in this status.",
)
@click.option("--task", metavar="TASK", help="Only runs of this task.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most N."
)
@_json_option
@click.pass_obj
def list_runs(
    target: _Target, status: str | None, task: str | None, limit: int, as_json: bool
) -> None:
    """Runs, newest first."""
    found = target.client().list_runs(status=status, task=task, limit=limit)
    if as_json:
        _print_json([run_json(r) for r in found])
        return
    out = _console()
    if not found:
        out.print("no runs" + (" match" if status or task else " yet"))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("run")
    table.add_column("task")
    table.add_column("status")
    table.add_column("attempt", justify="right")
    table.add_column("created (UTC)")
    table.add_column("took", justify="right")
    for run in found:
        table.add_row(
            run.run_id,
            run.task_id,
            _status(run.status),
            str(run.attempt),
            _time(run.created_at),
            format_duration(run.finished_at - run.created_at) if run.finished_at else "",
        )
    out.print(table)


@runs.command("show")
@click.argument("run_id")
@_json_option
@click.pass_obj
def show_run(target: _Target, run_id: str, as_json: bool) -> None:
    """A run's status, attempts, times, payload, output and error; its parent and children."""
    client = target.client()
    run = client.get_run(run_id)
    children = client.list_children(run_id)
    if as_json:
        _print_json({**run_json(run), "children": [_child_json(c) for c in children]})
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("run", run.run_id)
    grid.add_row("task", run.task_id)
    grid.add_row("status", _status(run.status))
    grid.add_row("attempt", str(run.attempt))
    grid.add_row("created", _time(run.created_at))
    if run.available_at and run.available_at > run.created_at and not run.status.is_terminal:
        grid.add_row("due", _time(run.available_at))
    if run.started_at:
        grid.add_row("started", _time(run.started_at))
    if run.finished_at:
        grid.add_row("finished", _time(run.finished_at))
        grid.add_row("took", format_duration(run.finished_at - run.created_at))
    if run.idempotency_key:
        grid.add_row("idempotency key", run.idempotency_key)
    if run.tags:
        grid.add_row("tags", ", ".join(run.tags))
    if run.parent_run_id:
        grid.add_row("parent", run.parent_run_id)
    if run.replay_of:
        grid.add_row("replay of", run.replay_of)
    for redrive in run.redrives:
        where = f" at step {redrive.step_id}" if redrive.step_id else ""
        grid.add_row(
            "redriven",
            f"{_time(redrive.at)} after attempt {redrive.attempt} failed{where}",
        )
    if children:
        grid.add_row(
            "children",
            Text("\n").join(
                Text.assemble(f"{c.run_id}  {c.task_id}  ", _status(c.status)) for c in children
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
@_json_option
@click.pass_obj
def trace_run(target: _Target, run_id: str, as_json: bool) -> None:
    """A run's timeline: attempts, steps and their durations, errors, retry delays.

    Offsets are from the trigger. A retry resumes at the step that failed: the
    attempt's line says which, and how many completed steps were replayed from
    their checkpoints instead of running again.
    """
    client = target.client()
    run = client.get_run(run_id)
    events = client.history(run_id)
    lines = build_trace(run, events)
    if as_json:
        _print_json(
            {
                "run": run_json(run),
                "events": [event_json(e) for e in events],
                "steps": [line.step_json() for line in lines if line.kind == "step"],
            }
        )
        return
    out = _console()
    out.print(_summary(run))
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
    out.print(table)
    if run.status == RunStatus.COMPLETED:
        out.print(Text(f"output: {_compact(run.output)}"))
    elif run.error is not None and run.status.is_terminal:
        out.print(Text(f"{run.status.lower()}: {run.error}", style="red"))


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


@main.group()
def tokens() -> None:
    """Show a token, or answer it: complete, fail, heartbeat."""


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
    """Tell a token's run that its work goes on (pushes its heartbeat deadline)."""
    _print_token(target.client().heartbeat_token(token_id), as_json)


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
    grid.add_row("status", Text(state.status, style=_TOKEN_STYLE.get(state.status, "")))
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


_TOKEN_STYLE = {"WAITING": "yellow", "COMPLETED": "green", "FAILED": "red", "TIMED_OUT": "red"}


@main.group()
def queues() -> None:
    """See queues' limits, running and parked runs; change limits, pause, resume."""


@queues.command("list")
@_json_option
@click.pass_obj
def list_queues(target: _Target, as_json: bool) -> None:
    """The app's queues (with --app) and every queue that has run, by name."""
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
    if info.rate_limit is not None:
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
        shown = "none" if in_force is None else str(in_force)
        if override is None:
            return shown
        if not info.tasks:  # without --app the code's limits are not known
            return f"{shown} (set)"
        return f"{shown} (set; code: {'none' if code is None else code})"

    return (
        one(info.concurrency_limit, info.concurrency_limit_override, info.code_concurrency_limit),
        one(info.per_key_limit, info.per_key_limit_override, info.code_per_key_limit),
    )


def _rate(info: QueueInfo) -> str:
    rate = info.rate_limit
    if rate is None:
        return ""
    return f"{rate.limit} per {format_duration(rate.window)}" + (" per key" if rate.per_key else "")


# -- the trace --------------------------------------------------------------------------


@dataclass
class TraceLine:
    """One line of ``rung runs trace``: an attempt, a step (start to end), a retry..."""

    kind: str  # "triggered", "attempt", "step", "child", "retry", "lost", "failed",
    # "redriven", "end"
    at: datetime
    what: str
    attempt: int | None = None
    step: str | None = None
    try_number: int | None = None
    outcome: str | None = None  # steps: "succeeded", "failed", "running", "unfinished"
    ended: datetime | None = None
    took: timedelta | None = None
    detail: str = ""
    error: rung.ErrorInfo | None = None
    style: str = ""

    def step_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "attempt": self.attempt,
            "try": self.try_number,
            "outcome": self.outcome,
            "started_at": self.at.isoformat(),
            "finished_at": self.ended.isoformat() if self.ended else None,
            "duration_seconds": self.took.total_seconds() if self.took is not None else None,
            "error": self.error.to_json() if self.error else None,
        }


#: How an attempt that did not finish shows in a trace: (line kind, text).
_ATTEMPT_ENDINGS = {
    EventType.WORKER_LOST: ("lost", "✗ worker lost"),
    EventType.ATTEMPT_FAILED: ("failed", "✗ attempt failed"),
}


def build_trace(run: Run, events: list[HistoryEvent]) -> list[TraceLine]:
    """The history as a timeline: each step on one line, from its start to its end."""
    lines: list[TraceLine] = []
    open_steps: dict[tuple[int | None, str | None], TraceLine] = {}
    open_waits: dict[str | None, TraceLine] = {}
    tries: dict[str | None, int] = {}
    succeeded: set[str] = set()  # steps checkpointed by earlier attempts
    for index, event in enumerate(events):
        kind = event.type
        if kind == EventType.RUN_TRIGGERED:
            lines.append(TraceLine("triggered", event.timestamp, f"triggered {run.task_id}"))
        elif kind == EventType.ATTEMPT_STARTED:
            lines.append(
                TraceLine(
                    "attempt",
                    event.timestamp,
                    f"attempt {event.attempt} started",
                    attempt=event.attempt,
                    detail=_resumes(events[index + 1 :], event.attempt, succeeded),
                    style="bold",
                )
            )
        elif kind == EventType.STEP_STARTED:
            tries[event.step] = tries.get(event.step, 0) + 1
            line = TraceLine(
                "step",
                event.timestamp,
                "",
                attempt=event.attempt,
                step=event.step,
                try_number=tries[event.step],
            )
            open_steps[(event.attempt, event.step)] = line
            lines.append(line)
        elif kind in (EventType.STEP_SUCCEEDED, EventType.STEP_FAILED):
            started = open_steps.pop((event.attempt, event.step), None)
            if started is None:  # an end without its start: show it where it ended
                tries[event.step] = tries.get(event.step, 0) + 1
                started = TraceLine(
                    "step",
                    event.timestamp,
                    "",
                    attempt=event.attempt,
                    step=event.step,
                    try_number=tries[event.step],
                )
                lines.append(started)
            started.ended = event.timestamp
            started.took = event.timestamp - started.at
            if kind == EventType.STEP_SUCCEEDED:
                started.outcome = "succeeded"
                if event.step is not None:
                    succeeded.add(event.step)
            else:
                started.outcome = "failed"
                started.error = event.error
                started.detail = str(event.error) if event.error else ""
        elif kind == EventType.TOKEN_CREATED:
            lines.append(
                TraceLine(
                    "token",
                    event.timestamp,
                    f"✓ token {event.step}",
                    attempt=event.attempt,
                    step=event.step,
                    detail="created",
                    style="green",
                )
            )
        elif kind == EventType.WAIT_STARTED:
            line = TraceLine(
                "wait",
                event.timestamp,
                f"⏸ {event.step}",
                attempt=event.attempt,
                step=event.step,
                detail=(
                    f"until {_offset(event.timestamp + event.delay - run.created_at)}"
                    if event.delay is not None
                    else "until answered"
                ),
                style="magenta",
            )
            open_waits[event.step] = line
            lines.append(line)
        elif kind == EventType.WAIT_ENDED:
            wait = open_waits.pop(event.step, None)
            if wait is not None:
                wait.ended = event.timestamp
                wait.took = event.timestamp - wait.at
                if event.error is not None:
                    wait.error = event.error
                    wait.detail = str(event.error)
                    wait.style = "red"
        elif kind == EventType.RETRY_SCHEDULED:
            delay = event.delay or timedelta(0)
            lines.append(
                TraceLine(
                    "retry",
                    event.timestamp,
                    f"↻ retry in {format_duration(delay)}",
                    attempt=event.attempt,
                    detail=f"attempt {(event.attempt or 0) + 1} due at "
                    f"{_offset(event.timestamp + delay - run.created_at)}",
                    style="yellow",
                )
            )
        elif kind in _ATTEMPT_ENDINGS:
            line_kind, what = _ATTEMPT_ENDINGS[kind]
            lines.append(
                TraceLine(
                    line_kind,
                    event.timestamp,
                    what,
                    attempt=event.attempt,
                    detail=str(event.error) if event.error else "",
                    error=event.error,
                    style="red",
                )
            )
        elif kind == EventType.RUN_REDRIVEN:
            lines.append(
                TraceLine(
                    "redriven",
                    event.timestamp,
                    "↻ redriven",
                    attempt=event.attempt,
                    detail=f"attempt {(event.attempt or 0) + 1} resumes"
                    + (f" at {event.step}" if event.step else ""),
                    style="yellow",
                )
            )
        elif kind == EventType.CHILD_TRIGGERED:
            lines.append(
                TraceLine(
                    "child",
                    event.timestamp,
                    f"→ child {event.step}",
                    attempt=event.attempt,
                    step=event.step,
                    detail=event.child_run_id or "",
                )
            )
        elif kind == EventType.RUN_CANCELED:
            lines.append(
                TraceLine(
                    "end",
                    event.timestamp,
                    "✗ canceled",
                    attempt=event.attempt,
                    took=event.timestamp - run.created_at,
                    detail=event.error.message if event.error else "",
                    style="bold magenta",
                )
            )
        elif kind in (EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_TIMED_OUT):
            done = kind == EventType.RUN_COMPLETED
            lines.append(
                TraceLine(
                    "end",
                    event.timestamp,
                    "✓ completed"
                    if done
                    else ("✗ timed out" if kind == EventType.RUN_TIMED_OUT else "✗ failed"),
                    attempt=event.attempt,
                    took=event.timestamp - run.created_at,
                    detail="" if done or event.error is None else str(event.error),
                    error=None if done else event.error,
                    style="bold green" if done else "bold red",
                )
            )
    current = run.attempt if run.status == RunStatus.RUNNING else None
    for line in lines:
        if line.kind != "step":
            continue
        label = f"step {line.step}"
        if line.try_number and line.try_number > 1:
            label += f" (try {line.try_number})"
        if line.outcome is None:
            line.outcome = "running" if line.attempt == current else "unfinished"
            line.what, line.style = f"… {label}", "cyan"
            if line.outcome == "unfinished":
                line.detail = "started, no end recorded (the worker stopped during it)"
        elif line.outcome == "succeeded":
            line.what, line.style = f"✓ {label}", "green"
        else:
            line.what, line.style = f"✗ {label}", "red"
    if run.status == RunStatus.WAITING:
        lines.append(
            TraceLine(
                "waiting",
                run.updated_at,
                f"… waiting for {run.waiting_for or 'an event'}",
                style="magenta",
            )
        )
    waiting = run.status == RunStatus.DELAYED and run.available_at is not None
    if waiting and lines and lines[-1].kind != "retry":  # a retry line already says when
        assert run.available_at is not None
        which = "next" if any(line.kind == "attempt" for line in lines) else "first"
        lines.append(
            TraceLine("waiting", run.available_at, f"… {which} attempt due", style="yellow")
        )
    return lines


def _resumes(later: list[HistoryEvent], attempt: int | None, done: set[str]) -> str:
    """For a retry: where the attempt picked up, and how many steps it replayed."""
    if attempt is None or attempt <= 1:
        return ""
    first = next(
        (
            e.step
            for e in later
            if e.attempt == attempt and e.type == EventType.STEP_STARTED and e.step
        ),
        None,
    )
    replayed = len(done)
    kept = f"{replayed} completed step{'s' if replayed != 1 else ''} replayed from checkpoints"
    if first is None:
        return kept if replayed else ""
    if not replayed:
        return f"runs from the top at {first} (no step had completed)"
    return f"resumes at {first}; {kept}"


# -- output helpers ---------------------------------------------------------------------


def run_json(run: Run) -> dict[str, Any]:
    """A run for ``--json``: plain values, ISO-8601 timestamps."""
    return {
        "run_id": run.run_id,
        "task_id": run.task_id,
        "status": run.status.value,
        "attempt": run.attempt,
        "payload": run.payload,
        "output": run.output,
        "error": run.error.to_json() if run.error else None,
        "created_at": _iso(run.created_at),
        "updated_at": _iso(run.updated_at),
        "available_at": _iso(run.available_at),
        "started_at": _iso(run.started_at),
        "attempt_started_at": _iso(run.attempt_started_at),
        "finished_at": _iso(run.finished_at),
        "idempotency_key": run.idempotency_key,
        "tags": list(run.tags),
        "parent_run_id": run.parent_run_id,
        "replay_of": run.replay_of,
        "redrives": [
            {
                "attempt": r.attempt,
                "failed_at": r.failed_at.isoformat(),
                "error": r.error.to_json(),
                "redriven_at": r.at.isoformat(),
                "step": r.step_id,
            }
            for r in run.redrives
        ],
    }


def _child_json(run: Run) -> dict[str, Any]:
    return {"run_id": run.run_id, "task_id": run.task_id, "status": run.status.value}


def token_json(state: TokenState) -> dict[str, Any]:
    """A token for ``--json``."""
    return {
        "token_id": state.id,
        "name": state.name,
        "run_id": state.run_id,
        "step_id": state.step_id,
        "status": state.status,
        "created_at": state.created_at.isoformat(),
        "timeout_at": state.timeout_at.isoformat(),
        "heartbeat_timeout_seconds": state.heartbeat_timeout.total_seconds()
        if state.heartbeat_timeout is not None
        else None,
        "deadline": state.deadline.isoformat(),
        "value": json.loads(state.result_json) if state.result_json is not None else None,
        "error": state.error.to_json() if state.error else None,
        "resolved_at": _iso(state.resolved_at),
    }


def queue_json(info: QueueInfo) -> dict[str, Any]:
    rate = info.rate_limit
    return {
        "name": info.name,
        "paused": info.paused,
        "running": info.running,
        "parked": info.parked,
        "running_per_key": dict(info.running_per_key),
        "concurrency_limit": info.concurrency_limit,
        "per_key_limit": info.per_key_limit,
        "code_concurrency_limit": info.code_concurrency_limit,
        "code_per_key_limit": info.code_per_key_limit,
        "concurrency_limit_override": info.concurrency_limit_override,
        "per_key_limit_override": info.per_key_limit_override,
        "rate_limit": None
        if rate is None
        else {
            "limit": rate.limit,
            "per_seconds": rate.window.total_seconds(),
            "per_key": rate.per_key,
        },
        "tasks": list(info.tasks),
    }


def event_json(event: HistoryEvent) -> dict[str, Any]:
    """A history event for ``--json``."""
    return {
        "type": event.type.value,
        "timestamp": event.timestamp.isoformat(),
        "attempt": event.attempt,
        "step": event.step,
        "delay_seconds": event.delay.total_seconds() if event.delay is not None else None,
        "error": event.error.to_json() if event.error else None,
        "child_run_id": event.child_run_id,
    }


def _handle_json(run_id: str, task_id: str, created: bool) -> dict[str, Any]:
    return {"run_id": run_id, "task_id": task_id, "created": created}


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _console() -> Console:
    return Console(highlight=False)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _status(status: RunStatus) -> Text:
    return Text(status.value, style=_STATUS_STYLE.get(status, ""))


def _time(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _took(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    # Times are stored to the millisecond: a step that took less shows as 0.
    return "<1ms" if delta < timedelta(milliseconds=1) else format_duration(delta)


def _offset(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 0:  # clocks of different workers disagree a little
        return f"-{-seconds:.3f}s"
    if seconds < 60:
        return f"+{seconds:.3f}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"+{int(minutes)}m{secs:06.3f}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"+{hours}h{minutes:02d}m{int(secs):02d}s"


def _summary(run: Run) -> Text:
    text = Text()
    text.append(run.run_id, style="bold")
    text.append(f"  {run.task_id}  ")
    text.append(run.status.value, style=_STATUS_STYLE.get(run.status, ""))
    attempts = f"{run.attempt} attempt{'s' if run.attempt != 1 else ''}"
    if run.finished_at is not None:
        text.append(f" after {attempts} in {format_duration(run.finished_at - run.created_at)}")
    elif run.started_at is not None:
        text.append(f" (attempt {run.attempt})")
    return text


def _fail(message: str, exit_code: int = EXIT_FAILED) -> NoReturn:
    raise _error(message, exit_code)


# -- `rung dev`, from the local platform --------------------------------------------------

try:
    from rung._dev.command import dev
except ImportError as _missing:
    if _missing.name not in ("rung._dev", "rung._dev.command"):
        # The command is there but its dependencies are not (the [local] extra).
        _reason = str(_missing)

        @main.command("dev", context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def _dev_unavailable(args: tuple[str, ...]) -> None:
            """Run the whole application locally (needs rung[local])."""
            _fail(f"rung dev needs the local extra: pip install 'rung[local]' ({_reason})")
else:
    main.add_command(dev)


if __name__ == "__main__":
    main()
