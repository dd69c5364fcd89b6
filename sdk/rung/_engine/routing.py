"""Where a queue message goes: what the worker did with it (``Disposition``), which
code version's worker must handle it (``Versioning``, docs/versioning.md), and when a
message for a run should next arrive (``due``).

Every run executes on the code version it started on. A worker knows its own version;
the claim pins a run that has none to it and refuses a run pinned to another
(``DynamoStore.claim_run``). Such a message is handed over, whole, to the run's own
version: ``Versioning.hand_over`` is how a host reaches it (on Lambda, an asynchronous
invoke of the qualified function; in LocalEngine, that version's worker). The message
itself stays the carrier: the receiving worker handles it as if it had received it,
and deletes it only when the run moved on, so a hand-over lost half-way is recovered
as a lost invocation is (the message comes back).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rung._aws.dynamodb import DynamoStore, waits_without_timer
from rung._aws.sqs import BadMessage, QueueMessage, SqsQueue, decode
from rung._util.clock import Clock
from rung.errors import ErrorInfo, InvalidConfig
from rung.models import Run, RunStatus, VersionInfo

log = logging.getLogger("rung.worker")

#: The longest version label: a Lambda version number, a content hash, a test's name.
MAX_VERSION_CHARS = 64


class Disposition(enum.StrEnum):
    """What to do with the message after ``handle``."""

    ACK = "ack"  # delete it: the run is finished, or moved on by another message
    KEEP = "keep"  # leave it: its visibility was set to when it must come back
    POISON = "poison"  # leave it to be redelivered and, after maxReceiveCount, the DLQ


#: Hand ``message`` to the worker of code version ``version``. Returns what the worker
#: that handled the message (here or there) did with it, or None when that version
#: does not exist (retired): the run can then never continue as it started, and
#: fails. Raises when the version could not be reached now (the message comes back).
HandOver = Callable[[str, QueueMessage, Callable[[], float] | None], Disposition | None]


@dataclass(frozen=True)
class Versioning:
    """A worker's code version, and how it reaches the workers of other versions."""

    version: str
    hand_over: HandOver

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", check_version(self.version))


def check_version(version: object) -> str:
    """A version label as given, or ``InvalidConfig`` saying what one may be."""
    if (
        not isinstance(version, str)
        or not version
        or len(version) > MAX_VERSION_CHARS
        or not version.isprintable()
        or version != version.strip()
    ):
        raise InvalidConfig(
            f"a code version is a non-empty printable string of at most "
            f"{MAX_VERSION_CHARS} characters without surrounding spaces, got {version!r}"
        )
    return version


def version_table(
    deployed: Sequence[tuple[str, datetime | None]],
    latest: str,
    counts: Mapping[str | None, Mapping[RunStatus, int]],
) -> list[VersionInfo]:
    """The versions ``deployed`` (oldest first, with when), and any other that runs are
    pinned to, with their runs in flight (``DynamoStore.runs_in_flight``). Runs not
    pinned yet count on ``latest``."""
    merged: dict[str, dict[RunStatus, int]] = {v: {} for v, _ in deployed}
    for version, by_status in counts.items():
        into = merged.setdefault(latest if version is None else version, {})
        for status, n in by_status.items():
            into[status] = into.get(status, 0) + n
    when = dict(deployed)
    return [
        VersionInfo(
            version=version,
            deployed_at=when.get(version),
            latest=version == latest,
            exists=version in when,
            queued=by.get(RunStatus.QUEUED, 0) + by.get(RunStatus.DELAYED, 0),
            running=by.get(RunStatus.RUNNING, 0),
            waiting=by.get(RunStatus.WAITING, 0),
        )
        for version, by in merged.items()
    ]


def gone_error(run: Run) -> ErrorInfo:
    """The error of a run whose code version no longer exists."""
    return ErrorInfo(
        "VersionNotFound",
        f"run {run.run_id} executes on code version {run.version!r}, which no longer "
        "exists (it was pruned or never deployed here), so it cannot continue on the code "
        "it started on. Redrive it to move it to the latest version (`rung runs redrive "
        f"{run.run_id}`, checked against its recorded steps), or replay it as a new run",
    )


def message_due(run: Run, now: datetime) -> datetime | None:
    """When a message for ``run`` should next arrive (as ``handle`` defers it), or None."""
    if run.status.is_terminal:
        return None
    if run.status == RunStatus.RUNNING:
        # Should its holder have died, this takes over after the lease (as a "busy" claim)
        return (run.lease_until or now) + timedelta(seconds=1)
    if run.available_at is None:
        return now
    if waits_without_timer(run.available_at):
        return None  # it waits with no timer: its waker sends a message
    return run.available_at


def settle_worn(
    store: DynamoStore, queue: SqsQueue, clock: Clock, messages: Sequence[QueueMessage]
) -> set[str]:
    """Renew the worn messages among ``messages``, before any of them is handled.

    A message received ``queue.renew_at`` times or more is exchanged for a fresh
    copy (receive count 0) due when its run is (now, when the run's lease expires,
    or at its timer), and deleted at once; one of a run without a future (finished,
    or waiting with no timer: whoever wakes it sends a message) is only deleted, as
    is a second worn copy of one run. Deleted now, not at the end of the batch: an
    invocation that dies later on does not bring them back. Returns the ids of the
    messages settled so: they are done (ACK) without being handled.

    Not renewed, so that SQS moves them to the DLQ: bodies that are not rung
    messages and runs that do not exist (poison; ``Worker.handle`` refuses them). One
    consistent batch read of the worn messages' runs; nothing at all when none is
    worn. The Lambda handler calls this for its whole batch first, so that a crash
    later in the batch cannot push a worn batch-mate further.
    """
    worn: dict[str, QueueMessage] = {}
    copies: list[QueueMessage] = []
    for message in messages:
        if not queue.worn(message):
            continue
        try:
            run_id = decode(message.body)
        except BadMessage:
            continue  # poison: Worker.handle refuses it and SQS dead-letters it
        if run_id in worn:
            copies.append(message)  # the fresh copy of the first serves for both
        else:
            worn[run_id] = message
    if not worn:
        return set()
    runs = store.get_runs(list(worn))
    now = clock.now()
    renewals: list[tuple[QueueMessage, str, timedelta]] = []
    discards = [m for m in copies if decode(m.body) in runs]
    for run_id, message in worn.items():
        run = runs.get(run_id)
        if run is None:
            continue  # no such run: poison
        when = message_due(run, now)
        if when is None:
            discards.append(message)
        else:
            renewals.append((message, run_id, max(when - now, timedelta(0))))
    renewed = queue.renew(renewals)
    queue.discard(discards)
    for message in renewed:
        log.info(
            "message %s was received %d times; a fresh copy replaces it",
            message.message_id,
            message.receive_count,
        )
    return {m.message_id for m in [*renewed, *discards]}
