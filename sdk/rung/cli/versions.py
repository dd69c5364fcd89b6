"""``rung versions``: the worker function's versions and the runs still on each; retire
the ones no run needs (docs/versioning.md)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import click
from rich import box
from rich.table import Table

from rung._aws import cloudformation, sessions
from rung._aws.functions import FunctionVersions, recent
from rung._engine.routing import version_table
from rung._util.clock import SystemClock
from rung._util.durations import format_duration
from rung.cli._common import (
    _console,
    _duration,
    _error,
    _json_option,
    _print_json,
    _Target,
)
from rung.models import VersionInfo

_function_option = click.option(
    "--function",
    "function_name",
    metavar="NAME",
    help="The worker function [default: the stack's WorkerFunctionName output].",
)


@click.group()
def versions() -> None:
    """The worker's code versions and the runs on each; retire unused ones."""


@versions.command("list")
@_function_option
@_json_option
@click.pass_obj
def list_versions(target: _Target, function_name: str | None, as_json: bool) -> None:
    """Every published version (oldest first) with its runs queued, running and waiting.

    New runs start on the latest; every other run finishes on the version it started
    on. A version marked "missing" no longer exists while runs are pinned to it: they
    fail when they next move (redrive them to move them to the latest).
    """
    found = _table(target, function_name)[1]
    if as_json:
        _print_json([version_json(v) for v in found])
        return
    out = _console()
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (
        ("version", "left"),
        ("deployed (UTC)", "left"),
        ("queued", "right"),
        ("running", "right"),
        ("waiting", "right"),
        ("", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for info in found:
        table.add_row(
            info.version,
            info.deployed_at.strftime("%Y-%m-%d %H:%M:%S") if info.deployed_at else "",
            str(info.queued),
            str(info.running),
            str(info.waiting),
            "latest" if info.latest else ("missing" if not info.exists else ""),
        )
    out.print(table)


@versions.command("prune")
@_function_option
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option(
    "--keep-recent",
    default="15m",
    show_default=True,
    callback=_duration,
    metavar="DURATION",
    help="Keep a version replaced this recently by a newer one (a deploy's previous "
    "version may still be taking runs for up to the function timeout).",
)
@_json_option
@click.pass_obj
def prune_versions(
    target: _Target,
    function_name: str | None,
    dry_run: bool,
    keep_recent: timedelta,
    as_json: bool,
) -> None:
    """Delete the versions no run needs: not the latest, no run in flight, and not
    replaced by a newer version within --keep-recent (until then it may still be
    receiving batches that the deploy sent its way)."""
    function, found = _table(target, function_name)
    now = SystemClock().now()
    kept: list[dict[str, Any]] = []
    gone: list[str] = []
    existing = [info for info in found if info.exists]
    replaced_at = {
        info.version: after.deployed_at for info, after in zip(existing, existing[1:], strict=False)
    }
    for info in found:
        why = _kept_because(info, replaced_at.get(info.version), now, keep_recent)
        if why is None:
            gone.append(info.version)
        elif info.exists:
            kept.append({"version": info.version, "reason": why})
    if not dry_run:
        for version in gone:
            function.delete(version)
    if as_json:
        _print_json({"deleted": [] if dry_run else gone, "would_delete": gone, "kept": kept})
        return
    out = _console()
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb}: {', '.join(gone)}" if gone else "nothing to prune")
    for entry in kept:
        out.print(f"kept {entry['version']}: {entry['reason']}")


def _kept_because(
    info: VersionInfo, replaced_at: datetime | None, now: datetime, keep_recent: timedelta
) -> str | None:
    """Why a version stays (None: it goes). One replaced by a deploy within
    ``keep_recent`` may still be receiving batches that pin new runs to it."""
    if not info.exists:
        return "missing"
    if info.latest:
        return "the latest"
    if info.in_flight:
        return f"{info.in_flight} run(s) in flight"
    if replaced_at is None or recent(replaced_at, now, keep_recent):
        return f"replaced less than {format_duration(keep_recent)} ago"
    return None


def _table(
    target: _Target, function_name: str | None
) -> tuple[FunctionVersions, list[VersionInfo]]:
    function = _function(target, function_name)
    published = function.published()
    latest = function.latest()
    if latest is None:
        raise _error(
            f"function {function.function_name!r} has no published version: deploy it with "
            "template.yaml (AutoPublishAlias) to pin runs to versions"
        )
    counts = target.client().runs_in_flight()
    return function, version_table(published, latest, counts)


def _function(target: _Target, function_name: str | None) -> FunctionVersions:
    """--function, else the stack's WorkerFunctionName output, else the name template.yaml
    gives it (``<stack>-worker``: rung dev registers its versions under that name)."""
    endpoint = target.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    if function_name is None:
        cfn = sessions.client("cloudformation", endpoint, target.region)
        outputs = cloudformation.describe(cfn, target.stack_name(), endpoint).outputs
        function_name = outputs.get("WorkerFunctionName") or f"{target.stack_name()}-worker"
    return FunctionVersions(sessions.client("lambda", endpoint, target.region), function_name)


def version_json(info: VersionInfo) -> dict[str, Any]:
    """A version for ``--json``."""
    return {
        "version": info.version,
        "deployed_at": info.deployed_at.isoformat() if info.deployed_at else None,
        "latest": info.latest,
        "exists": info.exists,
        "queued": info.queued,
        "running": info.running,
        "waiting": info.waiting,
    }
