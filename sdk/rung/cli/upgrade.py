"""``rung upgrade-table``: move a table created before the write-sharded indexes to them.

The walk (docs/deploying.md, "Upgrading the table's indexes"):

1. backfill ``task_shard``/``status_shard`` on every run item
   (``DynamoStore.backfill_shards``), so that each new index holds every run from the
   moment it is ACTIVE, when readers start to use it;
2. the index steps from where the table is to the last, one index per step: through the
   stack's ``IndexUpgradeStep`` parameter (one CloudFormation update each), or, with
   ``--table`` (a table outside any stack), with DynamoDB ``UpdateTable``; each step
   waits until its index is ACTIVE (or gone) before the next starts;
3. before the first old index is deleted, a second backfill pass catches what workers
   of the previous release, still running during the index builds, changed without
   the shard attributes; and each old index stays until its new counterpart has been
   ACTIVE for ``--reader-grace``, the time a reader trusts what it read of the table's
   indexes (``rung._aws.dynamodb.listing``): no reader still queries an index that is
   gone.

Every part starts from what the table and stack show, so a second run after an
interruption continues where the first stopped, and a run after completion does nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import click
from rich.console import Console

from rung._aws import cloudformation, sessions
from rung._aws.dynamodb import (
    INDEX_STEPS,
    LAST_STEP,
    REPLACES,
    BackfillProgress,
    DynamoStore,
    IndexChange,
    TableIndexes,
    UpgradeError,
    index_change,
)
from rung._aws.dynamodb.listing import _LAYOUT_TTL
from rung._util.durations import format_duration
from rung.cli._common import (
    EXIT_USAGE,
    _console,
    _duration,
    _fail,
    _json_option,
    _print_json,
    _Target,
)

#: template.yaml's parameter that says which indexes the table has.
PARAMETER = "IndexUpgradeStep"
#: How often a step's progress is looked at (DescribeTable, DescribeStacks) on AWS, and
#: on an emulator (--endpoint-url), where an index is built in moments.
_POLL = 5.0
_POLL_EMULATOR = 0.5
#: old index -> the new one that replaces it
_NEW_OF = {old: new for new, old in REPLACES.items()}


@click.command("upgrade-table")
@click.option(
    "--table",
    "table_name",
    metavar="NAME",
    help="A table outside any stack (one you manage yourself, an emulator's): upgrade it "
    "with DynamoDB UpdateTable. Without it: the stack's table, through CloudFormation.",
)
@click.option("--dry-run", is_flag=True, help="Print what it would do; change nothing.")
@click.option(
    "--segments",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    metavar="N",
    help="Parallel Scan segments of the backfill (1-64). More is faster, and writes the "
    "old indexes' busiest keys faster: DynamoDB may throttle, and the backfill then waits.",
)
@click.option(
    "--reader-grace",
    default=format_duration(timedelta(seconds=_LAYOUT_TTL)),
    show_default=True,
    callback=_duration,
    metavar="DURATION",
    help="How long a new index must have been ACTIVE before the old one it replaces is "
    "deleted: the time rung's readers trust what they read of the table's indexes. "
    "0s when nothing reads the table during the upgrade.",
)
@_json_option
@click.pass_obj
def upgrade_table(
    target: _Target,
    table_name: str | None,
    dry_run: bool,
    segments: int,
    reader_grace: timedelta,
    as_json: bool,
) -> None:
    """Move a table created before the write-sharded indexes to them.

    Backfills the new indexes' keys on every run, then creates runs_by_status and
    runs_by_task and deletes by_status and by_task, one index at a time, waiting for
    each. The old indexes serve reads until the new ones are ACTIVE.

    A stack must first be deployed from this version's template.yaml with
    `--parameter-overrides IndexUpgradeStep=0` (docs/deploying.md, "Upgrading the
    table's indexes"). Running it again continues where it stopped; after the upgrade
    it does nothing.

    \b
    Examples:
      rung --stack rung-shop upgrade-table --dry-run
      rung --stack rung-shop upgrade-table
      rung --endpoint-url http://127.0.0.1:4599 upgrade-table --table my-runs
    """
    root = click.get_current_context().find_root()
    named = root.get_parameter_source("stack") == click.core.ParameterSource.COMMANDLINE
    if table_name is not None and named:  # (a RUNG_STACK in the environment gives way)
        _fail(
            "--table upgrades a table outside any stack (with UpdateTable), --stack the "
            "table of a stack (through CloudFormation): give one of them",
            EXIT_USAGE,
        )
    endpoint = target.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    dynamodb = sessions.client("dynamodb", endpoint, target.region)
    stack: _StackSteps | None = None
    if table_name is None:
        stack = _StackSteps.find(target, endpoint)
        table_name = stack.table
    walk = _Walk(DynamoStore(dynamodb, table_name), stack, segments, reader_grace, _Report(as_json))
    walk.poll = _POLL_EMULATOR if endpoint else _POLL
    walk.run(dry_run)


class _StackSteps:
    """A stack whose template has ``IndexUpgradeStep``: its steps are stack updates."""

    def __init__(self, cfn: Any, name: str, table: str, step: int) -> None:
        self.cfn = cfn
        self.name = name
        self.table = table
        self.step = step

    @classmethod
    def find(cls, target: _Target, endpoint: str | None) -> _StackSteps:
        name = target.stack_name()
        cfn = sessions.client("cloudformation", endpoint, target.region)
        stack = cloudformation.describe(cfn, name, endpoint)
        table = stack.outputs.get("TableName")
        if not table:
            _fail(f"stack {name!r} has no TableName output: is it a rung stack?")
        status = cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
        if str(status).endswith("_IN_PROGRESS"):  # e.g. the update of a run cut short
            poll = _POLL_EMULATOR if endpoint else _POLL
            cloudformation.wait_for_stack(cfn, name, timeout=None, poll=poll)
        values = cloudformation.parameters(cfn, name)
        if PARAMETER not in values:
            _fail(
                f"stack {name} was deployed from a template without the {PARAMETER} "
                "parameter (a rung from before the write-sharded indexes): first deploy "
                "this version's template.yaml to it with `sam deploy --parameter-overrides "
                f"{PARAMETER}=0` (that keeps the table's indexes as they are), then run "
                f"`rung --stack {name} upgrade-table` again"
            )
        return cls(cfn, name, table, int(values[PARAMETER]))

    def apply(self, store: DynamoStore, change: IndexChange, poll: float) -> None:
        cloudformation.update_parameter(self.cfn, self.name, PARAMETER, str(change.step), poll=poll)
        found = store.table_indexes()
        if found.step == change.step - 1 and all(s == "ACTIVE" for s in found.indexes.values()):
            # The update completed and the table did not move: the template deployed
            # has its conditions resolved (emulators get it that way).
            _fail(
                f"stack {self.name}: the update to {PARAMETER}={change.step} completed but "
                f"table {self.table} still has {found.names()}: the stack's template does "
                "not choose its indexes by the parameter (an emulator's stack: rung "
                "deploys those with the conditions resolved); upgrade the table itself "
                f"with `rung upgrade-table --table {self.table}`"
            )
        self.step = change.step


class _Report:
    """What the walk says: lines for people (and a spinner on a terminal), or, with
    --json, one object at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.data: dict[str, Any] = {"backfills": [], "steps": []}
        self._out = _console()
        status = Console(stderr=True)
        self._live = status.status("") if status.is_terminal and not as_json else None

    def line(self, text: str) -> None:
        if not self.as_json:
            self._out.print(text)

    def working(self, text: str) -> None:
        """A transient line on a terminal (what is being waited for), else nothing."""
        if self._live is not None:
            self._live.update(text)
            self._live.start()

    def idle(self) -> None:
        if self._live is not None:
            self._live.stop()

    def finish(self) -> None:
        self.idle()
        if self.as_json:
            _print_json(self.data)


class _Walk:
    def __init__(
        self,
        store: DynamoStore,
        stack: _StackSteps | None,
        segments: int,
        reader_grace: timedelta,
        report: _Report,
    ) -> None:
        self.store = store
        self.stack = stack
        self.segments = segments
        self.grace = reader_grace.total_seconds()
        self.report = report
        self.started = time.monotonic()
        self.poll = _POLL
        #: when each new index was seen ACTIVE by this walk (monotonic)
        self.active_since: dict[str, float] = {}

    def run(self, dry_run: bool) -> None:
        try:
            self._run(dry_run)
        finally:
            self.report.idle()

    def _run(self, dry_run: bool) -> None:
        store, report = self.store, self.report
        found = store.table_indexes()
        step = store.index_step() if found.step is None else found.step
        if self.stack is not None and self.stack.step != step:
            _fail(
                f"stack {self.stack.name} has {PARAMETER}={self.stack.step} but its table "
                f"{store.table} has {found.names()} (step {step}): something changed the "
                "indexes outside the stack; set the parameter to match the table "
                f"(`sam deploy --parameter-overrides {PARAMETER}={step}`), then run this again"
            )
        where = f" (stack {self.stack.name})" if self.stack is not None else ""
        report.data.update(
            table=store.table,
            stack=self.stack.name if self.stack is not None else None,
            from_step=step,
            to_step=LAST_STEP,
            dry_run=dry_run,
        )
        if step < LAST_STEP:
            report.line(
                f"table {store.table}{where}: index step {step} of {LAST_STEP} ({found.names()})"
            )
        if not found.settled(step) and not dry_run:
            # A change asked for before (by a run of this command that was cut short)
            # is still under way: the next starts only once it is done.
            report.line(f"{found.in_flux()}: waiting for it")
            title = f"table {store.table}"
            store.wait_for_index_step(step, poll=self.poll, on_wait=self._waiting(title, None))
            report.idle()
        if step == LAST_STEP:
            report.line(
                f"table {store.table}{where} already has the write-sharded indexes "
                "(runs_by_status, runs_by_task): nothing to do"
            )
            report.finish()
            return
        if dry_run:
            self._plan(step, found)
            report.finish()
            return
        self._backfill("backfill")
        created = False
        for number in range(step + 1, LAST_STEP + 1):
            change = index_change(number)
            if change.action == "delete":
                if created:  # what old workers changed while the new indexes were built
                    self._backfill("catch-up backfill")
                    created = False
                self._grace(change)
            self._step(change)
            created = created or change.action == "create"
        report.line(
            f"done: table {store.table} has {', '.join(sorted(INDEX_STEPS[LAST_STEP]))} only"
        )
        report.finish()

    def _plan(self, step: int, found: TableIndexes) -> None:
        how = (
            f" (a CloudFormation update of stack {self.stack.name}: {PARAMETER}=N)"
            if self.stack is not None
            else " (DynamoDB UpdateTable)"
        )
        self.report.line(
            f"would backfill task_shard and status_shard on the run items of table "
            f"{self.store.table} (about {found.item_count} items in the table, DynamoDB's "
            "estimate; one write per run that lacks them)"
        )
        for number in range(step + 1, LAST_STEP + 1):
            change = index_change(number)
            self.report.data["steps"].append(asdict(change))
            self.report.line(
                f"would run step {number} of {LAST_STEP}: {change.describe()}{how}, "
                "then wait for it"
            )

    def _backfill(self, what: str) -> None:
        report = self.report
        report.working(f"{what}: scanning {self.store.table}")
        last_shown = [0.0]

        def progress(done: BackfillProgress) -> None:
            if time.monotonic() - last_shown[0] > 0.2:
                last_shown[0] = time.monotonic()
                report.working(
                    f"{what}: {done.scanned} runs scanned, {done.updated} updated "
                    f"({done.segments_done} of {done.segments} segments done)"
                )

        began = time.monotonic()
        done = self.store.backfill_shards(segments=self.segments, progress=progress)
        report.idle()
        report.data["backfills"].append({"pass": what, **asdict(done)})
        extra = [
            f"{done.retried} read again after they moved" if done.retried else "",
            f"{done.vanished} deleted meanwhile" if done.vanished else "",
        ]
        report.line(
            f"{what}: {done.scanned} runs scanned, {done.updated} updated, "
            f"{done.up_to_date} already had their shard keys"
            + "".join(f", {e}" for e in extra if e)
            + f" ({_took(began)})"
        )
        if done.unsettled:
            shown = ", ".join(done.unsettled[:5])
            raise UpgradeError(
                f"{len(done.unsettled)} runs changed status under every try of the backfill "
                f"({shown}): run `rung upgrade-table` again; no index was changed"
            )

    def _grace(self, change: IndexChange) -> None:
        new = _NEW_OF[change.index]
        since = self.active_since.get(new, self.started)
        wait = since + self.grace - time.monotonic()
        if wait <= 0:
            return
        self.report.line(
            f"waiting {format_duration(timedelta(seconds=round(wait)))} before deleting "
            f"{change.index}: readers that looked at the table's indexes before {new} "
            "was ACTIVE still read it (--reader-grace)"
        )
        self.report.working(f"waiting for readers to move to {new}")
        time.sleep(wait)
        self.report.idle()

    def _step(self, change: IndexChange) -> None:
        report, store = self.report, self.store
        title = f"step {change.step} of {LAST_STEP}: {change.describe()}"
        report.line(title)
        began = time.monotonic()
        report.working(f"{title}: updating")
        if self.stack is not None:
            report.working(f"{title}: updating stack {self.stack.name}")
            self.stack.apply(store, change, self.poll)
        else:
            store.start_index_step(change.step)
        store.wait_for_index_step(change.step, poll=self.poll, on_wait=self._waiting(title, change))
        report.idle()
        if change.action == "create":
            self.active_since[change.index] = time.monotonic()
        state = "ACTIVE" if change.action == "create" else "deleted"
        report.data["steps"].append({**asdict(change), "seconds": round(time.monotonic() - began)})
        report.line(f"  {change.index} {state} ({_took(began)})")

    def _waiting(self, title: str, change: IndexChange | None) -> Callable[[TableIndexes], None]:
        def show(found: TableIndexes) -> None:
            if change is None:
                self.report.working(f"{title}: {found.in_flux()}")
            else:
                state = found.indexes.get(change.index, "gone")
                self.report.working(f"{title}: {change.index} is {state}")

        return show


def _took(began: float) -> str:
    return format_duration(timedelta(seconds=round(time.monotonic() - began, 1)))
