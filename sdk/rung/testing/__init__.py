"""Run an app's tasks in this process, on the embedded AWS emulator, for tests.

``LocalEngine`` (``rung.testing.engine``) is the fourth target beside AWS, LocalStack
and ``rung dev``; ``SimulatedCrash`` makes one of its workers die mid-step.

Example:
    >>> with rung.testing.LocalEngine(app) as engine:
    ...     handle = engine.trigger("process-order", {"order_id": "o-1"})
    ...     run = engine.wait(handle.run_id, timeout=30)
    ...     assert run.status == "COMPLETED"
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rung.testing.engine import LocalEngine, SimulatedCrash

__all__ = ["LocalEngine", "SimulatedCrash"]


def __getattr__(name: str) -> Any:
    # Imported when first used, so that rung's pytest plugin (rung.testing.pytest_plugin,
    # loaded by pytest wherever rung is installed) does not import the engine.
    if name in __all__:
        from rung.testing import engine

        value = getattr(engine, name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'rung.testing' has no attribute {name!r}")
