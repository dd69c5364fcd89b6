"""WorkerConfig: the lease, its heartbeat and the slot lease (docs/retries.md, "How soon")."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rung._engine.config import WorkerConfig
from rung.errors import InvalidConfig


def test_the_defaults_retry_a_crash_within_a_minute_and_hold_slots_past_an_invocation() -> None:
    config = WorkerConfig()

    assert config.lease_duration == timedelta(seconds=30)
    assert config.heartbeat_interval == timedelta(seconds=10)  # two thirds of a lease spare
    assert config.message_hold == timedelta(seconds=35)  # back once the lease has run out
    assert config.slot_lease == timedelta(minutes=16)  # Lambda's 15 minutes + 60 s


def test_a_heartbeat_that_is_not_a_bool_is_refused_with_what_to_give() -> None:
    with pytest.raises(InvalidConfig, match="worker heartbeat must be True or False, got 'no'"):
        WorkerConfig(heartbeat="no")  # type: ignore[arg-type]
