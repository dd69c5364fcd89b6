"""One X-Ray trace per run, read back through the emulator's X-Ray API (BatchGetTraces)."""

from __future__ import annotations

import json
import logging
import re
import socket
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._aws import sessions
from rung._aws.xray import XRay
from rung._engine.worker import Disposition
from rung._util.clock import VirtualClock
from rung.testing import LocalEngine
from tests.functional.telemetry_apps import crash_once_app, retried_and_waiting_app

CALLER_ROOT = "1-6752a1b0-0123456789abcdef01234567"


def _attempts(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in segments if "rung_attempt" in s["annotations"] and "type" not in s]


def _run_segment(segments: list[dict[str, Any]]) -> dict[str, Any]:
    [run] = [s for s in segments if "rung_attempt" not in s["annotations"]]
    return run


def test_a_retried_step_and_a_long_wait_make_one_trace_across_invocations() -> None:
    app = retried_and_waiting_app("traced")

    with LocalEngine(app) as engine:
        handle = engine.trigger("order")
        run = engine.wait(handle.run_id)
        segments = engine.trace(handle.run_id)

    assert run.status == rung.RunStatus.COMPLETED and run.trace_id is not None
    assert {s["trace_id"] for s in segments} == {run.trace_id}  # one trace
    assert all(s["annotations"]["rung_run_id"] == run.run_id for s in segments)
    root = _run_segment(segments)
    assert root["name"] == "order" and root["annotations"]["rung_status"] == "COMPLETED"
    assert "in_progress" not in root and "parent_id" not in root
    attempts = _attempts(segments)
    # attempt 1 (the failure), attempt 2 up to the wait, and attempt 2 resumed after it
    assert [
        (a["annotations"]["rung_attempt"], a["annotations"]["rung_status"]) for a in attempts
    ] == [
        (1, "retrying"),
        (2, "waiting"),
        (2, "completed"),
    ]
    assert all(a["parent_id"] == root["id"] for a in attempts)
    steps = [[s["name"] for s in a["subsegments"]] for a in attempts]
    assert steps == [["step /reserve#1", "step /charge#1"], ["step /charge#1"], ["step /ship#1"]]
    failed = attempts[0]["subsegments"][1]
    assert failed["annotations"]["rung_step_id"] == "/charge#1"
    assert failed["fault"] is True
    assert failed["cause"]["exceptions"][0]["type"] == "ValueError"
    assert failed["cause"]["exceptions"][0]["message"] == "the API said 503"
    assert attempts[0]["cause"]["exceptions"][0]["type"] == "ValueError"  # why it retried
    assert "fault" not in attempts[1]["subsegments"][0]  # the retry succeeded
    [wait] = [s for s in segments if s.get("type") == "subsegment"]
    assert wait["name"] == "wait /wait#1" and wait["parent_id"] == root["id"]
    assert wait["annotations"]["rung_wait_kind"] == "timer"
    assert wait["end_time"] - wait["start_time"] == pytest.approx(7200, abs=1)
    assert attempts[2]["metadata"]["rung"]["checkpoints_loaded"] == 3  # replayed, not spans
    assert root["start_time"] <= attempts[0]["start_time"]
    assert root["end_time"] >= attempts[-1]["end_time"]


def test_a_parent_and_its_child_name_each_other_in_their_traces() -> None:
    app = rung.App("family")

    @app.task(id="child")
    def child(ctx: rung.Context, n: int) -> int:
        return ctx.step("double", lambda: n * 2)

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> int:
        return int(ctx.trigger_and_wait(child, 21))

    with LocalEngine(app) as engine:
        handle = engine.trigger("parent")
        run = engine.wait(handle.run_id)
        [kid] = engine.client.list_children(handle.run_id)
        parent_segments = engine.trace(handle.run_id)
        child_segments = engine.trace(kid.run_id)

    assert run.output == 42 and kid.trace_id not in (None, run.trace_id)
    assert kid.parent_trace_id == run.trace_id
    [started] = [
        s
        for a in _attempts(parent_segments)
        for s in a["subsegments"]
        if s["name"].startswith("child")
    ]
    assert started["annotations"]["rung_child_run_id"] == kid.run_id
    assert started["metadata"]["rung"]["child_trace_id"] == kid.trace_id
    [waited] = [s for s in parent_segments if s.get("type") == "subsegment"]
    assert waited["annotations"]["rung_wait_kind"] == "children"
    back = _run_segment(child_segments)["metadata"]["rung"]
    assert back == {"parent_run_id": run.run_id, "parent_trace_id": run.trace_id}


def test_every_message_of_a_run_carries_its_trace_header() -> None:
    app = rung.App("headers")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None:
        ctx.wait(timedelta(hours=13))  # past SQS's delays: a timer, then the sweep's message

    with LocalEngine(app, workers=0) as engine:
        clock = engine.clock
        assert isinstance(clock, VirtualClock)
        handle = engine.trigger("t")
        [first] = engine.queue.receive()
        run = engine.get_run(handle.run_id)
        assert run.trace_id is not None
        expected = f"Root={run.trace_id};Parent="
        assert first.trace_header is not None and first.trace_header.startswith(expected)
        # Suspended: a timer on the run item; its message is done with.
        assert engine.worker.handle(first) == Disposition.ACK
        engine.queue.delete(first)
        clock.advance(timedelta(hours=12, minutes=50))
        assert engine.reconcile().timers_sent == (handle.run_id,)  # the sweep sends it
        clock.advance(timedelta(minutes=11))
        [again] = engine.queue.receive()
    assert again.message_id != first.message_id  # the sweep's message
    assert again.trace_header == first.trace_header


def test_a_run_triggered_from_a_traced_lambda_continues_its_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = rung.App("caller")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        return 1

    with LocalEngine(app) as engine:
        monkeypatch.setenv(
            "_X_AMZN_TRACE_ID", f"Root={CALLER_ROOT};Parent=53995c3f42cd8ad8;Sampled=0"
        )
        handle = engine.trigger("t")
        monkeypatch.delenv("_X_AMZN_TRACE_ID")
        run = engine.wait(handle.run_id)
        segments = engine.trace(handle.run_id)
    assert run.trace_id == CALLER_ROOT
    root = _run_segment(segments)
    assert root["parent_id"] == "53995c3f42cd8ad8"  # the caller's segment
    assert [a["annotations"]["rung_status"] for a in _attempts(segments)] == ["completed"]


def test_sampling_is_set_by_the_environment_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    app = rung.App("sampled")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        return ctx.step("s", lambda: 1)

    with LocalEngine(app) as engine:
        monkeypatch.setenv("RUNG_TRACE_SAMPLE_RATE", "0")
        unsampled = engine.trigger("t")
        monkeypatch.setenv("RUNG_TRACE_SAMPLE_RATE", "lots")
        with pytest.raises(rung.InvalidConfig, match="RUNG_TRACE_SAMPLE_RATE must be a number"):
            engine.trigger("t")
        monkeypatch.delenv("RUNG_TRACE_SAMPLE_RATE")
        run = engine.wait(unsampled.run_id)
        assert engine.trace(unsampled.run_id) == []
        assert len(engine.list_runs(task="t")) == 1  # the refused trigger stored nothing
    assert run.status == rung.RunStatus.COMPLETED and run.trace_id is not None


def test_an_attempt_lost_to_a_crash_shows_as_worker_lost() -> None:
    app = crash_once_app("lost")

    with LocalEngine(app) as engine:
        handle = engine.trigger("t")
        run = engine.wait(handle.run_id)
        segments = engine.trace(handle.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    attempts = _attempts(segments)
    assert [a["annotations"]["rung_status"] for a in attempts] == ["worker lost", "completed"]
    assert attempts[0]["fault"] is True
    assert attempts[0]["cause"]["exceptions"][0]["type"] == "WorkerLost"


def test_tracing_that_cannot_send_never_fails_a_run(caplog: pytest.LogCaptureFixture) -> None:
    app = rung.App("unreachable")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        return ctx.step("s", lambda: 7)

    with LocalEngine(app) as engine:
        # Nothing listens on port 9 (discard): every PutTraceSegments fails to connect.
        engine.worker.sinks.xray = XRay(sessions.client("xray", "http://127.0.0.1:9"))
        with caplog.at_level(logging.WARNING, logger="rung.tracing"):
            run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output == 7
    assert any("could not send" in r.getMessage() for r in caplog.records)


def test_segments_go_to_the_daemon_over_udp_when_lambda_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(10)
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", f"127.0.0.1:{daemon.getsockname()[1]}")
    built: list[str] = []
    xray = XRay.from_environment(lambda: built.append("client"))
    assert xray is not None
    assert built == []  # with a daemon, no X-Ray client is made (a cold start's cost)
    document = {"name": "t", "id": "53995c3f42cd8ad8", "trace_id": CALLER_ROOT, "start_time": 1}
    xray.put([document])
    datagram, _ = daemon.recvfrom(65536)
    daemon.close()
    header, _, body = datagram.partition(b"\n")
    assert json.loads(header) == {"format": "json", "version": 1}
    assert json.loads(body) == document
    monkeypatch.setenv("RUNG_TRACING", "off")
    assert XRay.from_environment(lambda: None) is None


def test_an_attempt_with_many_steps_is_split_within_x_rays_document_limit() -> None:
    app = rung.App("wide")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        return sum(ctx.step(f"s{n}", lambda n: n, n) for n in range(400))

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        segments = engine.trace(run.run_id)
    [attempt] = _attempts(segments)
    steps = [s for s in segments if s.get("parent_id") == attempt["id"]]
    assert len(steps) + len(attempt["subsegments"]) == 400
    assert all(len(json.dumps(s)) < 64_000 for s in segments)


def test_span_names_keep_to_the_characters_x_ray_takes() -> None:
    app = rung.App("names")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> list[int]:
        ctx.step("charge (card)!", lambda: 1)
        return ctx.map([1, 2], lambda c, n: c.step("pack?", lambda: n)).results()

    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("t").run_id)
        segments = engine.trace(run.run_id)
    names = [s["name"] for a in _attempts(segments) for s in a["subsegments"]]
    assert "step /charge _card__#1" in names
    assert {"step /map#1.0/pack_#1", "step /map#1.1/pack_#1"} <= set(names)
    allowed = re.compile(r"^[\w\s.:/%&#=+\\@-]{1,200}$")
    assert all(allowed.match(s["name"]) for s in segments)
    # The exact step id stays searchable.
    ids = {
        s["annotations"].get("rung_step_id") for a in _attempts(segments) for s in a["subsegments"]
    }
    assert "/charge (card)!#1" in ids


def test_a_child_is_recorded_when_its_parent_is_whatever_the_sample_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = rung.App("child-sampling")

    @app.task(id="child")
    def child(ctx: rung.Context, n: int) -> int:
        return n

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: None) -> int:
        return int(ctx.trigger_and_wait(child, 1))

    with LocalEngine(app) as engine:
        handle = engine.trigger("parent")  # sampled: the default rate is 1
        monkeypatch.setenv("RUNG_TRACE_SAMPLE_RATE", "0")  # later draws would say no
        run = engine.wait(handle.run_id)
        [kid] = engine.client.list_children(handle.run_id)
        child_segments = engine.trace(kid.run_id)
    assert run.status == rung.RunStatus.COMPLETED
    assert child_segments, "the child's trace, which the parent's span links, was not recorded"
