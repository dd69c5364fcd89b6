"""EventBridge: the only module that sends events.

A run's end (completed, failed, timed out, canceled) and a redrive are events on the
stack's bus, ``source = "rung"``, so that users route them (to Slack, email, a queue)
with ordinary EventBridge rules (docs/observability.md, Events).
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("rung.events")

#: The events' ``source``.
SOURCE = "rung"
#: The bus rung sends to (template.yaml sets it; unset: the account's default bus).
BUS_ENV = "RUNG_EVENT_BUS"


class EventBus:
    """Sends rung's events to one bus. ``client``: a boto3 EventBridge client."""

    def __init__(self, client: Any, bus: str = "default") -> None:
        self.client = client
        self.bus = bus

    def send(self, detail_type: str, detail: dict[str, Any]) -> None:
        """One event; never raises (an event that cannot be sent must not fail a run)."""
        try:
            out = self.client.put_events(
                Entries=[
                    {
                        "Source": SOURCE,
                        "DetailType": detail_type,
                        "Detail": json.dumps(detail, default=str),
                        "EventBusName": self.bus,
                    }
                ]
            )
            for entry in out.get("Entries", []):
                if entry.get("ErrorCode"):
                    log.warning("EventBridge refused %s: %s", detail_type, entry)
        except Exception as exc:
            log.warning("could not send the event %s: %s", detail_type, exc)
