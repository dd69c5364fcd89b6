"""Shared by the ``rung`` commands: exit codes and one-line errors, the root group's
error handling, where the runs are (app, stack, endpoint), option types and output helpers."""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
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
from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from rung._aws import cloudformation, logs, sessions

# (re-exported: the HTTP API returns the same JSON as --json prints)
from rung._lambda.views import _due as _due
from rung._lambda.views import run_json as run_json
from rung._lambda.views import token_json as token_json
from rung._util.durations import format_duration, parse_duration
from rung.app import App
from rung.client import Client
from rung.errors import (
    InvalidConfig,
    InvalidMetadata,
    InvalidPayload,
    PayloadTooLarge,
    RungError,
    UnknownTask,
    UsageError,
)
from rung.flow import QueueInfo
from rung.models import HistoryEvent, Offloaded, Run, RunStatus, TokenState

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
DEFAULT_WAIT = timedelta(minutes=5)
_USAGE_ERRORS = (
    UnknownTask,
    InvalidPayload,
    InvalidMetadata,
    PayloadTooLarge,
    InvalidConfig,
    UsageError,
)
_STATUS_STYLE = {
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.RUNNING: "cyan",
    RunStatus.QUEUED: "yellow",
    RunStatus.DELAYED: "yellow",
    RunStatus.WAITING: "yellow",
    RunStatus.CANCELED: "magenta",
    RunStatus.TIMED_OUT: "red",
    RunStatus.EXPIRED: "magenta",
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
    # rung._aws.cloudformation.describe turns every failure to reach CloudFormation into a
    # StackError; what it was is kept as the exception's context.
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
        return Client.from_stack(
            app, self.stack_name(), endpoint_url=self.endpoint_url, region=self.region
        )

    def stack_name(self) -> str:
        """--stack, else rung-<the app's name>; a usage error when neither is known."""
        app = self.app()
        stack = self.stack or (f"rung-{app.name}" if app is not None else None)
        if stack is None:
            raise _error(
                "which stack? pass --stack NAME (or set RUNG_STACK), or --app module:attr "
                "(or RUNG_APP) to use the stack rung-<app name>",
                EXIT_USAGE,
            )
        return stack

    def worker_logs(self) -> WorkerLogs:
        """The worker function's log group (the stack's ``WorkerLogGroupName`` output, else
        Lambda's default ``/aws/lambda/<stack>-worker``) and a client to read it."""
        name = self.stack_name()
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        cfn = sessions.client("cloudformation", endpoint, self.region)
        outputs = cloudformation.describe(cfn, name, endpoint).outputs
        group = outputs.get("WorkerLogGroupName") or logs.default_group(f"{name}-worker")
        return WorkerLogs(sessions.client("logs", endpoint, self.region), group)


@dataclass(frozen=True)
class WorkerLogs:
    """Where a stack's worker writes its lines (CloudWatch Logs)."""

    client: Any
    group: str

    def run_events(self, run: Run, start_ms: int | None = None) -> list[logs.LogEvent]:
        """The run's lines, oldest first, looked for only within its life (a minute of
        slack either side; ``start_ms``: from then on)."""
        slack = 60_000
        start = max(start_ms or 0, int(run.created_at.timestamp() * 1000) - slack)
        end = int(run.finished_at.timestamp() * 1000) + slack if run.finished_at else None
        return logs.run_events(self.client, self.group, run.run_id, start, end)


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


# -- output helpers ---------------------------------------------------------------------


def _child_json(run: Run) -> dict[str, Any]:
    return {"run_id": run.run_id, "task_id": run.task_id, "status": run.status.value}


def queue_json(info: QueueInfo) -> dict[str, Any]:
    rate = info.rate_limit
    return {
        "name": info.name,
        "paused": info.paused,
        "running": info.running,
        "parked": info.parked,
        "running_per_key": dict(info.running_per_key),
        "code_known": info.code_known,
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
        "shards": info.shards,
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
        "version": event.version,
    }


def _handle_json(run_id: str, task_id: str, created: bool) -> dict[str, Any]:
    return {"run_id": run_id, "task_id": task_id, "created": created}


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


#: "No limit" for the width of output that is not on a terminal.
_UNBOUNDED = 1_000_000


class _Out:
    """stdout for people: rich tables and text, with no id ever cut or split.

    On a terminal: at its width (``COLUMNS`` overrides it), widened when a table's
    longest words (ids among them) would not fit, so that rich never cuts one with an
    ellipsis; the terminal wraps the long lines instead. Not on a terminal (a pipe, a
    file): as wide as the content, nothing wrapped, no trailing spaces, so
    ``rung runs list | grep`` and ``awk`` get whole lines (rich would assume 80
    columns).
    """

    def __init__(self) -> None:
        self._console = Console(highlight=False)
        self._buffer: io.StringIO | None = None
        if not self._console.is_terminal:
            self._buffer = io.StringIO()
            self._console = Console(highlight=False, file=self._buffer, width=_UNBOUNDED)

    def print(self, *objects: RenderableType) -> None:
        if self._buffer is None:
            console = self._console
            unbounded = console.options.update_width(_UNBOUNDED)
            for table in (o for o in objects if isinstance(o, Table)):
                _keep_words_whole(table, console, unbounded)
            needed = max(Measurement.get(console, unbounded, o).minimum for o in objects)
            if needed > console.width:  # (Console.print cannot widen itself)
                console = Console(highlight=False, width=needed)
            console.print(*objects, crop=False)
            return
        self._buffer.seek(0)
        self._buffer.truncate()
        self._console.print(*objects)
        click.echo("\n".join(line.rstrip() for line in self._buffer.getvalue().splitlines()))


def _keep_words_whole(table: Table, console: Console, options: ConsoleOptions) -> None:
    """Give each column of ``table`` its longest word as its minimum width.

    When a table is too wide, rich narrows its widest columns first, below their
    longest word if need be, and cuts that word (an id) with an ellipsis; it only keeps
    a column's ``min_width``. Words longer than a line of their column do not exist
    then: a cell wraps between words, never inside one."""
    for column in table.columns:
        cells: list[RenderableType] = [column.header, *column.cells]
        longest = max(Measurement.get(console, options, cell).minimum for cell in cells)
        column.min_width = max(column.min_width or 0, longest)


def _console() -> _Out:
    return _Out()


#: The most of a value the human views print (``--json`` prints it whole).
_SHOWN_CHARS = 2000


def _compact(value: Any) -> str:
    if isinstance(value, Offloaded):
        return repr(value)
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= _SHOWN_CHARS:
        return text
    size = len(text.encode("utf-8"))
    return f"{text[:_SHOWN_CHARS]}... ({size:,} bytes of JSON in all; --json prints it whole)"


_TOKEN_STYLE = {"WAITING": "yellow", "COMPLETED": "green", "FAILED": "red", "TIMED_OUT": "red"}


def _token_style(state: TokenState) -> str:
    return _TOKEN_STYLE.get(state.status, "")


def _status(status: RunStatus) -> Text:
    return Text(status.value, style=_STATUS_STYLE.get(status, ""))


def _time(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _took(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    # Times are stored to the millisecond: a step that took less shows as 0. (Below
    # zero: the clocks of different workers disagree a little.)
    if timedelta(0) <= delta < timedelta(milliseconds=1):
        return "<1ms"
    return format_duration(delta)


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
        took = format_duration(run.finished_at - run.created_at)
        if run.started_at is None or run.status == RunStatus.EXPIRED:  # before its body ran
            text.append(f" in {took}, before its first attempt")
        else:
            text.append(f" after {attempts} in {took}")
    elif run.started_at is not None:
        text.append(f" (attempt {run.attempt})")
    return text


def _fail(message: str, exit_code: int = EXIT_FAILED) -> NoReturn:
    raise _error(message, exit_code)
