"""DynamoStore's steps section: reading and writing step checkpoints."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from rung._aws.dynamodb._common import (
    _N,
    _RUN_SK,
    _S,
    _STEP_PREFIX,
    _Base,
    _is_conditional_failure,
)
from rung.errors import (
    RunNotFound,
)
from rung.models import Run, StepRecord


class _Steps(_Base):
    # -- steps -----------------------------------------------------------------------

    def load_steps(self, run_id: str, *, values: bool = True) -> dict[str, StepRecord]:
        """A run's checkpoints by step id; ``values`` False: results offloaded to S3 are
        not read (``result_json`` None), for readers of kinds, ids and outcomes."""
        items = self._paginate(
            "query",
            {
                "TableName": self.table,
                "ConsistentRead": True,
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
                "ExpressionAttributeValues": {
                    ":pk": _S(f"RUN#{run_id}"),
                    ":prefix": _S(_STEP_PREFIX),
                },
            },
        )
        records = (self._step_from_item(i, values=values) for i in items)
        return {r.step_id: r for r in records}

    def load_run_and_steps(self, run_id: str) -> tuple[Run, list[StepRecord]]:
        """The run and its checkpoints in one consistent query (for history: results
        offloaded to S3 are not read, and the run's values are ``rung.Offloaded``)."""
        run: Run | None = None
        steps: list[StepRecord] = []
        for item in self._paginate(
            "query",
            {
                "TableName": self.table,
                "ConsistentRead": True,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": _S(f"RUN#{run_id}")},
            },
        ):
            if item["sk"]["S"] == _RUN_SK:
                run = self._run_from_item(item)
            else:
                steps.append(self._step_from_item(item, values=False))
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r} in table {self.table}")
        steps.sort(key=lambda s: (s.started_at, s.seq))
        return run, steps

    def record_step(self, run_id: str, record: StepRecord) -> StepRecord:
        """Write a checkpoint once. A loser of a race gets the winner's record.

        An at-most-once start marker ("started") may be replaced by the outcome.
        """
        item = self._step_item(run_id, record)
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR outcome IN (:started, :waiting)",
                ExpressionAttributeValues={":started": _S("started"), ":waiting": _S("waiting")},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc) or "Item" not in exc.response:
                raise
            return self._step_from_item(exc.response["Item"])  # type: ignore[typeddict-item]
        return record

    def mark_step_started(
        self, run_id: str, record: StepRecord, replace_attempt: int | None
    ) -> StepRecord:
        """Write an at-most-once marker; replace only the marker of ``replace_attempt``."""
        item = self._step_item(run_id, record)
        if replace_attempt is None:
            condition, values = "attribute_not_exists(pk)", None
        else:
            condition = "outcome = :started AND attempt = :previous"
            values = {":started": _S("started"), ":previous": _N(replace_attempt)}
        try:
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "Item": item,
                "ConditionExpression": condition,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            if values:
                kwargs["ExpressionAttributeValues"] = values
            self.client.put_item(**kwargs)
        except ClientError as exc:
            if not _is_conditional_failure(exc) or "Item" not in exc.response:
                raise
            return self._step_from_item(exc.response["Item"])  # type: ignore[typeddict-item]
        return record
