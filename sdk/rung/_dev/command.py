"""The `rung dev` command."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from rung._dev import DevOptions, DevStack, emulator
from rung.errors import RungError


@click.command("dev")
@click.option(
    "--app",
    "app_spec",
    envvar="RUNG_APP",
    required=True,
    help="module:attr of your rung.App, e.g. examples.orders:app [env RUNG_APP]",
)
@click.option(
    "--template",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="the SAM template to run [default: ./template.yaml if there is one, else the "
    "template rung ships]",
)
@click.option(
    "--port", default=4599, show_default=True, help="port of the embedded emulator on 127.0.0.1"
)
@click.option(
    "--api-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="port of the HTTP API and token callback URLs on 127.0.0.1 (0: a free port; the "
    "URL is printed)",
)
@click.option(
    "--endpoint-url",
    default=None,
    help="use this emulator (e.g. LocalStack) instead of the embedded one",
)
@click.option("--stack", "stack_name", default=None, help="stack name [default: rung-<app>]")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="worker processes, at most the event source's MaximumConcurrency [default: one "
    "per CPU, at least 2, within available memory]",
)
@click.option(
    "--function-timeout",
    type=click.Choice(["60", "120", "300", "600", "900"]),
    default="60",
    show_default=True,
    help="the template's FunctionTimeout",
)
@click.option(
    "--lease",
    "lease_seconds",
    type=click.IntRange(1, 3600),
    default=10,
    show_default=True,
    help="the run lease in seconds, kept alive by a heartbeat while an attempt runs: a "
    "crashed worker's run is retried about this long after it died (on AWS: "
    "template.yaml's RUNG_LEASE_SECONDS, 30)",
)
@click.option(
    "--reconcile-every",
    type=float,
    default=10.0,
    show_default=True,
    help="seconds between reconciler passes (on AWS: its schedule)",
)
@click.option(
    "--reconcile-grace",
    type=click.IntRange(1, 86400),
    default=60,
    show_default=True,
    help="seconds a run may look stranded before the reconciler re-drives it",
)
@click.option(
    "--reload/--no-reload",
    default=True,
    show_default=True,
    help="restart worker processes when .py files change",
)
@click.option("--worker-logs", is_flag=True, help="show worker output here, not in .rung/logs")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".rung"),
    show_default=True,
    help="where the emulator's pid and port and the worker logs are kept",
)
@click.option(
    "--stop",
    "stop_only",
    is_flag=True,
    help="stop an embedded emulator left running by a killed rung dev, and exit",
)
def dev(
    app_spec: str,
    template: Path | None,
    port: int,
    api_port: int,
    endpoint_url: str | None,
    stack_name: str | None,
    workers: int | None,
    function_timeout: str,
    lease_seconds: int | None,
    reconcile_every: float,
    reconcile_grace: int,
    reload: bool,
    worker_logs: bool,
    state_dir: Path,
    stop_only: bool,
) -> None:
    """Run the whole application locally: emulator, stack, workers, reconciler."""
    if stop_only:
        stopped = emulator.stop(state_dir)
        click.echo("stopped the embedded emulator" if stopped else "no embedded emulator running")
        return
    options = DevOptions(
        app=app_spec,
        template=template,
        port=port,
        api_port=api_port,
        endpoint_url=endpoint_url,
        stack_name=stack_name,
        workers=workers,
        function_timeout=int(function_timeout),
        lease_seconds=lease_seconds,
        reconcile_every=reconcile_every,
        reconcile_grace=reconcile_grace,
        reload=reload,
        worker_logs=worker_logs,
        state_dir=state_dir,
    )
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack = DevStack(options)
        with stack:
            done.wait()
            click.echo("rung dev: stopping (waiting for running invocations)", err=True)
    except RungError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo("rung dev: stopped", err=True)


if __name__ == "__main__":
    dev()
