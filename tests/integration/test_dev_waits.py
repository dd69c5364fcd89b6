"""Waits and tokens on the embedded stack, with real worker processes.

Long waits are shortened by configuration, not by special code paths: with
``RUNG_SQS_LIMITS_SCALE=3600`` SQS's caps shrink by 3600x (a 12-hour visibility hop
takes 12 s, a 15-minute delay 0.25 s), so a 30-second wait takes the same chained
path (visibility hops, fresh messages near the DLQ's receive count) as a 30-hour
wait does on AWS.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import rung
from rung._aws import sessions
from rung._dev import DevStack
from tests.integration.test_dev_processes import dev_options, effects, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def effects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.log"
    monkeypatch.setenv("RUNG_TEST_EFFECTS", str(path))
    return path


@pytest.mark.timeout(300)
def test_a_wait_past_sqs_caps_frees_workers_and_resumes_once(
    tmp_path: Path, effects_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_SQS_LIMITS_SCALE", "3600")  # "30 hours" = 30 s
    with DevStack(dev_options(tmp_path, workers=1)) as dev:
        started = time.monotonic()
        sleepers = [dev.client.trigger("sleeper", {"seconds": 30}) for _ in range(3)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(dev.client.get_run(h.run_id).status == "WAITING" for h in sleepers):
                break
            time.sleep(0.2)
        waiting = [dev.client.get_run(h.run_id) for h in sleepers]
        # One worker process, three waiting runs: none of them holds it.
        quick = dev.client.trigger("pipeline", {"gate": str(tmp_path / "open")})
        (tmp_path / "open").touch()
        quick_run = dev.wait(quick.run_id, timeout=60)
        still_waiting = [dev.client.get_run(h.run_id).status for h in sleepers]
        runs = [dev.wait(h.run_id, timeout=120) for h in sleepers]
        elapsed = time.monotonic() - started
        histories = [dev.client.history(h.run_id) for h in sleepers]
    assert all(r.status == "WAITING" for r in waiting)
    assert quick_run.status == "COMPLETED"
    assert still_waiting == ["WAITING"] * 3
    assert [r.status for r in runs] == ["COMPLETED"] * 3
    assert all(r.output == "rested" and r.attempt == 1 for r in runs)
    assert elapsed >= 30
    counts = effects(effects_file)
    for handle in sleepers:  # each side of the wait ran exactly once
        assert counts[(handle.run_id, "/before#1")] == 1
        assert counts[(handle.run_id, "/after#1")] == 1
    for history in histories:
        types = [str(e.type) for e in history]
        assert types.count("WaitStarted") == 1 and types.count("WaitEnded") == 1


@pytest.mark.timeout(300)
def test_a_token_completed_while_its_worker_is_killed_resumes_the_run(
    tmp_path: Path, effects_file: Path
) -> None:
    gate = tmp_path / "gate"
    token_file = tmp_path / "token"
    with DevStack(dev_options(tmp_path)) as dev:
        handle = dev.client.trigger("approval", {"gate": str(gate), "token_file": str(token_file)})
        token_id = wait_for(token_file)
        pid = int(wait_for(Path(str(gate) + ".pid")))
        # The answer arrives while the worker that created the token is still running
        # (blocked in a step) ... and that worker is killed right after.
        answer = dev.client.complete_token(token_id, {"approved": True, "by": "ops"})
        os.kill(pid, signal.SIGKILL)
        gate.touch()
        run = dev.wait(handle.run_id, timeout=90)
        tokens = dev.client.list_tokens(handle.run_id)
        history = [str(e.type) for e in dev.client.history(handle.run_id)]
        with pytest.raises(rung.TokenAlreadyResolved, match="already completed"):
            dev.client.complete_token(token_id, {"approved": False})
    assert answer.status == "COMPLETED"
    assert run.status == "COMPLETED" and run.output == {"approved": True, "by": "ops"}
    assert run.attempt == 2 and history.count("WorkerLost") == 1
    assert [t.id for t in tokens] == [token_id]  # the replay did not create a second token
    counts = effects(effects_file)
    assert counts[(handle.run_id, "/announce#1")] == 1  # checkpointed before the kill
    assert counts[(handle.run_id, "/slow#1")] == 1  # killed before its effect; ran once after


@pytest.mark.timeout(120)
def test_rung_dev_deploys_the_apps_declared_schedules_into_the_emulator(tmp_path: Path) -> None:
    with DevStack(dev_options(tmp_path, workers=1)) as dev:
        declared = dev.client.list_schedules()
        created = dev.client.create_schedule("new-year", "0 12 * * *", dedup_key="noon")
        listed = {s.id: s for s in dev.client.list_schedules()}
        dev.client.delete_schedule(created.id)
    assert [(s.id, s.declared, s.cron.expression) for s in declared] == [
        ("new-year", True, "0 0 1 1 *")
    ]
    assert set(listed) == {"new-year", created.id} and not listed[created.id].declared


@pytest.mark.timeout(300)
def test_big_values_go_through_the_stacks_bucket_on_rung_dev(tmp_path: Path) -> None:
    """A worker process reads a 3 MB payload and replays a 3 MB step result from the
    emulator's S3 (the template's PayloadBucket, named to it by RUNG_PAYLOAD_BUCKET)."""
    size = 3_000_000
    with DevStack(dev_options(tmp_path, workers=1)) as dev:
        handle = dev.client.trigger("bulky", {"blob": "p" * size, "size": size})
        run = dev.wait(handle.run_id, timeout=120)
        bucket = dev.stack.outputs["PayloadBucketName"]
        s3: Any = sessions.client("s3", dev.endpoint_url, "us-east-1")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert run.status == "COMPLETED", run.error
    assert run.output == {
        "payload": size,
        "step": size,
        "digest": hashlib.sha256(b"b" * size).hexdigest(),
    }
    assert len([k for k in keys if k.startswith(f"runs/{handle.run_id}/")]) == 2
