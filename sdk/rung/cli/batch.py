"""``rung batch-trigger TASK FILE``: many runs of a task in one call (Client.batch_trigger)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from rung._util.durations import parse_duration
from rung.cli._common import _console, _error, _json_option, _print_json, _Target
from rung.models import TriggerItem

_OPTION_KEYS = {"payload", "idempotency_key", "delay", "tags", "ttl", "metadata"}


@click.command("batch-trigger")
@click.argument("task")
@click.argument("items_file", metavar="FILE")
@click.option(
    "--with-options",
    is_flag=True,
    help="Entries are {payload, idempotency_key, delay, tags, ttl, metadata}, not payloads.",
)
@_json_option
@click.pass_obj
def batch_trigger(
    target: _Target, task: str, items_file: str, with_options: bool, as_json: bool
) -> None:
    """Start one run of TASK per entry of FILE (at most 1,000); print each run's id.

    FILE (- for standard input) is a JSON array or JSON lines, an entry per run: its
    payload, or with --with-options an object {"payload": ..., "idempotency_key": "k",
    "delay": "30s", "tags": ["t"], "ttl": "10m"}. Every entry is checked before anything is stored;
    a refused entry is reported (exit code 1) and the others are triggered.

    \b
    Examples:
      rung batch-trigger resize images.jsonl
      rung batch-trigger resize - --with-options < items.json
    """
    entries = _read_entries(items_file)
    items = [_item(n, e) for n, e in enumerate(entries)] if with_options else entries
    client = target.client(need_app=True)
    results = client.batch_trigger(task, items)
    refused = [r for r in results if not r.ok]
    if as_json:
        _print_json(
            [
                {
                    "index": r.index,
                    "run_id": r.handle.run_id if r.handle else None,
                    "created": r.handle.created if r.handle else None,
                    "error": {"type": r.error.type, "message": r.error.message}
                    if r.error
                    else None,
                }
                for r in results
            ]
        )
    else:
        table = Table(box=None, header_style="bold")
        for column in ("#", "run", "note"):
            table.add_column(column)
        for r in results:
            if r.handle is not None:
                note = "" if r.handle.created else "idempotency key matched an existing run"
                table.add_row(str(r.index), r.handle.run_id, note)
            else:
                table.add_row(str(r.index), "-", f"[red]{r.error}[/red]")
        out = _console()
        out.print(table)
        out.print(f"{len(results) - len(refused)} triggered, {len(refused)} refused")
    if refused:
        raise _error(f"{len(refused)} of {len(results)} entries were refused (see above)")


def _read_entries(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, list):
        return value
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise click.BadParameter(
                f"{path} is neither a JSON array nor JSON lines: line {number}: {exc.msg}"
            ) from None
    return entries


def _item(index: int, entry: Any) -> TriggerItem:
    if not isinstance(entry, dict) or not set(entry) <= _OPTION_KEYS:
        unknown = sorted(set(entry) - _OPTION_KEYS) if isinstance(entry, dict) else None
        raise click.BadParameter(
            f"entry {index}: with --with-options an entry is an object of "
            f"{', '.join(sorted(_OPTION_KEYS))}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else f", got {entry!r:.80}")
        )
    return TriggerItem(
        payload=entry.get("payload"),
        idempotency_key=entry.get("idempotency_key"),
        delay=_duration_of(index, entry, "delay"),
        tags=entry.get("tags"),
        ttl=_duration_of(index, entry, "ttl"),
        metadata=entry.get("metadata"),
    )


def _duration_of(index: int, entry: dict[str, Any], name: str) -> Any:
    """A duration option of an entry: "30s" parsed; seconds (or anything else) kept for
    ``batch_trigger`` to check and report per item."""
    value = entry.get(name)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise click.BadParameter(f"entry {index}: {name}: {exc}") from None
    return value
