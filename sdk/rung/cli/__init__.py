"""The ``rung`` command: trigger runs and read them, for people and for scripts.

    rung [--app M:A] [--stack NAME] [--endpoint-url URL] [--region R] [--profile P] COMMAND
        trigger TASK [--payload JSON] [--idempotency-key K] [--delay 30s] [--tag T]... [--ttl 10m]
                     [--metadata JSON] [--debounce KEY --debounce-window 30s]
                     [--wait [--timeout 5m]]
        runs list [--status S] [--task T] [--limit N]
        runs show RUN_ID
        runs trace RUN_ID [--logs]
        runs logs RUN_ID [--follow]
        runs cancel RUN_ID [--reason TEXT]
        runs replay RUN_ID
        runs redrive RUN_ID
        tokens list RUN_ID
        tokens show TOKEN_ID
        tokens complete TOKEN_ID [VALUE_JSON]
        tokens fail TOKEN_ID MESSAGE
        tokens heartbeat TOKEN_ID
        queues list
        queues show NAME
        queues set-limit NAME [--limit N] [--per-key-limit N] [--reset]
        queues pause NAME
        queues resume NAME
        schedules list [--task T]
        schedules show ID
        schedules create TASK CRON [--timezone TZ] [--payload JSON] [--external-id ID]
                                   [--dedup-key K]
        schedules pause ID | resume ID | delete ID
        upgrade-table [--table NAME] [--dry-run] [--segments N] [--reader-grace 1m]
        versions list [--function NAME]
        versions prune [--function NAME] [--dry-run] [--keep-recent 15m]
        deploy [--guided] [--code-dir DIR]... [--arch A] [--python V] [--parameter K=V]...
        dev ...                       (rung._dev.command, when it is installed)

The table and queue are found from the stack's outputs (``rung._aws.cloudformation.describe``);
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

import click

import rung
from rung._aws import sessions
from rung.cli._common import (
    DEFAULT_WAIT,
    EXIT_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    _fail,
    _RungGroup,
    _Target,
    event_json,
    load_app,
    queue_json,
    run_json,
    token_json,
)
from rung.cli.batch import batch_trigger
from rung.cli.deploy import deploy
from rung.cli.queues import (
    list_queues,
    pause_queue,
    queues,
    resume_queue,
    set_queue_limit,
    show_queue,
)
from rung.cli.runs import (
    cancel_run,
    list_runs,
    redrive_run,
    replay_run,
    runs,
    show_run,
    trace_run,
    trigger,
)
from rung.cli.schedules import schedules
from rung.cli.tokens import (
    complete_token,
    fail_token,
    heartbeat_token,
    list_tokens,
    show_token,
    tokens,
)
from rung.cli.trace import TraceLine, build_trace
from rung.cli.upgrade import upgrade_table
from rung.cli.versions import versions

__all__ = [
    "DEFAULT_WAIT",
    "EXIT_FAILED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CliError",
    "TraceLine",
    "build_trace",
    "cancel_run",
    "complete_token",
    "event_json",
    "fail_token",
    "heartbeat_token",
    "list_queues",
    "list_runs",
    "list_tokens",
    "load_app",
    "main",
    "pause_queue",
    "queue_json",
    "queues",
    "redrive_run",
    "replay_run",
    "resume_queue",
    "run_json",
    "runs",
    "set_queue_limit",
    "show_queue",
    "show_run",
    "show_token",
    "token_json",
    "tokens",
    "trace_run",
    "trigger",
    "upgrade_table",
    "versions",
    "deploy",
]


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
@click.option(
    "--region",
    metavar="REGION",
    help="AWS region. [env AWS_REGION; default: the profile's region, else us-east-1]",
)
@click.option(
    "--profile",
    metavar="NAME",
    help="An AWS profile of your AWS config: its credentials and region. [env AWS_PROFILE]",
)
@click.pass_context
def main(
    ctx: click.Context,
    app_ref: str | None,
    stack: str | None,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
) -> None:
    """rung: durable task execution for Python on your own AWS account.

    Errors are one line on stderr ("error: ..."). Exit codes: 0 done; 1 the run
    failed, or the run, stack or endpoint is not there; 2 usage (bad option, unknown
    task, invalid payload); 3 --wait timed out.
    """
    if profile:
        # Every client of this command uses the profile (its credentials, and its region
        # unless --region or AWS_REGION says otherwise), as `aws --profile` does.
        sessions.use_profile(profile)
    ctx.obj = _Target(app_ref or None, stack or None, endpoint_url or None, region or None)


main.add_command(trigger)
main.add_command(batch_trigger)
main.add_command(runs)
main.add_command(tokens)
main.add_command(queues)
main.add_command(schedules)
main.add_command(upgrade_table)
main.add_command(versions)
main.add_command(deploy)


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
