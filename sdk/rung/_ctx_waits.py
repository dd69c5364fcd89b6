"""The durable waits of ``rung.Context``: timers, tokens, callbacks and polled
conditions (``ctx.wait``, ``ctx.create_token``, ``ctx.wait_for_condition``...), and
``rung.Poll``. ``Context`` inherits them from ``_Waits``; see docs/waits.md."""

from __future__ import annotations

import json
import math
import secrets
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, overload

from rung._clock import iso, parse_iso
from rung._ctx_common import DEFAULT_TOKEN_TIMEOUT, MAX_WAIT, _ContextBase
from rung._durations import check_duration, check_factor, format_duration
from rung._signals import Suspend
from rung.errors import ConditionNotMet, ErrorInfo, InvalidConfig, UsageError
from rung.models import StepRecord, Token, TokenState
from rung.retry import MAX_BACKOFF

S = TypeVar("S")

# What to do instead of one wait beyond MAX_WAIT (said in the error).
_LONGER = (
    "wait in a loop of shorter waits (each is its own checkpoint and replays), or wait "
    "for a token that something outside completes"
)


class _Waits(_ContextBase):
    """The durable waits of ``Context`` (rung.context)."""

    # -- durable waits ---------------------------------------------------------------

    def wait(self, duration: timedelta | float, *, name: str = "wait") -> None:
        """Suspend the run for ``duration``; no worker is held while it waits.

        The wake time is fixed when the wait is first reached; replays pass a wait
        whose time has come without waiting again. Any length works (up to a year):
        waits longer than SQS's limits are chained (see docs/waits.md).

        Example:
            >>> ctx.wait(timedelta(hours=20))
        """
        self._check_caller("ctx.wait()")
        delay = check_duration(duration, "ctx.wait duration", maximum=MAX_WAIT, hint=_LONGER)
        self._wait(name, lambda now: now + delay)

    def wait_until(self, when: datetime, *, name: str = "wait") -> None:
        """Suspend the run until ``when`` (timezone-aware); a past time does not wait."""
        self._check_caller("ctx.wait_until()")
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise UsageError(
                f"ctx.wait_until needs a timezone-aware datetime, got {when!r}; use e.g. "
                "datetime(2026, 12, 1, 9, 0, tzinfo=UTC)"
            )
        self._wait(name, lambda now: when)

    def _wait(self, name: str, wake_time: Callable[[datetime], datetime]) -> None:
        step_id, seq = self._position(name, "wait")
        record = self._records.get(step_id)
        if record is None:
            self._session.before_step()
            now = self._session.now()
            wake_at = wake_time(now)
            if wake_at - now > MAX_WAIT:
                raise InvalidConfig(
                    f"ctx.wait_until({iso(wake_at)}) is more than {format_duration(MAX_WAIT)} "
                    f"away; {_LONGER}"
                )
            record = self._remember(
                self._session.record_step(
                    StepRecord(
                        step_id=step_id,
                        seq=seq,
                        outcome="waiting",
                        attempt=1,
                        run_attempt=self.attempt,
                        started_at=now,
                        finished_at=None,
                        kind="wait",
                        wake_at=wake_at,
                    )
                )
            )
        assert record.wake_at is not None
        if record.wake_at > self._session.now():
            raise Suspend(record.wake_at, f"{step_id} until {iso(record.wake_at)}")

    def create_token(
        self,
        name: str,
        *,
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
    ) -> Token:
        """Create a token someone outside the run answers; a checkpoint like a step.

        Hand ``token.id`` to a person or system (in a step: an email, a ticket);
        they call ``Client.complete_token(id, value)`` / ``fail_token`` or run
        ``rung tokens complete ID``; the run gets the answer from ``wait_for_token``.

        Args:
            name: names the token and its checkpoint.
            timeout: after this the token times out (default 7 days; at most 366 days).
            heartbeat_timeout: if set, the token also times out when no
                ``Client.heartbeat_token`` arrives within this long.

        Example:
            >>> token = ctx.create_token("approval", timeout=timedelta(days=3))
            >>> ctx.step("ask", send_approval_mail, token.id)
            >>> decision = ctx.wait_for_token(token)
        """
        self._check_caller(f"ctx.create_token({name!r})")
        limit = check_duration(
            timeout,
            "create_token timeout",
            positive=True,
            maximum=MAX_WAIT,
            hint="for a longer wait, catch TokenTimedOut and create a new token in a loop",
        )
        beat = (
            check_duration(
                heartbeat_timeout,
                "create_token heartbeat_timeout",
                positive=True,
                maximum=limit,
                hint="a heartbeat deadline cannot be later than the token's timeout",
            )
            if heartbeat_timeout is not None
            else None
        )
        step_id, seq = self._position(name, "token")
        record = self._records.get(step_id)
        if record is None:
            self._session.before_step()
            now = self._session.now()
            state = TokenState(
                id="tok_" + secrets.token_urlsafe(24),
                name=name,
                run_id=self.run_id,
                step_id=step_id,
                status="WAITING",
                created_at=now,
                timeout_at=now + limit,
                heartbeat_timeout=beat,
                deadline=min(now + beat, now + limit) if beat else now + limit,
            )
            # The token first, then its checkpoint: a crash between leaves a token
            # nobody was told about, never a checkpoint naming a missing token.
            self._session.create_token(state)
            record = self._remember(
                self._session.record_step(
                    StepRecord.ended(
                        step_id,
                        seq,
                        run_attempt=self.attempt,
                        started_at=now,
                        finished_at=now,
                        kind="token",
                        result_json=json.dumps(
                            {"id": state.id, "name": name, "timeout_at": iso(state.timeout_at)}
                        ),
                    )
                )
            )
        data = json.loads(record.result_json or "{}")
        return Token(
            id=data["id"],
            name=data["name"],
            run_id=self.run_id,
            timeout_at=parse_iso(data["timeout_at"]),
        )

    def wait_for_token(self, token: Token, *, result_type: type[S] | None = None) -> Any:
        """Suspend until ``token`` is completed (returns its value) or failed (raises).

        Raises:
            TokenFailed: it was failed with ``Client.fail_token``; carries that error.
            TokenTimedOut: it reached its timeout or missed a heartbeat.

        Args:
            result_type: revive the value as this type (a pydantic model, dataclass).
        """
        self._check_caller("ctx.wait_for_token()")
        if not isinstance(token, Token):
            raise UsageError(
                f"ctx.wait_for_token needs the Token from ctx.create_token, got {token!r}"
            )
        step_id, seq = self._position(f"{token.name}:wait", "token_wait")
        record = self._records.get(step_id)
        if record is None:
            self._session.before_step()
            state = self._session.get_token(token.id)
            now = self._session.now()
            if state.status == "WAITING" and state.deadline <= now:
                state = self._session.time_out_token(token.id, state.deadline)
            if state.status == "WAITING":
                raise Suspend(
                    state.deadline,
                    f"token {token.name!r} ({token.id}) until {iso(state.deadline)}",
                    tokens=(token.id,),
                    wake_kind="token",
                )
            record = self._remember(
                self._session.record_step(_token_outcome(state, step_id, seq, self.attempt, now))
            )
        return self._replay(record, result_type)

    @overload
    def wait_for_callback(
        self,
        submit: Callable[[str], Any],
        /,
        *,
        name: str = "callback",
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
        result_type: type[S] | None = None,
    ) -> Any: ...

    @overload
    def wait_for_callback(
        self,
        name: str,
        submit: Callable[[str], Any],
        /,
        *,
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
        result_type: type[S] | None = None,
    ) -> Any: ...

    def wait_for_callback(
        self,
        first: str | Callable[[str], Any],
        second: Callable[[str], Any] | None = None,
        /,
        *,
        name: str | None = None,
        timeout: timedelta | float = DEFAULT_TOKEN_TIMEOUT,
        heartbeat_timeout: timedelta | float | None = None,
        result_type: type[S] | None = None,
    ) -> Any:
        """Create a token, call ``submit(token_id)`` as a step, and wait for the answer.

        Called as ``wait_for_callback(submit)`` (the name defaults to ``"callback"``, as a
        step's defaults to its function's) or ``wait_for_callback("approval", submit)``
        (or ``name=``). In a group of that name: ``approval/token#1``,
        ``approval/submit#1``, ``approval/token:wait#1``; a second callback of the same
        name continues the numbering (``approval/token#2`` ...).

        Example:
            >>> decision = ctx.wait_for_callback(
            ...     lambda tid: send_mail(boss, link(tid)), timeout=timedelta(days=3))
            >>> decision = ctx.wait_for_callback("approval", lambda tid: send_mail(boss, tid))
        """
        if isinstance(first, str):
            if name is not None:
                raise UsageError(
                    f"ctx.wait_for_callback({first!r}, submit, name={name!r}) names the "
                    "callback twice: pass the name once"
                )
            name, submit = first, second
        elif second is not None:
            raise UsageError(
                "ctx.wait_for_callback(submit, ...) takes the name first when both are "
                "positional: wait_for_callback('approval', submit), or name='approval'"
            )
        else:
            name, submit = name if name is not None else "callback", first
        self._check_caller(f"ctx.wait_for_callback({name!r})")
        if not callable(submit):
            raise UsageError(
                f"ctx.wait_for_callback({name!r}, submit): submit must be callable (it is "
                f"called with the token id), got {submit!r}"
            )
        with self.group(name):
            token = self.create_token("token", timeout=timeout, heartbeat_timeout=heartbeat_timeout)
            self.step("submit", submit, token.id)
            return self.wait_for_token(token, result_type=result_type)

    def wait_for_condition(
        self,
        check: Callable[[S], S],
        initial_state: S,
        strategy: Poll[S],
        *,
        name: str = "condition",
    ) -> S:
        """Poll ``check(state) -> state`` as a step on a durable schedule until done.

        Each poll is a checkpointed step; between polls the run suspends (no worker
        held). Returns the state for which ``strategy.until(state)`` is true.

        Raises:
            ConditionNotMet: ``strategy.max_polls`` polls did not satisfy it.

        Example:
            >>> job = ctx.wait_for_condition(
            ...     lambda s: get_job(s["id"]), {"id": job_id},
            ...     rung.Poll(until=lambda s: s["state"] == "done", interval=30))
        """
        self._check_caller(f"ctx.wait_for_condition(name={name!r})")
        if not isinstance(strategy, Poll):
            raise UsageError("ctx.wait_for_condition(strategy=...) must be a rung.Poll")
        state = initial_state
        with self.group(name):
            for poll in range(1, strategy.max_polls + 1):
                state = self.step("check", check, state)
                if strategy.until(state):
                    return state
                if poll < strategy.max_polls:
                    self.wait(strategy.delay_after(poll), name="wait")
        raise ConditionNotMet(
            f"{self._scope}/{name}" if self._scope else f"/{name}",
            ErrorInfo(
                "ConditionNotMet",
                f"condition {name!r} did not hold after {strategy.max_polls} polls "
                f"(last state: {state!r:.300}); raise Poll.max_polls or the interval",
            ),
        )


@dataclass(frozen=True, kw_only=True)
class Poll(Generic[S]):
    """How ``ctx.wait_for_condition`` polls.

    Args:
        until: the state is final when this returns True.
        interval: wait before the second poll (default 30 s); a timedelta or seconds.
        backoff: factor between consecutive waits (default 1.0: fixed interval).
        max_interval: cap of any wait (default 1 hour).
        max_polls: after this many polls, ``ConditionNotMet`` (default 100).
    """

    until: Callable[[S], bool]
    interval: timedelta | float = timedelta(seconds=30)
    backoff: float = 1.0
    max_interval: timedelta | float = timedelta(hours=1)
    max_polls: int = 100

    def __post_init__(self) -> None:
        if not callable(self.until):
            raise InvalidConfig("Poll(until=...) must be a function of the state")
        object.__setattr__(self, "interval", check_duration(self.interval, "Poll interval"))
        object.__setattr__(
            self, "max_interval", check_duration(self.max_interval, "Poll max_interval")
        )
        object.__setattr__(
            self,
            "backoff",
            check_factor(self.backoff, "Poll backoff", minimum=1.0, maximum=MAX_BACKOFF),
        )
        if isinstance(self.max_polls, bool) or not isinstance(self.max_polls, int):
            raise InvalidConfig(f"Poll max_polls must be an int, got {self.max_polls!r}")
        if not 1 <= self.max_polls <= 10_000:
            raise InvalidConfig(f"Poll max_polls must be between 1 and 10000, got {self.max_polls}")

    def delay_after(self, poll: int) -> timedelta:
        """The wait after poll number ``poll`` (1-based)."""
        interval = typing.cast(timedelta, self.interval)
        cap = typing.cast(timedelta, self.max_interval)
        if interval <= timedelta(0) or interval >= cap:
            return min(interval, cap)
        if (poll - 1) * math.log(self.backoff) >= math.log(cap / interval):
            return cap  # (compared in logarithms: the power itself could overflow)
        return interval * self.backoff ** (poll - 1)


def _token_outcome(
    state: TokenState, step_id: str, seq: int, run_attempt: int, now: datetime
) -> StepRecord:
    """The checkpoint of a resolved token, as ``wait_for_token`` records it."""
    result_json: str | None = None
    error: ErrorInfo | None = None
    if state.status == "COMPLETED":
        result_json = state.result_json or "null"
    elif state.status == "FAILED":
        error = state.error or ErrorInfo("TokenFailed", "")
    else:
        timeout = state.timeout_at - state.created_at
        if state.deadline < state.timeout_at and state.heartbeat_timeout is not None:
            why = f"no heartbeat arrived within {state.heartbeat_timeout}"
        else:
            why = f"it was not completed within its timeout of {timeout}"
        error = ErrorInfo("TokenTimedOut", f"token {state.name!r} ({state.id}) timed out: {why}")
    return StepRecord.ended(
        step_id,
        seq,
        run_attempt=run_attempt,
        started_at=state.created_at,
        finished_at=state.resolved_at or now,
        kind="token_wait",
        result_json=result_json,
        error=error,
    )
