"""Playing the event source by hand in LocalEngine tests (``workers=0``): the test
decides when messages are delivered and when virtual time passes."""

from __future__ import annotations

from rung._engine.worker import Disposition
from rung._util.clock import VirtualClock
from rung.testing import LocalEngine


def virtual(engine: LocalEngine) -> VirtualClock:
    """The engine's clock, which a test with ``virtual_time=True`` (the default) moves."""
    assert isinstance(engine.clock, VirtualClock)
    return engine.clock


def deliver(engine: LocalEngine) -> list[Disposition]:
    """Play the event source: hand every visible message to the worker, delete the ACKed."""
    dispositions: list[Disposition] = []
    while messages := engine.queue.receive(max_messages=10):
        for message in messages:
            disposition = engine.worker.handle(message)
            if disposition == Disposition.ACK:
                engine.queue.delete(message)
            dispositions.append(disposition)
    return dispositions
