"""Testing rung tasks with rung's pytest plugin (docs/testing.md).

Run it: ``pytest examples/test_orders.py``. The plugin comes with rung (no conftest
needed): ``rung_engine`` is a LocalEngine for the app the ``rung_app`` mark names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import rung
from examples import orders
from rung.testing import LocalEngine

pytestmark = pytest.mark.rung_app(orders.app)


@pytest.fixture(autouse=True)
def fresh_payments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's fake payment provider keeps its state in files: a fresh one per test."""
    monkeypatch.setattr(orders, "STATE_DIR", tmp_path)
    monkeypatch.setattr(orders, "payments", orders.FakePayments(tmp_path / "payments.json"))


def test_an_order_is_charged_once_though_the_gateway_times_out(rung_engine: LocalEngine) -> None:
    handle = rung_engine.trigger("process-order", {"order_id": "o-1"})
    run = rung_engine.wait(handle.run_id)

    assert run.status == rung.RunStatus.COMPLETED
    assert run.output == {"order_id": "o-1", "charge_id": "ch_1"}
    assert orders.calls() == {"fetch_order": 1, "charge": 2, "email": 1}  # charge retried
    assert list(orders.payments.charges) == [f"{run.run_id}:/charge#1"]  # charged once


def test_the_retry_resumes_at_the_failed_step(rung_engine: LocalEngine) -> None:
    run_id = rung_engine.trigger("process-order", {"order_id": "o-2"}).run_id
    rung_engine.wait(run_id)

    events = [(str(e.type), e.step) for e in rung_engine.history(run_id)]
    assert events.count(("StepSucceeded", "/fetch_order#1")) == 1  # replayed, not re-run
    assert ("StepFailed", "/charge#1") in events
    assert events[-1] == ("RunCompleted", None)
