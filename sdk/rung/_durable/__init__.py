"""The durable operations: one implementation, under every face of ``rung.Context``.

What a task body calls (steps, waits, tokens, callbacks, conditions, child runs,
``map``/``parallel``, groups) is implemented here once, as functions over a ``Scope``
(``state.py``): where the caller stands in the run (its scope, its positions) and the
run's attempt (its checkpoints, the engine's session). ``rung.Context`` is a thin face
that checks its arguments' shape and delegates; an async face calls the same
operations and awaits the user's functions where the sync face calls them.

An operation that runs user code is split around it, so that each face can call the
code its own way: ``steps.start`` decides between a replay and an execution, and the
face runs the function and hands its value (or exception) to the ``Execution``.

Modules, bottom up: ``state`` (the scope, the attempt's state, ``current_step``, the
session port), ``signals`` (the ``BaseException`` unwinds), ``steps``, ``waits``,
``children``, ``groups``, ``parallel``. Nothing here imports ``rung.context`` or the
engine.
"""
