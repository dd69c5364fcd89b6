"""The examples run as documented (examples/orders.py is run by tests/integration/test_demo.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from rich.console import Console

import rung
import rung.testing

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_research_agent_fans_out_waits_for_approval_and_publishes() -> None:
    research = load("research")
    run, children = research.run_demo(Console(quiet=True))

    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output["published"] is True and run.output["sources"] == 9
    assert run.output["skipped"] == [
        "NonRetryable: step '/llm#1' failed: the page could not be read"
    ]
    assert Counter(c.status for c in children) == {"COMPLETED": 9, "FAILED": 1}
    assert all(c.parent_run_id == run.run_id for c in children)
    # The queue's concurrency limit held (the tasks' own count), and the 429 was
    # retried once, by that child alone.
    assert research.model.peak <= 3
    assert sorted(research.model.calls.values()) == [1] * 9 + [2]


def test_the_async_research_agent_summarizes_concurrently_on_its_loop_and_publishes() -> None:
    research = load("research_async")
    run, history = research.run_demo(Console(quiet=True))

    assert run.status == rung.RunStatus.COMPLETED, run.error
    assert run.output["sources"] == 11 and run.output["approved_by"] == "ada"
    assert run.output["skipped"] == [
        "NonRetryable: step '/map#1[11]/summarize#1' failed: the page could not be read"
    ]
    # 12 summaries, 5 at once on the event loop; the 429 retried that step alone
    assert research.llm.peak == 5
    assert sorted(research.llm.calls.values()) == [1] * 11 + [2]
    kinds = [str(e.type) for e in history]
    assert kinds.count("RetryScheduled") == 1
    assert [e.step for e in history if e.type == rung.EventType.CHILD_TRIGGERED] == ["/publish#1"]
    assert kinds.count("WaitStarted") == 3  # the hour, the review token, the child


def test_every_order_of_the_orders_demo_shows_the_charge_timing_out_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake payment provider's state outlives a run (a file, shared by `rung dev`'s
    # worker processes and left in place between sessions): the second order, or the
    # demo run again, must still show the failing charge and the retry resuming at it.
    monkeypatch.setenv("RUNG_DEMO_STATE", str(tmp_path))
    orders = load("orders")

    with rung.testing.LocalEngine(orders.app) as engine:
        runs = [
            engine.wait(engine.trigger("process-order", {"order_id": o}).run_id, timeout=30)
            for o in ("o-1", "o-2", "o-1")
        ]
        histories = [engine.history(run.run_id) for run in runs]

    for run, history in zip(runs, histories, strict=True):
        assert (run.status, run.attempt) == (rung.RunStatus.COMPLETED, 2), run
        failed = [e for e in history if e.type == rung.EventType.STEP_FAILED]
        assert [(e.step, e.error and e.error.message) for e in failed] == [
            ("/charge#1", "payment gateway timeout")
        ]
    assert len(orders.payments.charges) == 3  # one charge per run, none taken twice
    assert orders.calls() == {"fetch_order": 3, "charge": 6, "email": 3}
