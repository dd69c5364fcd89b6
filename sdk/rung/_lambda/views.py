"""Runs and tokens as JSON: what the HTTP API returns (docs/http.md) and the CLI's
``--json`` prints, one shape for both."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rung._aws.dynamodb import waits_without_timer
from rung.models import Offloaded, Run, TokenState


def run_json(run: Run) -> dict[str, Any]:
    """A run for ``--json``: plain values, ISO-8601 timestamps.

    ``available_at`` is when it is due (to start, to retry, to wake from a wait), null
    while it waits with no timer (for children, say) and once it has finished;
    ``expires_at``, when a finished run's retention ends (docs/retention.md);
    ``waiting_for`` says what a WAITING run waits for, a token's id included."""
    return {
        "run_id": run.run_id,
        "task_id": run.task_id,
        "status": run.status.value,
        "attempt": run.attempt,
        "payload": _value_json(run.payload),
        "output": _value_json(run.output),
        "error": run.error.to_json() if run.error else None,
        "created_at": _iso(run.created_at),
        "updated_at": _iso(run.updated_at),
        "available_at": _iso(_due(run)),
        "started_at": _iso(run.started_at),
        "attempt_started_at": _iso(run.attempt_started_at),
        "finished_at": _iso(run.finished_at),
        "expires_at": _iso(run.expires_at),
        "start_by": _iso(run.start_by),
        "began_at": _iso(run.began_at),
        "idempotency_key": run.idempotency_key,
        "tags": list(run.tags),
        "metadata": run.metadata,
        "triggers": run.triggers,
        "waiting_for": run.waiting_for,
        "parent_run_id": run.parent_run_id,
        "replay_of": run.replay_of,
        "trace_id": run.trace_id,
        "version": run.version,
        "redrives": [
            {
                "attempt": r.attempt,
                "failed_at": r.failed_at.isoformat(),
                "error": r.error.to_json(),
                "redriven_at": r.at.isoformat(),
                "step": r.step_id,
                "from_version": r.from_version,
            }
            for r in run.redrives
        ],
    }


def token_json(state: TokenState) -> dict[str, Any]:
    """A token for ``--json``."""
    return {
        "token_id": state.id,
        "name": state.name,
        "run_id": state.run_id,
        "step_id": state.step_id,
        "status": state.status,
        "created_at": state.created_at.isoformat(),
        "timeout_at": state.timeout_at.isoformat(),
        "heartbeat_timeout_seconds": state.heartbeat_timeout.total_seconds()
        if state.heartbeat_timeout is not None
        else None,
        "deadline": state.deadline.isoformat(),
        "value": json.loads(state.result_json) if state.result_json is not None else None,
        "error": state.error.to_json() if state.error else None,
        "resolved_at": _iso(state.resolved_at),
    }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _due(run: Run) -> datetime | None:
    """When the run is due, or None: a wait with no timer is stored as due in 9999, and
    a finished run's ``available_at`` is its expiry (``expires_at``), not a due time."""
    if run.available_at is None or waits_without_timer(run.available_at) or run.status.is_terminal:
        return None
    return run.available_at


def _value_json(value: Any) -> Any:
    """A payload or output as JSON: the value, or (a listing's run) where it was left:
    ``{"offloaded_bytes": n}`` for one over 128 KiB (docs/payloads.md)."""
    if isinstance(value, Offloaded):
        return {"offloaded_bytes": value.size}
    return value
