"""How a worker times its attempts (``WorkerConfig``): leases, the heartbeat that keeps
them, the time-limit margin, and how often a running attempt looks for a cancel; and
the base of the token callback URLs it hands out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from rung._util.durations import check_duration
from rung.errors import InvalidConfig

#: The longest lease a worker takes.
MAX_LEASE = timedelta(days=1)
#: A message in hand stays invisible this much longer than the run's lease, so that the
#: first redelivery after a crash finds the lease expired (and takes the run over)
#: instead of finding it still held and being deferred once more.
HOLD_MARGIN = timedelta(seconds=5)


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Worker timing.

    Attributes:
        lease_duration: how long a claim holds a run without renewal. A crashed
            worker's run is taken over once this has passed since its last renewal,
            so it is how fast a crash is recovered. With ``heartbeat`` the lease is
            renewed every third of it while an attempt runs, so it may be much shorter
            than a step (on Lambda 30 s, template.yaml); without, only before steps,
            so it must outlive the longest step.
        heartbeat: renew the lease from a background thread while the task body runs
            (and, on Lambda, keep the invocation's messages invisible; see
            docs/retries.md). Off in ``LocalEngine``, whose virtual clock only moves
            when every worker is idle: there a live worker's lease cannot expire
            unless a test moves the clock, which is how its tests stall a worker.
        slot_lease: how long a queue slot (docs/flow-control.md) is held without
            renewal; renewed before steps (never by the heartbeat: the slots live on
            one hot item per queue), so it must outlive the longest step (on Lambda
            the function timeout + 60 s, ``RUNG_SLOT_LEASE_SECONDS``). A slot handed
            to a parked run from outside a worker is held this long too.
        min_time_left: before each step, if the invocation has less than this left,
            the run continues in a fresh invocation (not counted as an attempt).
        cancel_check_interval: before a step, the worker reads the run's status if it
            has not for this long, so a canceled run stops at its next step boundary
            (one eventually consistent read per interval; see docs/lifecycle.md).
        callback_url: the base of token callback URLs (``Token.url``): the callback
            function's URL (template.yaml sets ``RUNG_CALLBACK_URL``), or ``rung dev``'s
            ``/callback``. None: tokens have no URL (docs/http.md).
    """

    lease_duration: timedelta = timedelta(seconds=30)
    heartbeat: bool = True
    slot_lease: timedelta = timedelta(minutes=16)
    min_time_left: timedelta = timedelta(seconds=10)
    cancel_check_interval: timedelta = timedelta(seconds=5)
    callback_url: str | None = None

    def __post_init__(self) -> None:
        url = self.callback_url
        if url is not None and (
            not isinstance(url, str) or not url.startswith(("https://", "http://"))
        ):
            raise InvalidConfig(
                f"worker callback_url must be an http(s) URL (RUNG_CALLBACK_URL: the callback "
                f"function's URL, stack output CallbackUrl), got {url!r}"
            )
        for name, maximum, positive in (
            ("lease_duration", MAX_LEASE, True),
            ("slot_lease", MAX_LEASE, True),
            ("min_time_left", timedelta(minutes=15), False),  # Lambda's whole time limit
            ("cancel_check_interval", timedelta(hours=1), False),
        ):
            value = check_duration(
                getattr(self, name), f"worker {name}", positive=positive, maximum=maximum
            )
            object.__setattr__(self, name, value)
        if not isinstance(self.heartbeat, bool):
            raise InvalidConfig(f"worker heartbeat must be True or False, got {self.heartbeat!r}")

    @property
    def heartbeat_interval(self) -> timedelta:
        """How often the heartbeat renews: a third of the lease, so a late beat or a
        slow write still leaves it a third of the lease to spare."""
        return self.lease_duration / 3

    @property
    def message_hold(self) -> timedelta:
        """How long past each beat the invocation's messages stay invisible."""
        return self.lease_duration + HOLD_MARGIN
