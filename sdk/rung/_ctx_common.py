"""What the parts of ``rung.Context`` share: the wait limits, and the base class of
its mixins (rung._ctx_waits, rung._ctx_children), which declares the state and the
methods of ``Context`` they use, for type checking only."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from rung._durations import MAX_DURATION

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Iterator

    from rung.context import AttemptSession
    from rung.models import StepRecord
    from rung.retry import RetryPolicy

R = TypeVar("R")

#: ``create_token``'s default timeout: every wait has a timer (invariant 4).
DEFAULT_TOKEN_TIMEOUT = timedelta(days=7)
#: The longest a token may stay open, and the longest single wait (or delay, or timeout).
MAX_WAIT = MAX_DURATION
#: The most children one ``batch_trigger_and_wait`` starts: their outcomes are one
#: checkpoint (at most ``MAX_VALUE_BYTES``), and the waiting parent's item lists them.
MAX_BATCH = 1000


class _ContextBase:
    """What the mixins of ``Context`` use of it; ``Context`` sets and defines these."""

    if TYPE_CHECKING:
        run_id: str
        attempt: int
        _records: dict[str, StepRecord]
        _session: AttemptSession
        _scope: str

        def _position(self, name: str, kind: str) -> tuple[str, int]: ...

        def _next_step_id(self, name: str) -> str: ...

        def _check_caller(self, what: str) -> None: ...

        def _remember(self, record: StepRecord) -> StepRecord: ...

        def _replay(self, record: StepRecord, return_type: Any) -> Any: ...

        def step(
            self,
            name: str,
            fn: Callable[..., R],
            /,
            *args: Any,
            retry: RetryPolicy | None = None,
            at_most_once: bool = False,
            **kwargs: Any,
        ) -> R: ...

        @contextlib.contextmanager
        def group(self, name: str) -> Iterator[None]: ...
