"""OTLP export of a run's trace (OTEL_TRACES_EXPORTER=otlp) from LocalEngine, read back by
a real OTLP/HTTP receiver (tests/functional/otlp_receiver.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

import rung
from rung._engine.otlp import OtlpExporter
from rung.testing import LocalEngine
from tests.functional.otlp_receiver import Receiver
from tests.functional.otlp_receiver import attributes as _attributes
from tests.functional.telemetry_apps import retried_and_waiting_app


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def otlp_on(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> Receiver:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    # rung's default of 2 s is for a collector across a network; the receiver here is a
    # thread of a loaded test process, and a timed-out export would drop spans.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "30")
    return receiver


def _otel_trace_id(xray_trace_id: str) -> bytes:
    _, epoch, unique = xray_trace_id.split("-")
    return bytes.fromhex(epoch + unique)


def test_a_runs_trace_arrives_at_an_otlp_collector_as_one_trace(otlp_on: Receiver) -> None:
    app = retried_and_waiting_app("exported")
    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("order").run_id)
        xray_segments = engine.trace(run.run_id)
    # The engine has stopped: every invocation's export (sent as it ended) is done.

    assert run.status == rung.RunStatus.COMPLETED and run.trace_id is not None
    assert otlp_on.paths and set(otlp_on.paths) == {"/v1/traces"}
    spans = otlp_on.spans()
    assert {span.trace_id for span in spans} == {_otel_trace_id(run.trace_id)}
    attributes = {span.span_id: _attributes(span.attributes) for span in spans}
    assert all(a["rung.run_id"] == run.run_id for a in attributes.values())
    assert all(a["service.name"] == "exported" for a in otlp_on.resources())
    # Each span once, complete: the run's in-progress segment is not sent.
    assert len({span.span_id for span in spans}) == len(spans)
    assert all(span.end_time_unix_nano >= span.start_time_unix_nano > 0 for span in spans)

    [root] = [s for s in spans if "rung.attempt" not in attributes[s.span_id]]
    assert root.name == "order" and root.parent_span_id == b""
    assert attributes[root.span_id]["rung.status"] == "COMPLETED"
    attempts = sorted(
        (s for s in spans if s.parent_span_id == root.span_id and s.name == "order"),
        key=lambda s: s.start_time_unix_nano,
    )
    assert [
        (attributes[a.span_id]["rung.attempt"], attributes[a.span_id]["rung.status"])
        for a in attempts
    ] == [(1, "retrying"), (2, "waiting"), (2, "completed")]
    steps = [
        sorted(
            (s for s in spans if s.parent_span_id == a.span_id),
            key=lambda s: s.start_time_unix_nano,
        )
        for a in attempts
    ]
    assert [[s.name for s in under] for under in steps] == [
        ["step /reserve#1", "step /charge#1"],
        ["step /charge#1"],
        ["step /ship#1"],
    ]
    failed = steps[0][1]
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert failed.status.message == "ValueError: the API said 503"
    assert attributes[failed.span_id]["error.type"] == "ValueError"
    assert attributes[failed.span_id]["rung.step_id"] == "/charge#1"
    [event] = failed.events
    assert event.name == "exception"
    assert _attributes(event.attributes)["exception.type"] == "ValueError"
    # The attempt that ended in a retry is the run's plan, not a fault.
    assert attempts[0].status.code == Status.STATUS_CODE_OK
    assert attributes[attempts[0].span_id]["rung.error.type"] == "ValueError"
    assert steps[1][0].status.code != Status.STATUS_CODE_ERROR  # the retry succeeded
    [wait] = [s for s in spans if s.name == "wait /wait#1"]
    assert wait.parent_span_id == root.span_id
    assert attributes[wait.span_id]["rung.wait_kind"] == "timer"
    assert attributes[wait.span_id]["rung.ended"] == "elapsed"
    assert wait.end_time_unix_nano - wait.start_time_unix_nano == pytest.approx(7200e9, abs=1e9)
    assert attributes[attempts[2].span_id]["rung.checkpoints_loaded"] == 3

    # X-Ray is still on, with the same spans under the same ids.
    xray_ids = {s["id"] for s in xray_segments} | {
        sub["id"] for s in xray_segments for sub in s.get("subsegments", [])
    }
    assert xray_ids == {span.span_id.hex() for span in spans}


def test_otel_service_name_names_the_service(
    otlp_on: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    app = rung.App("shop")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        return ctx.step("s", lambda: 7)

    with LocalEngine(app) as engine:
        engine.wait(engine.trigger("t").run_id)
    assert otlp_on.resources() and all(r["service.name"] == "checkout" for r in otlp_on.resources())


def test_otlp_export_is_off_by_default(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # An endpoint alone does not turn export on: OTEL_TRACES_EXPORTER must name otlp.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    app = retried_and_waiting_app("exported")
    with LocalEngine(app) as engine:
        run = engine.wait(engine.trigger("order").run_id)
        assert engine.trace(run.run_id)  # X-Ray is on
    assert run.status == rung.RunStatus.COMPLETED
    assert receiver.requests == []


def test_an_unreachable_collector_never_fails_a_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    # Nothing listens on port 9 (discard): every export fails to connect.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    app = rung.App("unreachable")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> int:
        return ctx.step("s", lambda: 7)

    with (
        caplog.at_level(logging.WARNING, logger="rung.tracing"),
        LocalEngine(app) as engine,
    ):
        run = engine.wait(engine.trigger("t").run_id)
    assert run.status == rung.RunStatus.COMPLETED and run.output == 7
    warnings = [r.getMessage() for r in caplog.records if r.name == "rung.tracing"]
    assert any("could not send" in m and "127.0.0.1:9" in m for m in warnings), warnings


def test_otel_resource_attributes_add_to_the_resource_and_may_name_the_service(
    otlp_on: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing,team=payments")
    exporter = OtlpExporter.from_environment("shop")
    assert exporter is not None
    exporter.export(
        [
            {
                "name": "t",
                "id": "53995c3f42cd8ad8",
                "trace_id": "1-5f84c7a1-0123456789abcdef01234567",
                "start_time": 1_700_000_000.0,
                "end_time": 1_700_000_001.0,
                "annotations": {"rung_run_id": "run_1"},
            }
        ]
    )
    [resource] = otlp_on.resources()
    assert resource["service.name"] == "billing" and resource["team"] == "payments"
    [span] = otlp_on.spans()
    assert span.trace_id.hex() == "5f84c7a10123456789abcdef01234567"
