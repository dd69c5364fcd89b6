"""Run an app's tasks in this process, on the embedded AWS emulator, for tests.

``LocalEngine`` (``rung.testing.engine``) is the fourth target beside AWS, LocalStack
and ``rung dev``; ``SimulatedCrash`` makes one of its workers die mid-step.

Example:
    >>> with rung.testing.LocalEngine(app) as engine:
    ...     handle = engine.trigger("process-order", {"order_id": "o-1"})
    ...     run = engine.wait(handle.run_id, timeout=30)
    ...     assert run.status == "COMPLETED"
"""

from rung.testing.engine import LocalEngine, SimulatedCrash

__all__ = ["LocalEngine", "SimulatedCrash"]
