"""LocalEngine's cron schedules: the app's declared schedules and those a test creates
(``engine.client.create_schedule``) live in the emulator's EventBridge Scheduler, and
``rung._engine.schedules.LocalScheduler`` fires them as EventBridge Scheduler would.

Firing times pass in two ways. With ``virtual_time=False`` the workers fire what is due
as the wall clock passes it. With virtual time the clock does not jump to a schedule's
next time by itself (a schedule always has one, so the clock would never stop): the
test moves it, with ``engine.clock.advance`` (the times passed fire at the workers'
next idle turn) or with ``engine.run_schedules(until)``, which steps the clock through
every firing time up to ``until`` and waits for the runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rung._aws.scheduler import Scheduler
from rung._engine.schedules import LocalScheduler
from rung._util.clock import Clock, VirtualClock
from rung.errors import UsageError

if TYPE_CHECKING:
    from rung._aws.sqs import SqsQueue

#: The role the emulator's schedules name (EventBridge Scheduler's on AWS; not checked).
LOCAL_ROLE = "arn:aws:iam::123456789012:role/rung-local-scheduler"


class Scheduling:
    """``LocalEngine``'s schedule methods (it sets the attributes)."""

    clock: Clock
    scheduler: Scheduler | None = None
    local_scheduler: LocalScheduler | None = None

    def settle(self, timeout: float = 30.0, *, blocked: int = 0) -> None:
        raise NotImplementedError

    def _start_scheduler(self, client: Any, group: str, queue: SqsQueue) -> Scheduler:
        scheduler = Scheduler(client, group, queue.arn, LOCAL_ROLE)
        scheduler.ensure_group()
        self.scheduler = scheduler
        # Every change to the engine's schedules goes through this Scheduler, which tells
        # the local scheduler: it reads them again then, not on a timer (an idle worker
        # ticks every 50 ms; a read of the Scheduler API each second would cost the
        # engine's throughput, which the real-time flow-control tests measure).
        self.local_scheduler = LocalScheduler(scheduler, queue, self.clock, refresh=3600.0)
        return scheduler

    def _drop_scheduler(self) -> None:
        if self.scheduler is not None:
            for name in list(self.scheduler.names()):
                self.scheduler.delete(name)
            self.scheduler.client.delete_schedule_group(Name=self.scheduler.group)

    def run_schedules(self, until: datetime | timedelta, *, timeout: float = 60.0) -> int:
        """Step the virtual clock to each firing time of the schedules up to ``until`` (a
        time, or how far from now), firing each once as EventBridge Scheduler would; the
        clock moves on once the engine has settled (``settle``, each wait at most
        ``timeout`` seconds), so each firing's run is done before the next time comes.
        Returns how many firings were sent.

        Example:
            >>> engine.client.create_schedule("report", "*/5 * * * *")
            >>> engine.run_schedules(timedelta(days=7))
            2016
        """
        if self.local_scheduler is None:
            raise UsageError("the LocalEngine is not started: use it in a `with` block")
        if not isinstance(self.clock, VirtualClock):
            raise UsageError(
                "run_schedules moves a virtual clock; with virtual_time=False the schedules "
                "fire as the wall clock passes their times"
            )
        end = self.clock.now() + until if isinstance(until, timedelta) else until
        fired = self.local_scheduler.tick()
        while (due := self.local_scheduler.next_due()) is not None and due <= end:
            # As the engine's own jumps: only once the work of the last firings is done
            # (moving the clock under a running attempt would expire its lease).
            self.settle(timeout)
            self.clock.advance_to(max(due, self.clock.now()))
            fired += self.local_scheduler.tick()
        self.settle(timeout)
        self.clock.advance_to(max(end, self.clock.now()))
        fired += self.local_scheduler.tick()
        self.settle(timeout)
        return fired
