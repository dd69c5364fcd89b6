"""Durable waits: timers, tokens, callbacks and polled conditions, and ``rung.Poll``.

The operations that call user code (a callback's ``submit``, a condition's ``check``)
are plans: generators that yield a ``StepCall`` for each step the face must run (its
own way: a call, an await) and receive its value, so the loop, the names and the
waits between polls are written once. ``rung.context.Context`` drives them. See
docs/waits.md.
"""

from __future__ import annotations

import json
import math
import secrets
import typing
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from rung._durable.groups import named
from rung._durable.signals import Suspend
from rung._durable.state import WAIT_SUFFIX, Scope, check_waited_name
from rung._util import callbacks
from rung._util.clock import iso, parse_iso
from rung._util.durations import MAX_DURATION, check_duration, check_factor, format_duration
from rung.errors import ConditionNotMet, ErrorInfo, InvalidConfig, UsageError
from rung.models import StepRecord, Token, TokenState
from rung.retry import MAX_BACKOFF

S = TypeVar("S")

#: ``create_token``'s default timeout: every wait has a timer (invariant 4).
DEFAULT_TOKEN_TIMEOUT = timedelta(days=7)
#: The longest a token may stay open, and the longest single wait (or delay, or timeout).
MAX_WAIT = MAX_DURATION

# What to do instead of one wait beyond MAX_WAIT (said in the error).
_LONGER = (
    "wait in a loop of shorter waits (each is its own checkpoint and replays), or wait "
    "for a token that something outside completes"
)


@dataclass(frozen=True)
class StepCall:
    """A plan's request: run ``fn(*args)`` as the step ``name`` and send back its value."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


#: What a plan is: it yields steps to run and returns its result.
Plan = Generator[StepCall, Any, S]


# -- timers ------------------------------------------------------------------------


def wait(scope: Scope, duration: timedelta | float, name: str) -> None:
    """``ctx.wait``: suspend for ``duration`` (fixed when first reached)."""
    scope.check_caller("ctx.wait()")
    delay = check_duration(duration, "ctx.wait duration", maximum=MAX_WAIT, hint=_LONGER)
    _wait(scope, name, lambda now: now + delay)


def wait_until(scope: Scope, when: datetime, name: str) -> None:
    """``ctx.wait_until``: suspend until ``when``; a past time does not wait."""
    scope.check_caller("ctx.wait_until()")
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise UsageError(
            f"ctx.wait_until needs a timezone-aware datetime, got {when!r}; use e.g. "
            "datetime(2026, 12, 1, 9, 0, tzinfo=UTC)"
        )
    _wait(scope, name, lambda now: when)


def _wait(scope: Scope, name: str, wake_time: Callable[[datetime], datetime]) -> None:
    step_id, seq = scope.position(name, "wait")
    record = scope.run.records.get(step_id)
    if record is None:
        scope.session.before_step()
        now = scope.session.now()
        wake_at = wake_time(now)
        if wake_at - now > MAX_WAIT:
            raise InvalidConfig(
                f"ctx.wait_until({iso(wake_at)}) is more than {format_duration(MAX_WAIT)} "
                f"away; {_LONGER}"
            )
        record = scope.run.record(
            StepRecord(
                step_id=step_id,
                seq=seq,
                outcome="waiting",
                attempt=1,
                run_attempt=scope.run.attempt,
                started_at=now,
                finished_at=None,
                kind="wait",
                wake_at=wake_at,
            )
        )
    assert record.wake_at is not None
    if record.wake_at > scope.session.now():
        raise Suspend(record.wake_at, f"{step_id} until {iso(record.wake_at)}")


# -- tokens ------------------------------------------------------------------------


def create_token(
    scope: Scope,
    name: str,
    timeout: timedelta | float,
    heartbeat_timeout: timedelta | float | None,
) -> Token:
    """``ctx.create_token``: a token, created once (a checkpoint like a step)."""
    scope.check_caller(f"ctx.create_token({name!r})")
    check_waited_name(name, "ctx.create_token")
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
    step_id, seq = scope.position(name, "token")
    record = scope.run.records.get(step_id)
    if record is None:
        scope.session.before_step()
        now = scope.session.now()
        secret = callbacks.new_secret()  # of token.url: kept in the checkpoint (replays)
        state = TokenState(
            id="tok_" + secrets.token_urlsafe(24),
            name=name,
            run_id=scope.run_id,
            step_id=step_id,
            status="WAITING",
            created_at=now,
            timeout_at=now + limit,
            heartbeat_timeout=beat,
            deadline=min(now + beat, now + limit) if beat else now + limit,
            url_hash=callbacks.secret_hash(secret),
        )
        # The token first, then its checkpoint: a crash between leaves a token
        # nobody was told about, never a checkpoint naming a missing token.
        scope.session.create_token(state)
        record = scope.run.record(
            StepRecord.ended(
                step_id,
                seq,
                run_attempt=scope.run.attempt,
                started_at=now,
                finished_at=now,
                kind="token",
                result_json=json.dumps(
                    {
                        "id": state.id,
                        "name": name,
                        "timeout_at": iso(state.timeout_at),
                        "url_secret": secret,
                    }
                ),
            )
        )
    data = json.loads(record.result_json or "{}")
    return Token(
        id=data["id"],
        name=data["name"],
        run_id=scope.run_id,
        timeout_at=parse_iso(data["timeout_at"]),
        url=callbacks.token_url(scope.session.callback_base(), data["id"], data.get("url_secret")),
    )


def wait_for_token(scope: Scope, token: Token, result_type: Any) -> Any:
    """``ctx.wait_for_token``: the answer, or its error raised; suspends until then."""
    scope.check_caller("ctx.wait_for_token()")
    if not isinstance(token, Token):
        raise UsageError(f"ctx.wait_for_token needs the Token from ctx.create_token, got {token!r}")
    step_id, seq = scope.position(f"{token.name}{WAIT_SUFFIX}", "token_wait")
    record = scope.run.records.get(step_id)
    if record is None:
        scope.session.before_step()
        state = scope.session.get_token(token.id)
        now = scope.session.now()
        if state.status == "WAITING" and state.deadline <= now:
            state = scope.session.time_out_token(token.id, state.deadline)
        if state.status == "WAITING":
            raise Suspend(
                state.deadline,
                f"token {token.name!r} ({token.id}) until {iso(state.deadline)}",
                tokens=(token.id,),
                wake_kind="token",
            )
        record = scope.run.record(_token_outcome(state, step_id, seq, scope.run.attempt, now))
    return scope.replay(record, result_type)


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
            why = f"no heartbeat arrived within {format_duration(state.heartbeat_timeout)}"
        else:
            why = f"it was not completed within its timeout of {format_duration(timeout)}"
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


# -- callbacks ---------------------------------------------------------------------


def callback_arguments(
    first: str | Callable[[str], Any] | None,
    second: Callable[[str], Any] | None,
    name: str | None,
    submit: Callable[[str], Any] | None,
) -> tuple[str, Callable[[str], Any]]:
    """``wait_for_callback``'s name and ``submit``, from its call forms: ``(submit)``,
    ``(name, submit)``, and either given by keyword (``name=``, ``submit=``); the name
    defaults to ``"callback"``. Each may be given once."""
    names: list[str] = [first] if isinstance(first, str) else []
    submits: list[Callable[[str], Any]] = []
    if first is not None and not isinstance(first, str):
        submits.append(first)
    if second is not None:
        submits.append(second)
    if first is not None and not isinstance(first, str) and second is not None:
        raise UsageError(
            "ctx.wait_for_callback(submit, ...) takes the name first when both are "
            "positional: wait_for_callback('approval', submit), or name='approval'"
        )
    if name is not None:
        names.append(name)
    if submit is not None:
        submits.append(submit)
    if len(names) > 1:
        raise UsageError(
            f"ctx.wait_for_callback({names[0]!r}, submit, name={names[1]!r}) names the "
            "callback twice: pass the name once"
        )
    if len(submits) > 1:
        raise UsageError(
            "ctx.wait_for_callback got submit twice (positionally and as submit=): pass it once"
        )
    if not submits:
        raise UsageError(
            f"ctx.wait_for_callback({(names or ['callback'])[0]!r}, submit): submit is missing "
            "(it is called with the token id)"
        )
    return (names[0] if names else "callback"), submits[0]


def wait_for_callback(
    scope: Scope,
    name: str,
    submit: Callable[[str], Any],
    timeout: timedelta | float,
    heartbeat_timeout: timedelta | float | None,
    result_type: Any,
) -> Plan[Any]:
    """A plan: in a group ``name``, create a token, run ``submit(token_id)`` as the step
    ``submit``, and wait for the answer (``name/token#1``, ``name/submit#1``,
    ``name/token:wait#1``)."""
    scope.check_caller(f"ctx.wait_for_callback({name!r})")
    if not callable(submit):
        raise UsageError(
            f"ctx.wait_for_callback({name!r}, submit): submit must be callable (it is "
            f"called with the token id), got {submit!r}"
        )
    with named(scope, name):
        token = create_token(scope, "token", timeout, heartbeat_timeout)
        yield StepCall("submit", submit, (token.id,))
        return wait_for_token(scope, token, result_type)


# -- conditions --------------------------------------------------------------------


def wait_for_condition(
    scope: Scope, check: Callable[[S], S], initial_state: S, strategy: Poll[S], name: str
) -> Plan[S]:
    """A plan: in a group ``name``, ``check`` (a step per poll) until ``strategy.until``
    holds, with a durable wait between polls; ``ConditionNotMet`` after ``max_polls``."""
    scope.check_caller(f"ctx.wait_for_condition(name={name!r})")
    if not isinstance(strategy, Poll):
        raise UsageError("ctx.wait_for_condition(strategy=...) must be a rung.Poll")
    state = initial_state
    outer = scope.path
    with named(scope, name):
        for poll in range(1, strategy.max_polls + 1):
            state = yield StepCall("check", check, (state,))
            if strategy.until(state):
                return state
            if poll < strategy.max_polls:
                wait(scope, strategy.delay_after(poll), "wait")
    raise ConditionNotMet(
        f"{outer}/{name}" if outer else f"/{name}",
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
