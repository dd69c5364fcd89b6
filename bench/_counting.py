"""Counting a run's AWS requests at the botocore layer (shared by the benchmarks)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import rung.testing


class Counting:
    """Counts requests by (service, operation), from any thread but the caller's."""

    def __init__(self, engine: rung.testing.LocalEngine) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.main = threading.get_ident()
        self.trigger_phase = False
        for service, client in (("dynamodb", engine.dynamodb), ("sqs", engine.sqs)):
            client.meta.events.register(
                "after-call", lambda service=service, **kw: self._count(service, **kw)
            )

    def _count(self, service: str, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if threading.get_ident() == self.main and not self.trigger_phase:
            return
        if model.name == "ReceiveMessage" and not parsed.get("Messages"):
            return
        with self.lock:
            self.counts[(service, model.name)] += 1
