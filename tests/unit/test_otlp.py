"""X-Ray segment documents as OpenTelemetry spans, and when OTLP export is on
(``rung._engine.otlp``; end to end in tests/functional/test_otlp.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import StatusCode

from rung._engine.otlp import OtlpExporter, otel_trace_id, otlp_requested, to_spans

TRACE = "1-5f84c7a1-0123456789abcdef01234567"
RUN = "53995c3f42cd8ad8"
ATTEMPT = "70de5b6f19ff9a0a"


def _document(name: str, id: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "id": id,
        "start_time": 1_700_000_000.25,
        "end_time": 1_700_000_001.5,
        "annotations": {"rung_run_id": "run_1", "rung_task": "t"},
        "metadata": {"rung": {}},
        **fields,
    }


def test_the_trace_id_is_the_x_ray_ids_32_hex_digits() -> None:
    assert f"{otel_trace_id(TRACE):032x}" == "5f84c7a10123456789abcdef01234567"
    with pytest.raises(ValueError, match="not an X-Ray trace id"):
        otel_trace_id("5f84c7a10123456789abcdef01234567")


def test_a_split_attempt_keeps_its_steps_under_it_and_the_run_in_progress_is_not_sent() -> None:
    step = _document("step /a#1", "00000000000000a1", annotations={"rung_step_id": "/a#1"})
    nested = _document("step /b#1", "00000000000000b1")
    attempt = _document(
        "t", ATTEMPT, trace_id=TRACE, parent_id=RUN, subsegments=[nested], metadata={}
    )
    # what X-Ray's size limit makes of a wide attempt: its steps as independent subsegments
    independent = {**step, "type": "subsegment", "trace_id": TRACE, "parent_id": ATTEMPT}
    in_progress = {"name": "t", "id": RUN, "trace_id": TRACE, "start_time": 1, "in_progress": True}
    spans = to_spans([attempt, independent, in_progress], Resource.create({}))

    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"t", "step /a#1", "step /b#1"}  # no in-progress run span
    assert all(span.context.trace_id == otel_trace_id(TRACE) for span in spans)
    assert by_name["t"].context.span_id == int(ATTEMPT, 16)
    assert by_name["t"].parent is not None and by_name["t"].parent.span_id == int(RUN, 16)
    for name in ("step /a#1", "step /b#1"):
        parent = by_name[name].parent
        assert parent is not None and parent.span_id == int(ATTEMPT, 16)
    assert by_name["step /a#1"].attributes == {"rung.step_id": "/a#1"}
    assert by_name["step /b#1"].start_time == 1_700_000_000_250_000_000
    assert by_name["step /b#1"].end_time == 1_700_000_001_500_000_000


def test_a_fault_is_an_error_and_a_retried_attempt_is_ok_with_its_error() -> None:
    cause = {"exceptions": [{"id": "x", "type": "ValueError", "message": "503"}]}
    failed = _document("step /a#1", "00000000000000a1", fault=True, cause=cause)
    retried = _document(
        "t", ATTEMPT, trace_id=TRACE, parent_id=RUN, error=True, cause=cause, subsegments=[failed]
    )
    spans = {span.name: span for span in to_spans([retried], Resource.create({}))}

    step = spans["step /a#1"]
    assert step.status.status_code == StatusCode.ERROR
    assert step.status.description == "ValueError: 503"
    assert step.attributes is not None and step.attributes["error.type"] == "ValueError"
    attempt = spans["t"]
    assert attempt.status.status_code == StatusCode.OK
    assert attempt.attributes is not None
    assert attempt.attributes["rung.error.type"] == "ValueError"
    assert attempt.attributes["rung.error.message"] == "503"
    assert [event.name for event in attempt.events] == ["exception"]


def test_metadata_is_flattened_and_trace_ids_in_it_take_the_otel_form() -> None:
    run = _document(
        "t",
        RUN,
        trace_id=TRACE,
        metadata={"rung": {"parent_trace_id": TRACE, "replay_of": None, "token": {"a": 1}}},
    )
    [span] = to_spans([run], Resource.create({}))
    assert span.parent is None
    assert span.attributes == {
        "rung.run_id": "run_1",
        "rung.task": "t",
        "rung.parent_trace_id": "5f84c7a10123456789abcdef01234567",
        "rung.token": '{"a": 1}',
    }


@pytest.mark.parametrize(
    ("exporters", "disabled", "on"),
    [
        (None, None, False),
        ("none", None, False),
        ("otlp", None, True),
        ("console, OTLP", None, True),
        ("otlp", "true", False),
    ],
)
def test_export_is_on_only_when_otel_traces_exporter_names_otlp(
    monkeypatch: pytest.MonkeyPatch, exporters: str | None, disabled: str | None, on: bool
) -> None:
    for name, value in (("OTEL_TRACES_EXPORTER", exporters), ("OTEL_SDK_DISABLED", disabled)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert otlp_requested() is on
    assert (OtlpExporter.from_environment("app") is not None) is on


def test_otlp_asked_for_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    # The dev install has the extra and it cannot be uninstalled for one test: a None
    # in sys.modules makes its import fail as it does where it is not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with caplog.at_level(logging.ERROR, logger="rung.tracing"):
        assert OtlpExporter.from_environment("app") is None
    [line] = [r.getMessage() for r in caplog.records if r.name == "rung.tracing"]
    assert "OTEL_TRACES_EXPORTER=otlp" in line
    assert "pip install 'rung[otel]'" in line


def test_a_protocol_other_than_http_protobuf_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with caplog.at_level(logging.WARNING, logger="rung.tracing"):
        assert OtlpExporter.from_environment("app") is not None
    assert any("OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in r.getMessage() for r in caplog.records)


def test_rung_imports_without_opentelemetry() -> None:
    # A fresh interpreter where every opentelemetry import fails, as without the extra.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import rung, rung.testing, rung._lambda.worker, rung._engine.otlp\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
