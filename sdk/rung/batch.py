"""What ``ctx.map`` and ``ctx.parallel`` return, and the rules that end them.

``Completion`` says when a batch is decided and whether it succeeded; ``BatchResult``
holds one ``BatchItem`` per input, in input order. How branches run, what they record
and how they replay is in ``rung._durable.parallel`` and docs/parallel.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast

from rung.errors import ErrorInfo, InvalidConfig, StepFailed, UsageError

R = TypeVar("R")

#: The most items one ``ctx.map`` (or functions one ``ctx.parallel``) may have.
MAX_ITEMS = 10_000

ItemStatus = Literal["succeeded", "failed", "skipped"]


@dataclass(frozen=True, kw_only=True)
class Completion:
    """When a ``ctx.map`` / ``ctx.parallel`` is decided, and whether it succeeded.

    With no argument every item must succeed: the first failure decides the batch
    (no new branch starts) and ``ctx.map`` raises ``rung.BatchFailed``.

    Once the rule is decided, either way, no new branch starts; branches already
    running finish (their results are kept), and items that never ran (or were
    left waiting) get status ``"skipped"``.

    Args:
        min_successes: the batch succeeds as soon as this many items succeeded.
            Failures are tolerated as long as this many successes stay reachable,
            unless a tolerance below is given as well.
        tolerated_failures: the batch fails when more than this many items fail.
        tolerated_failure_pct: the batch fails when more than this percentage
            (0 to 100) of all its items fail. With both tolerances, exceeding either
            fails the batch.

    Example:
        >>> ctx.map(orders, ship, completion=rung.Completion(tolerated_failures=5))
        >>> ctx.map(mirrors, fetch, completion=rung.Completion(min_successes=1))
    """

    min_successes: int | None = None
    tolerated_failures: int | None = None
    tolerated_failure_pct: float | None = None

    def __post_init__(self) -> None:
        if self.min_successes is not None and (
            not _is_int(self.min_successes) or self.min_successes < 1
        ):
            raise InvalidConfig(
                f"Completion(min_successes=...) must be an int >= 1, got {self.min_successes!r}"
            )
        if self.tolerated_failures is not None and (
            not _is_int(self.tolerated_failures) or self.tolerated_failures < 0
        ):
            raise InvalidConfig(
                "Completion(tolerated_failures=...) must be an int >= 0 (how many items may "
                f"fail), got {self.tolerated_failures!r}"
            )
        pct = self.tolerated_failure_pct
        if pct is not None and (
            isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 <= pct <= 100
        ):
            raise InvalidConfig(
                "Completion(tolerated_failure_pct=...) must be a number from 0 to 100 "
                f"(a percentage of the items), got {pct!r}"
            )

    def check_size(self, total: int, what: str) -> None:
        """Refuse a rule that can never hold for a batch of ``total`` items."""
        if self.min_successes is not None and self.min_successes > total:
            raise InvalidConfig(
                f"{what} needs min_successes={self.min_successes} but has only {total} "
                "item(s); lower min_successes or pass more items"
            )

    def too_many_failures(self, failed: int, total: int) -> bool:
        """Whether ``failed`` failures out of ``total`` items break the rule."""
        if self.tolerated_failures is not None and failed > self.tolerated_failures:
            return True
        if self.tolerated_failure_pct is not None and failed * 100 > (
            self.tolerated_failure_pct * total
        ):
            return True
        if self.min_successes is None and self._no_tolerance:
            return failed > 0  # the default: every item must succeed
        return False

    @property
    def _no_tolerance(self) -> bool:
        return self.tolerated_failures is None and self.tolerated_failure_pct is None

    def verdict(self, *, total: int, succeeded: int, failed: int) -> bool | None:
        """True: the batch succeeded; False: it failed; None: not decided yet.

        A pure function of the counts, so a replay that reads the same branch
        records reaches the same verdict.
        """
        if self.too_many_failures(failed, total):
            return False
        if self.min_successes is not None:
            if succeeded >= self.min_successes:
                return True
            if total - failed < self.min_successes:
                return False  # too few items left to reach min_successes
            return None
        return True if succeeded + failed == total else None

    def explain_failure(self, *, total: int, succeeded: int, failed: int) -> str:
        """Why a batch with these counts failed, in words."""
        if self.too_many_failures(failed, total):
            if self.tolerated_failures is not None and failed > self.tolerated_failures:
                allowed = f"more than the {self.tolerated_failures} tolerated"
            elif self.tolerated_failure_pct is not None:
                allowed = f"more than the {self.tolerated_failure_pct:g}% tolerated"
            else:
                allowed = "and every item must succeed (see rung.Completion to tolerate some)"
            return f"{failed} of {total} items failed, {allowed}"
        return (
            f"it needed {self.min_successes} successful items and got {succeeded} "
            f"({failed} of {total} failed)"
        )


@dataclass(frozen=True)
class BatchItem(Generic[R]):
    """The outcome of one item of a ``ctx.map`` (or one function of ``ctx.parallel``).

    Attributes:
        index: its position in the input.
        status: ``"succeeded"``, ``"failed"`` (its function raised, or a step in it
            failed for good) or ``"skipped"`` (it had not finished when the
            completion rule was decided: it never started, or it was left waiting).
        result: the function's return value (succeeded items), else None.
        error: what it raised (failed items), stored as data, else None.
        name: its branch's name (``ctx.parallel`` given a mapping, ``ctx.map`` given an
            ``item_name``), else None.
    """

    index: int
    status: ItemStatus
    result: R | None = None
    error: ErrorInfo | None = None
    name: str | None = None


@dataclass(frozen=True)
class BatchResult(Generic[R]):
    """What ``ctx.map`` and ``ctx.parallel`` return: one item per input, in input order.

    Example:
        >>> batch = ctx.map(urls, fetch, completion=rung.Completion(tolerated_failures=2))
        >>> pages = batch.results()                  # values of the succeeded items
        >>> for item in batch.items:
        ...     if item.status == "failed":
        ...         log.warning("item %d: %s", item.index, item.error)
    """

    items: list[BatchItem[R]]

    def results(self) -> list[R]:
        """The values of the succeeded items, in input order."""
        return [cast(R, item.result) for item in self.items if item.status == "succeeded"]

    def results_by_name(self) -> dict[str, R]:
        """The values of the succeeded items by branch name, for a batch whose branches
        have names (``ctx.parallel({"user": ..., "orders": ...})``, ``ctx.map(...,
        item_name=...)``).

        Raises:
            UsageError: the branches have no names.

        Example:
            >>> batch = ctx.parallel({"user": load_user, "orders": load_orders})
            >>> found = batch.results_by_name()   # {"user": ..., "orders": ...}
        """
        if self.items and self.items[0].name is None:
            raise UsageError(
                "results_by_name() needs named branches: pass ctx.parallel a mapping of "
                "name -> function, or ctx.map an item_name; use results() otherwise"
            )
        return {
            cast(str, item.name): cast(R, item.result)
            for item in self.items
            if item.status == "succeeded"
        }

    @property
    def succeeded(self) -> int:
        """How many items succeeded."""
        return self._count("succeeded")

    @property
    def failed(self) -> int:
        """How many items failed."""
        return self._count("failed")

    @property
    def skipped(self) -> int:
        """How many items were skipped (not finished when the rule was decided)."""
        return self._count("skipped")

    def _count(self, status: ItemStatus) -> int:
        return sum(1 for item in self.items if item.status == status)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BatchFailed(StepFailed):
    """A ``ctx.map`` or ``ctx.parallel`` broke its completion rule (``rung.Completion``).

    Raised in the code that called ``ctx.map``; catch it (or ``StepFailed``) to carry
    on. ``step_id`` is the batch's id (``"/<name>#<n>"``), ``message`` says how many
    items failed and the first failure. Replays raise an identical error.

    Attributes:
        result: the ``BatchResult``: every item's status, result or error.

    Example:
        >>> try:
        ...     batch = ctx.map(items, process, completion=rung.Completion(tolerated_failures=2))
        ... except rung.BatchFailed as exc:
        ...     batch = exc.result    # what did succeed is still there
    """

    def __init__(self, step_id: str, error: ErrorInfo, result: BatchResult[Any]) -> None:
        super().__init__(step_id, error)
        self.result = result
