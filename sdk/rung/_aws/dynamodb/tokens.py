"""DynamoStore's tokens section: tokens a run waits for, and their answers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _NAMES,
    _S,
    TOKEN_OPEN,
    TOKEN_RETENTION,
    TTL_ATTRIBUTE,
    _Base,
    _cancellation_reasons,
    _is_conditional_failure,
    _ms,
    _run_key,
    _token_key,
)
from rung._util.clock import from_ms, iso, parse_iso, to_ms
from rung.errors import (
    Contended,
    ErrorInfo,
    RunNotFound,
    TokenAlreadyResolved,
    TokenNotFound,
)
from rung.models import Run, RunStatus, TokenState


class _Tokens(_Base):
    # -- tokens --------------------------------------------------------------------------

    def create_token(self, state: TokenState) -> None:
        """Store a new token (its id is random: the write cannot collide)."""
        item: dict[str, Any] = {
            **_token_key(state.id),
            "token_id": _S(state.id),
            "run_id": _S(state.run_id),
            "step_id": _S(state.step_id),
            "name": _S(state.name),
            "token_status": _S(TOKEN_OPEN),
            "created_at": _S(iso(state.created_at)),
            "timeout_ms": _N(to_ms(state.timeout_at)),
            "hb_ms": _N(_ms(state.heartbeat_timeout) if state.heartbeat_timeout else 0),
            "deadline_ms": _N(to_ms(state.deadline)),
            TTL_ATTRIBUTE: _N(int((state.timeout_at + TOKEN_RETENTION).timestamp())),
        }
        if state.url_hash:
            item["url_hash"] = _S(state.url_hash)  # of Token.url's secret (never the secret)
        self.client.put_item(
            TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
        )

    def get_token(self, token_id: str, *, values: bool = True) -> TokenState:
        """The token; ``values`` False: a value offloaded to S3 is not read (its
        ``result_json`` is None), for a check of its status."""
        item = self.client.get_item(
            TableName=self.table, Key=_token_key(token_id), ConsistentRead=True
        ).get("Item")
        if item is None:
            raise TokenNotFound(
                f"no token with id {token_id!r} in table {self.table}: check the id (tokens "
                "come from ctx.create_token) and that the client uses the run's table"
            )
        return self._token_from_item(item, values=values)

    def resolve_token(
        self,
        token_id: str,
        *,
        status: str,
        result_json: str | None,
        error: ErrorInfo | None,
        now: datetime,
    ) -> tuple[TokenState, bool]:
        """Complete or fail an open token; returns it and whether its run must be woken.

        One transaction writes the token and, when the run is WAITING, makes it due
        now (the caller then sends its message). When the run is not waiting (it is
        still running towards ``wait_for_token``), the token is written under a check
        that the run is still not waiting. Either way the completion and a racing
        suspension (``suspend_run``, which checks the token) cannot miss each other.

        Raises:
            TokenNotFound: no such token.
            TokenAlreadyResolved: it was completed, failed or timed out already, or its
                run has finished.
        """
        state = self.get_token(token_id, values=False)
        self._check_open(state, now)
        result = (
            None
            if result_json is None
            else self._value(state.run_id, result_json, f"the value completing {token_id}")
        )
        token_update = _answer(self.table, token_id, status, result, error, now)
        for attempt in range(10):
            if attempt:
                state = self.get_token(token_id, values=False)
                self._check_open(state, now)
            for second, woke in (
                (self._wake_waiting(state.run_id, now), True),
                (self._not_waiting_check(state.run_id), False),
            ):
                try:
                    self.client.transact_write_items(
                        TransactItems=[{"Update": token_update}, second]
                    )
                except ClientError as exc:
                    reasons = _cancellation_reasons(exc)
                    if reasons is None:
                        raise
                    if reasons[0] == "ConditionalCheckFailed":
                        self._check_open(self.get_token(token_id, values=False), now)
                        raise  # open and in time, yet refused: not ours to explain
                    continue  # the run's state was not as assumed: try the other form
                return self.get_token(token_id), woke
            run = self.get_run_or_none(state.run_id)
            if run is None or run.status.is_terminal:
                raise TokenAlreadyResolved(
                    f"token {token_id!r} belongs to run {state.run_id}, which "
                    + ("no longer exists" if run is None else f"has finished ({run.status})")
                    + "; nothing waits for it",
                    status=run.status if run is not None else "MISSING",
                )
            # The run moved between the two forms (it suspended, or resumed): again.
        raise Contended(
            f"token {token_id}: its run kept changing state while the answer was written; "
            "nothing was recorded, answering again is safe"
        )

    def _wake_waiting(self, run_id: str, now: datetime) -> dict[str, Any]:
        """A transaction's update making the run due now, if it is WAITING."""
        return {
            "Update": {
                "TableName": self.table,
                "Key": _run_key(run_id),
                "UpdateExpression": "SET available_at = :now_ms, updated_at = :now",
                "ConditionExpression": "#status = :waiting",
                "ExpressionAttributeNames": _NAMES,
                "ExpressionAttributeValues": {
                    ":waiting": _S(RunStatus.WAITING),
                    ":now_ms": _N(to_ms(now)),
                    ":now": _S(iso(now)),
                },
            }
        }

    def _not_waiting_check(self, run_id: str) -> dict[str, Any]:
        """A transaction's check that the run is on its way, not WAITING (nor ended)."""
        return {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": _run_key(run_id),
                "ConditionExpression": "#status IN (:queued, :delayed, :running)",
                "ExpressionAttributeNames": _NAMES,
                "ExpressionAttributeValues": {
                    ":queued": _S(RunStatus.QUEUED),
                    ":delayed": _S(RunStatus.DELAYED),
                    ":running": _S(RunStatus.RUNNING),
                },
            }
        }

    def _check_open(self, state: TokenState, now: datetime) -> None:
        if state.status != TOKEN_OPEN:
            raise TokenAlreadyResolved(
                f"token {state.id!r} ({state.name!r} of run {state.run_id}) was already "
                f"{state.status.lower().replace('_', ' ')}"
                + (f" at {iso(state.resolved_at)}" if state.resolved_at else "")
                + "; a token is answered once",
                status=state.status,
            )
        if state.deadline <= now:
            raise TokenAlreadyResolved(
                f"token {state.id!r} ({state.name!r} of run {state.run_id}) timed out at "
                f"{iso(state.deadline)}"
                + (" (no heartbeat in time)" if state.deadline < state.timeout_at else "")
                + "; it can no longer be completed",
                status="TIMED_OUT",
            )

    def heartbeat_token(self, token_id: str, now: datetime) -> TokenState:
        """Push an open token's heartbeat deadline to ``now + heartbeat_timeout``."""
        state = self.get_token(token_id, values=False)
        self._check_open(state, now)
        if state.heartbeat_timeout is None:
            return state  # nothing to extend; it stays open until its timeout
        deadline = min(now + state.heartbeat_timeout, state.timeout_at)
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_token_key(token_id),
                UpdateExpression="SET deadline_ms = :deadline",
                ConditionExpression="token_status = :open AND deadline_ms > :now_ms",
                ExpressionAttributeValues={
                    ":deadline": _N(to_ms(deadline)),
                    ":open": _S(TOKEN_OPEN),
                    ":now_ms": _N(to_ms(now)),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            self._check_open(self.get_token(token_id, values=False), now)
            raise
        return self._token_from_item(out["Attributes"])

    def time_out_token(self, token_id: str, deadline: datetime, now: datetime) -> TokenState:
        """Mark an open token TIMED_OUT at ``deadline`` (its deadline as last read, now
        past); returns its state either way.

        The token timed out at its deadline, not when its run came to look (a run busy
        in a longer wait looks later): ``resolved_at`` is the deadline, and history
        orders the token's end there. A heartbeat that moved the deadline meanwhile
        makes the write a no-op (the condition names the deadline read)."""
        try:
            out = self.client.update_item(
                TableName=self.table,
                Key=_token_key(token_id),
                UpdateExpression="SET token_status = :timed_out, resolved_at = :deadline",
                ConditionExpression=(
                    "token_status = :open AND deadline_ms = :deadline_ms AND deadline_ms <= :now_ms"
                ),
                ExpressionAttributeValues={
                    ":timed_out": _S("TIMED_OUT"),
                    ":open": _S(TOKEN_OPEN),
                    ":deadline_ms": _N(to_ms(deadline)),
                    ":now_ms": _N(to_ms(now)),
                    ":deadline": _S(iso(deadline)),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return self.get_token(token_id)  # answered meanwhile, or its deadline moved
        return self._token_from_item(out["Attributes"])

    def get_run_or_none(self, run_id: str) -> Run | None:
        try:
            return self.get_run(run_id)
        except RunNotFound:
            return None

    def _token_from_item(self, item: dict[str, Any], *, values: bool = True) -> TokenState:
        hb = int(item["hb_ms"]["N"])
        return TokenState(
            id=item["token_id"]["S"],
            name=item["name"]["S"],
            run_id=item["run_id"]["S"],
            step_id=item["step_id"]["S"],
            status=item["token_status"]["S"],
            created_at=parse_iso(item["created_at"]["S"]),
            timeout_at=from_ms(int(item["timeout_ms"]["N"])),
            heartbeat_timeout=timedelta(milliseconds=hb) if hb else None,
            deadline=from_ms(int(item["deadline_ms"]["N"])),
            result_json=self._result_text(item, values),
            error=ErrorInfo.from_json(json.loads(item["error"]["S"])) if "error" in item else None,
            resolved_at=parse_iso(item["resolved_at"]["S"]) if "resolved_at" in item else None,
            url_hash=item["url_hash"]["S"] if "url_hash" in item else None,
        )


def _answer(
    table: str,
    token_id: str,
    status: str,
    result: dict[str, Any] | None,
    error: ErrorInfo | None,
    now: datetime,
) -> dict[str, Any]:
    """The update that answers an open token in time (its value's attribute, or its
    error)."""
    values: dict[str, Any] = {
        ":status": _S(status),
        ":open": _S(TOKEN_OPEN),
        ":now_ms": _N(to_ms(now)),
        ":now": _S(iso(now)),
    }
    update = "SET token_status = :status, resolved_at = :now"
    names: dict[str, str] = {}
    if result is not None:
        update += ", #result = :result"
        values[":result"] = result
        names["#result"] = "result"
    if error is not None:
        update += ", #error = :error"
        values[":error"] = _S(json.dumps(error.to_json()))
        names["#error"] = "error"
    request = {
        "TableName": table,
        "Key": _token_key(token_id),
        "UpdateExpression": update,
        "ConditionExpression": "token_status = :open AND deadline_ms > :now_ms",
        "ExpressionAttributeValues": values,
    }
    if names:  # (DynamoDB refuses an empty map)
        request["ExpressionAttributeNames"] = names
    return request
