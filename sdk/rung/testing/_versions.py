"""The code versions of a ``LocalEngine``: one Worker per version of the app.

A test deploys a new version (``LocalEngine.deploy``) as a deploy publishes one on AWS:
new runs start on it, and every run already started finishes on its own. The engine's
poller hands each message to the latest version's worker; one for a run pinned to an
older version is handed over to that version's worker (``hand_over``), in the same
thread, as the Lambda worker hands it to that version's function on AWS.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from rung._aws.sqs import QueueMessage
from rung._engine.routing import Disposition, check_version
from rung._engine.worker import Worker
from rung.errors import UsageError


class LocalVersions:
    """The workers of each version, oldest first; the last one is the latest."""

    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}
        self._deployed: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def check_new(self, version: object) -> str:
        """``version`` as a new version's label, or a UsageError saying why not."""
        label = check_version(version)
        with self._lock:
            if label in self._workers:
                raise UsageError(
                    f"version {label!r} is deployed already in this LocalEngine; a version "
                    "is immutable: deploy the new code under a new label"
                )
        return label

    def next_label(self) -> str:
        """The default label of the next version: "1", "2", ..."""
        with self._lock:
            n = len(self._deployed) + 1
            while str(n) in self._deployed:
                n += 1
            return str(n)

    def add(self, version: str, worker: Worker, at: datetime) -> None:
        with self._lock:
            self._workers[version] = worker
            self._deployed[version] = at

    @property
    def latest(self) -> str:
        with self._lock:
            return next(reversed(self._workers))

    def deployed(self) -> list[tuple[str, datetime | None]]:
        """The versions that exist, oldest first, with when they were deployed."""
        with self._lock:
            return [(v, self._deployed[v]) for v in self._workers]

    def remove(self, version: str) -> None:
        with self._lock:
            if version == next(reversed(self._workers)):
                raise UsageError(f"version {version!r} is the latest: it cannot be removed")
            self._workers.pop(version, None)

    def hand_over(
        self, version: str, message: QueueMessage, time_left: Callable[[], float] | None
    ) -> Disposition | None:
        """``Versioning.hand_over`` for this engine: that version's worker handles the
        message here and now; None when no such version exists (any more)."""
        with self._lock:
            worker = self._workers.get(version)
        if worker is None:
            return None
        return worker.handle(message, time_left, handed_over=True)
