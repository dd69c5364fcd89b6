"""The examples run as documented (examples/orders.py is run by tests/integration/test_demo.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

from rich.console import Console

import rung

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
