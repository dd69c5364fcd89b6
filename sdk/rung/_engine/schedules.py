"""Cron schedules (docs/schedules.md): creating and changing them in EventBridge
Scheduler (``rung._aws.scheduler``), firing them into runs, and, off AWS, playing
EventBridge Scheduler's part (``LocalScheduler``).

A firing is a message on the work queue that names its schedule, task, payload and
scheduled time. The worker turns it into a run whose idempotency key is the schedule
and the scheduled time, so a firing delivered twice (EventBridge Scheduler delivers at
least once, SQS too) is one run. The previous firing's time comes from the schedule's
item in the table (``SCHEDULE#<id>``), updated by each firing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rung._aws.dynamodb import DynamoStore
from rung._aws.scheduler import MAX_INPUT_CHARS, SCHEDULED_TIME, Scheduler, StoredSchedule
from rung._aws.sqs import SqsQueue
from rung._engine import triggering
from rung._util import serde
from rung._util.clock import Clock, iso, parse_iso
from rung.app import App, Task, check_schedulable
from rung.errors import InvalidConfig, InvalidPayload, RungError, ScheduleNotFound, UnknownTask
from rung.models import RunHandle
from rung.schedules import Cron, ScheduleEvent, ScheduleInfo

log = logging.getLogger("rung.schedules")

_NAME = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")
#: How long a firing's idempotency key holds: as long as SQS keeps a message (14 days).
FIRING_KEY_TTL = timedelta(days=14)
#: The most firings a resume with ``catch_up=True`` sends (the latest ones).
MAX_CATCH_UP = 1000
#: Ids ``create_schedule`` makes (``sch_`` and 24 hex digits): never a declared one's.
_CREATED = re.compile(r"^sch_[0-9a-f]{24}$")


@dataclass(frozen=True)
class Firing:
    """One firing of a schedule, as its message carries it."""

    schedule_id: str
    task_id: str
    timezone: str
    payload: Any
    external_id: str | None
    at: datetime


def name_of(schedule_id: str) -> str:
    """The EventBridge Scheduler name of a schedule id (names are shorter and plainer)."""
    if _NAME.match(schedule_id):
        return schedule_id
    digest = hashlib.sha256(schedule_id.encode()).hexdigest()[:16]
    plain = re.sub(r"[^0-9A-Za-z_.-]", "-", schedule_id)[:40]
    return f"{plain}-{digest}"


def firing_of(body: str) -> Firing | None:
    """The firing a message body carries; None if it is not a schedule's firing."""
    if '"schedule"' not in body:
        return None
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or data.get("kind") != "schedule":
            return None
        return Firing(
            schedule_id=str(data["id"]),
            task_id=str(data["task"]),
            timezone=str(data.get("tz") or "UTC"),
            payload=data.get("payload"),
            external_id=data.get("external_id"),
            at=parse_iso(str(data["at"])),
        )
    except (KeyError, ValueError, TypeError):
        return None


class Schedules:
    """Create, read, change and fire the schedules of one app's stack."""

    def __init__(
        self,
        app: App | None,
        store: DynamoStore,
        queue: SqsQueue,
        scheduler: Scheduler | None,
        clock: Clock,
    ) -> None:
        self.app = app
        self._store = store
        self._queue = queue
        self._scheduler = scheduler
        self._clock = clock

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None or not self._scheduler.group:
            raise InvalidConfig(
                "this client knows no schedule group: pass schedule_group= and "
                "scheduler_role_arn= (the stack's ScheduleGroupName and SchedulerRoleArn "
                "outputs; or $RUNG_SCHEDULE_GROUP and $RUNG_SCHEDULER_ROLE_ARN), or make it "
                "with Client.from_stack"
            )
        return self._scheduler

    # -- changing them --------------------------------------------------------------

    def create(
        self,
        task: str | Task[Any],
        cron: Cron | str,
        *,
        timezone: str | None,
        payload: Any,
        external_id: str | None,
        dedup_key: str | None,
    ) -> ScheduleInfo:
        found = triggering.writable(self.app).get_task(task)
        check_schedulable(found, payload, external_id)
        spec = _cron(cron, timezone)
        if dedup_key is not None:
            if not isinstance(dedup_key, str) or not dedup_key or len(dedup_key) > 256:
                raise InvalidConfig(
                    f"dedup_key must be a non-empty string of at most 256 characters, "
                    f"got {dedup_key!r:.80}"
                )
            digest = hashlib.sha256(f"{found.id}\0{dedup_key}".encode()).hexdigest()[:24]
            schedule_id = f"sch_{digest}"
        else:
            schedule_id = f"sch_{secrets.token_hex(12)}"
        body = _body(schedule_id, found.id, spec, payload, external_id, declared=False)
        existing = self.scheduler.get(name_of(schedule_id)) if dedup_key is not None else None
        enabled = existing.enabled if existing is not None else True  # a pause stays
        body = _keeping_pause(body, existing)
        self.scheduler.put(name_of(schedule_id), spec.aws_expression, spec.timezone, body, enabled)
        return self.get(schedule_id)

    def update(
        self,
        schedule_id: str,
        *,
        cron: Cron | str | None,
        timezone: str | None,
        payload: Any,
        external_id: str | None,
    ) -> ScheduleInfo:
        """Change an imperative schedule; what is None stays as it is."""
        stored, info = self._read(schedule_id)
        if info.declared:
            raise InvalidConfig(
                f"schedule {schedule_id!r} is declared on its task (@app.task(schedule=)): "
                "change it in the code and deploy"
            )
        if cron is not None:
            spec = _cron(cron, timezone)  # a Cron keeps its own zone unless one is given
            if timezone is None and not isinstance(cron, Cron):
                spec = _cron(cron, info.cron.timezone)
        else:
            spec = _cron(info.cron.expression, timezone or info.cron.timezone)
        task = triggering.writable(self.app).get_task(info.task_id)
        check_schedulable(
            task,
            info.payload if payload is None else payload,
            info.external_id if external_id is None else external_id,
        )
        body = _body(
            schedule_id,
            info.task_id,
            spec,
            info.payload if payload is None else payload,
            info.external_id if external_id is None else external_id,
            declared=False,
        )
        body = _keeping_pause(body, stored)
        self.scheduler.put(
            stored.name, spec.aws_expression, spec.timezone, body, stored.enabled, stored.role_arn
        )
        return self.get(schedule_id)

    def set_paused(self, schedule_id: str, paused: bool, *, catch_up: bool = False) -> ScheduleInfo:
        """Pause (its pause time kept in its input) or resume it; ``catch_up``: a resume
        also fires the times it missed while paused (at most ``MAX_CATCH_UP``, the
        latest), each once, as EventBridge Scheduler would have."""
        stored, _ = self._read(schedule_id)
        data, now = dict(stored.input), self._clock.now()
        missed: list[datetime] = []
        if paused:
            if stored.enabled or "paused_at" not in data:  # (a pause again keeps the first)
                data["paused_at"] = iso(now)
        else:
            since = data.pop("paused_at", None)
            if catch_up and not stored.enabled and since is not None:
                cron = Cron(str(data["cron"]), stored.timezone)
                missed = list(cron.times(parse_iso(str(since)), now))[-MAX_CATCH_UP:]
        body = json.dumps(data, separators=(",", ":"))
        self.scheduler.put(
            stored.name, stored.expression, stored.timezone, body, not paused, stored.role_arn
        )
        for at in missed:  # (after the resume: a crash in between loses no future firing)
            self._queue.send_body(_filled(data, at))
        return self.get(schedule_id)

    def delete(self, schedule_id: str) -> None:
        if not self.scheduler.delete(name_of(_check_id(schedule_id))):
            raise ScheduleNotFound(f"no schedule {schedule_id!r}: it was deleted, or never made")

    def sync_declared(self, app: App) -> list[str]:
        """Make the group's declared schedules those of ``app`` (as a deploy does):
        create or update each declared one, delete declared ones whose task no longer
        declares one. Imperative schedules are left alone. Returns the ids changed."""
        declared = {t.id: t for t in app.tasks.values() if t.schedule is not None}
        changed = []
        for name in [n for n in self.scheduler.names() if not _CREATED.match(n)]:
            stored = self.scheduler.get(name)
            if stored is None or not stored.input.get("declared"):
                continue
            if stored.input.get("id") not in declared:
                self.scheduler.delete(name)
                changed.append(str(stored.input.get("id")))
        for task in declared.values():
            spec = task.schedule
            assert spec is not None
            current = self.scheduler.get(name_of(task.id))
            body = _keeping_pause(_body(task.id, task.id, spec, None, None, declared=True), current)
            if (
                current is not None
                and json.dumps(current.input, separators=(",", ":")) == body
                and (current.expression, current.timezone) == (spec.aws_expression, spec.timezone)
            ):
                continue  # as deployed already
            enabled = current.enabled if current is not None else True
            role = current.role_arn if current is not None else None
            self.scheduler.put(
                name_of(task.id), spec.aws_expression, spec.timezone, body, enabled, role
            )
            changed.append(task.id)
        return changed

    # -- reading them ---------------------------------------------------------------

    def get(self, schedule_id: str) -> ScheduleInfo:
        return self._read(schedule_id)[1]

    def list(self, task: str | None = None) -> list[ScheduleInfo]:
        found = []
        for name in self.scheduler.names():
            stored = self.scheduler.get(name)
            if stored is None or stored.input.get("kind") != "schedule":
                continue
            info = self._info(stored)
            if task is None or info.task_id == task:
                found.append(info)
        return sorted(found, key=lambda s: s.id)

    def _read(self, schedule_id: str) -> tuple[StoredSchedule, ScheduleInfo]:
        stored = self.scheduler.get(name_of(_check_id(schedule_id)))
        if stored is None or stored.input.get("id") != schedule_id:
            raise ScheduleNotFound(f"no schedule {schedule_id!r}: it was deleted, or never made")
        return stored, self._info(stored)

    def _info(self, stored: StoredSchedule) -> ScheduleInfo:
        data = stored.input
        spec = Cron(str(data["cron"]), str(data.get("tz") or "UTC"))
        return ScheduleInfo(
            id=str(data["id"]),
            task_id=str(data["task"]),
            cron=spec,
            paused=not stored.enabled,
            payload=data.get("payload"),
            external_id=data.get("external_id"),
            declared=bool(data.get("declared")),
            next_at=spec.next_after(self._clock.now()) if stored.enabled else None,
            paused_at=(
                parse_iso(str(data["paused_at"]))
                if not stored.enabled and data.get("paused_at")
                else None
            ),
        )

    # -- firing ---------------------------------------------------------------------

    def fire(self, firing: Firing) -> RunHandle | None:
        """Start the run of one firing (at most one per schedule and scheduled time).
        None if its task is gone (logged): the schedule should be deleted."""
        app = triggering.writable(self.app)
        try:
            task = app.get_task(firing.task_id)
        except UnknownTask:
            log.error(
                "schedule %s fired for task %r, which this app does not have: delete the "
                "schedule (rung schedules delete %s), or deploy the task again",
                firing.schedule_id,
                firing.task_id,
                firing.schedule_id,
            )
            return None
        last = self._store.note_firing(firing.schedule_id, firing.at)
        event = ScheduleEvent(
            schedule_id=firing.schedule_id,
            scheduled_at=firing.at,
            last_scheduled_at=last,
            timezone=firing.timezone,
            external_id=firing.external_id,
            payload=firing.payload,
        )
        now = self._clock.now()
        try:
            new = triggering.new_run(
                task,
                event.model_dump(mode="json"),
                idempotency_key=f"schedule:{firing.schedule_id}:{iso(firing.at)}",
                delay=None,
                tags=[f"schedule:{name_of(firing.schedule_id)}"],
                now=now,
                what=f"schedule {firing.schedule_id}",
            )
        except RungError as exc:  # no retry can fix it: said, and the firing dropped
            log.error(
                "schedule %s fired for %s, but task %r refuses its run: %s. Fix the task or "
                "the schedule (rung schedules show %s)",
                firing.schedule_id,
                iso(firing.at),
                task.id,
                exc,
                firing.schedule_id,
            )
            return None
        return triggering.trigger(self._store, self._queue, new, FIRING_KEY_TTL, now)


def _check_id(schedule_id: object) -> str:
    if not isinstance(schedule_id, str) or not schedule_id or len(schedule_id) > 128:
        raise ScheduleNotFound(f"{schedule_id!r} is not a schedule id")
    return schedule_id


def _cron(cron: object, timezone: str | None) -> Cron:
    if isinstance(cron, Cron):
        if timezone is not None and timezone != cron.timezone:
            return Cron(cron.expression, timezone)
        return cron
    if isinstance(cron, str):
        return Cron(cron, timezone or "UTC")
    raise InvalidConfig(f"a schedule's cron is a rung.Cron or a string, got {type(cron).__name__}")


def _body(
    schedule_id: str,
    task_id: str,
    spec: Cron,
    payload: Any,
    external_id: object,
    *,
    declared: bool,
) -> str:
    """The firing message a schedule sends (its target's input)."""
    if external_id is not None and (not isinstance(external_id, str) or len(external_id) > 256):
        raise InvalidConfig(
            f"external_id must be a string of at most 256 characters, got {external_id!r:.80}"
        )
    try:
        plain = serde.jsonable(payload, "a schedule's payload")
    except serde.NotSerializable as exc:
        raise InvalidPayload(str(exc)) from None
    body = json.dumps(
        {
            "v": 1,
            "kind": "schedule",
            "id": schedule_id,
            "task": task_id,
            "cron": spec.expression,
            "tz": spec.timezone,
            "payload": plain,
            "external_id": external_id,
            "declared": declared,
            "at": SCHEDULED_TIME,
        },
        separators=(",", ":"),
    )
    if len(body) > MAX_INPUT_CHARS:
        raise InvalidPayload(
            f"a schedule's payload must be small: its firing message would be {len(body):,} "
            f"characters, and EventBridge Scheduler takes {MAX_INPUT_CHARS:,}. Keep an id in "
            "the payload and load the rest in the task"
        )
    return body


class LocalScheduler:
    """EventBridge Scheduler's part off AWS (``rung dev``, LocalEngine): reads the group's
    schedules through the Scheduler API and sends each enabled schedule's firings to the
    queue as their times pass, computed as AWS does (``rung.Cron.times``). A paused
    schedule's times pass unfired, and are not replayed on resume.

    The schedules are read again after a change made through this process's
    ``Scheduler`` and at least every ``refresh`` (changes made elsewhere: ``rung dev``'s
    CLI in another process)."""

    def __init__(
        self, scheduler: Scheduler, queue: SqsQueue, clock: Clock, refresh: float = 1.0
    ) -> None:
        self._scheduler = scheduler
        self._queue = queue
        self._clock = clock
        self._refresh = refresh
        self._seen: dict[str, datetime] = {}  # schedule name -> times up to here are done
        self._cache: dict[str, StoredSchedule] | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()
        scheduler.on_change.append(self._noticed)

    def _noticed(self, name: str) -> None:
        """A schedule was created, changed or deleted here: what was due under its old
        state is sent, then its times count from now (a pause's are not replayed, nor a
        deleted schedule's before it is made again); the schedules are read again."""
        with self._lock:
            now = self._clock.now()
            old = (self._cache or {}).get(name)
            if old is not None and name in self._seen:
                self._fire(name, old, now)
            self._seen[name] = now
            self._cache = None

    def _schedules(self) -> dict[str, StoredSchedule]:
        if self._cache is None or time.monotonic() - self._read_at > self._refresh:
            found = {}
            for name in self._scheduler.names():
                stored = self._scheduler.get(name)
                if stored is not None and stored.input.get("kind") == "schedule":
                    found[name] = stored
            self._cache, self._read_at = found, time.monotonic()
        return self._cache

    def tick(self) -> int:
        """Send the firings due since the last tick; returns how many."""
        with self._lock:
            now = self._clock.now()
            schedules = self._schedules()
            for gone in set(self._seen) - set(schedules):
                del self._seen[gone]
            sent = 0
            for name, stored in sorted(schedules.items()):
                self._seen.setdefault(name, now)
                try:
                    sent += self._fire(name, stored, now)
                except Exception:  # one bad schedule must not stop the others
                    log.exception("schedule %s: could not fire it", name)
                    self._seen[name] = now
            return sent

    def _fire(self, name: str, stored: StoredSchedule, now: datetime) -> int:
        """Send ``name``'s firings after its last tick up to ``now`` (none if paused)."""
        since = self._seen[name]
        self._seen[name] = max(since, now)
        if not stored.enabled:
            return 0
        sent = 0
        for at in Cron(str(stored.input["cron"]), stored.timezone).times(since, now):
            self._queue.send_body(_filled(stored.input, at))
            sent += 1
        return sent

    def next_due(self) -> datetime | None:
        """The next firing time of any enabled schedule (for a virtual clock)."""
        with self._lock:
            now = self._clock.now()
            due = []
            for name, stored in self._schedules().items():
                if stored.enabled:
                    with contextlib.suppress(Exception):  # (tick reports a bad one)
                        cron = Cron(str(stored.input["cron"]), stored.timezone)
                        due.append(cron.next_after(self._seen.get(name, now)))
            return min(due, default=None)


def _keeping_pause(body: str, current: StoredSchedule | None) -> str:
    """A new firing message for a schedule that is ``current``: a paused one keeps the
    time it was paused (a resume with ``catch_up`` counts from it)."""
    if current is None or current.enabled or "paused_at" not in current.input:
        return body
    data = json.loads(body)
    data["paused_at"] = current.input["paused_at"]
    return json.dumps(data, separators=(",", ":"))


def _filled(data: dict[str, Any], at: datetime) -> str:
    """A firing message with its scheduled time, as EventBridge Scheduler fills it in."""
    return json.dumps({**data, "at": iso(at)}, separators=(",", ":"))


class ScheduleMethods:
    """``rung.Client``'s schedule methods (docs/schedules.md); the client sets
    ``_schedules``."""

    _schedules: Schedules

    def create_schedule(
        self,
        task: str | Task[Any],
        cron: Cron | str,
        *,
        timezone: str | None = None,
        payload: Any = None,
        external_id: str | None = None,
        dedup_key: str | None = None,
    ) -> ScheduleInfo:
        """Run ``task`` on ``cron`` from now on (a per-tenant schedule made at run time).

        Each firing starts one run whose payload is a ``rung.ScheduleEvent`` (its
        scheduled time, the previous firing's, ``payload`` and ``external_id``), at most
        one per scheduled time however often it is delivered. ``dedup_key``: creating
        again with the same task and key updates that schedule instead of adding one.

        Raises:
            UnknownTask: no such task. InvalidConfig: a bad cron, timezone, key or
            external id, or a task whose payload type does not take a ScheduleEvent.
            InvalidPayload: ``payload`` is not small JSON.

        Example:
            >>> client.create_schedule("digest", "0 9 * * MON-FRI", timezone="Europe/Paris",
            ...                        external_id="tenant-42", dedup_key="tenant-42")
        """
        return self._schedules.create(
            task,
            cron,
            timezone=timezone,
            payload=payload,
            external_id=external_id,
            dedup_key=dedup_key,
        )

    def list_schedules(self, task: str | None = None) -> list[ScheduleInfo]:
        """Every schedule of the stack (declared and created), by id; ``task``: its only."""
        return self._schedules.list(task)

    def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        """One schedule (``ScheduleNotFound`` if there is none)."""
        return self._schedules.get(schedule_id)

    def update_schedule(
        self,
        schedule_id: str,
        *,
        cron: Cron | str | None = None,
        timezone: str | None = None,
        payload: Any = None,
        external_id: str | None = None,
    ) -> ScheduleInfo:
        """Change a created schedule; what is None stays as it is. A declared one is
        changed in the code (``InvalidConfig``)."""
        return self._schedules.update(
            schedule_id, cron=cron, timezone=timezone, payload=payload, external_id=external_id
        )

    def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Stop firing it; times that pass while paused are not replayed unless it is
        resumed with ``catch_up=True``."""
        return self._schedules.set_paused(schedule_id, True)

    def resume_schedule(self, schedule_id: str, *, catch_up: bool = False) -> ScheduleInfo:
        """Fire it again from its next time on; ``catch_up``: and now, once each, the
        times it missed while paused (at most the latest 1,000), as runs whose
        ``ScheduleEvent.scheduled_at`` is the missed time (docs/schedules.md)."""
        return self._schedules.set_paused(schedule_id, False, catch_up=catch_up)

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete it: it fires no more (runs it started go on)."""
        self._schedules.delete(schedule_id)

    def deploy_schedules(self) -> list[str]:
        """Make the stack's declared schedules those of this client's app: each task's
        ``schedule=`` created or updated, and those of tasks that no longer declare one
        deleted. ``rung deploy`` (and ``rung dev``, LocalEngine) do it after each deploy.
        Returns the ids it changed."""
        return self._schedules.sync_declared(triggering.writable(self._schedules.app))
