"""Groups: ``ctx.group`` (a naming scope whose body runs on every replay) and
``ctx.checkpointed_group`` (a block whose result is checkpointed, so a replay skips its
body). See docs/determinism.md ("Groups").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rung._durable.state import Replayed, Scope, check_step_name, encoded, return_type
from rung.errors import UsageError
from rung.models import StepRecord


@contextlib.contextmanager
def named(scope: Scope, name: str) -> Iterator[None]:
    """``with ctx.group(name)``: the enclosed ids become ``"<path>/<name>/<step>#<n>"``.

    Groups nest; re-entering a group continues its numbering, so ids never collide."""
    scope.check_caller(f"ctx.group({name!r})")
    check_step_name(name)
    with scope.moved_to(f"{scope.path}/{name}" if scope.path else name):
        yield


class Checkpointed:
    """One ``ctx.checkpointed_group`` that has not returned yet: its body runs
    ``inside()`` it; its value goes to ``returned``."""

    def __init__(self, scope: Scope, group_id: str, seq: int, revive: Any) -> None:
        self.scope = scope
        self.group_id = group_id
        self.seq = seq
        self.revive = revive
        # The first execution's start: the earliest checkpoint inside it, if any.
        inside = [
            r.started_at
            for r in list(scope.run.records.values())
            if r.step_id.startswith(group_id + "/")
        ]
        self.started = min([*inside, scope.session.now()])

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """While the body runs, its checkpoints are in the group's scope."""
        with self.scope.moved_to(self.group_id):
            yield

    def returned(self, value: Any) -> Any:
        """Record the group's value once; returns what every replay returns. A value
        that cannot be stored fails the group for good (``StepFailed``)."""
        scope = self.scope
        text, error = encoded(value, f"the result of group {self.group_id!r} in run {scope.run_id}")
        stored = scope.run.record(
            StepRecord.ended(
                self.group_id,
                self.seq,
                run_attempt=scope.run.attempt,
                started_at=self.started,
                finished_at=scope.session.now(),
                kind="group",
                result_json=text,
                error=error,
            )
        )
        return scope.replay(stored, self.revive)


def start_checkpointed(scope: Scope, name: str, fn: Callable[..., Any]) -> Replayed | Checkpointed:
    """Take the group's position: ``Replayed`` when it returned before (its body is not
    run again), else a ``Checkpointed`` for the face to run it."""
    scope.check_caller(f"ctx.checkpointed_group({name!r})")
    if not callable(fn):
        raise UsageError(f"ctx.checkpointed_group({name!r}, fn): fn must be callable, got {fn!r}")
    group_id, seq = scope.position(name, "group")
    revive = return_type(fn)
    record = scope.run.records.get(group_id)
    if record is not None:
        return Replayed(scope.replay(record, revive))
    return Checkpointed(scope, group_id, seq, revive)
