"""The public surface is pinned: nothing leaks or disappears by accident."""

from __future__ import annotations

import subprocess
import sys

import rung
import rung.testing

PINNED = {
    "App",
    "AsyncClient",
    "AsyncContext",
    "BatchFailed",
    "BatchItem",
    "BatchResult",
    "ChildResult",
    "ChildRunFailed",
    "Client",
    "Completion",
    "ConditionNotMet",
    "Context",
    "Cron",
    "Debounce",
    "ErrorInfo",
    "EventType",
    "HistoryEvent",
    "InvalidConfig",
    "InvalidMetadata",
    "InvalidPayload",
    "LeaseLost",
    "Metadata",
    "NonDeterminismError",
    "NonRetryable",
    "Offloaded",
    "PayloadTooLarge",
    "Poll",
    "Queue",
    "QueueInfo",
    "Rate",
    "RetryAfter",
    "RetryPolicy",
    "Run",
    "RunAlreadyFinished",
    "RunHandle",
    "RunNotFailed",
    "RunPage",
    "RunExpired",
    "RunNotFound",
    "RunStatus",
    "RungError",
    "ScheduleEvent",
    "ScheduleInfo",
    "ScheduleNotFound",
    "StepFailed",
    "StepInfo",
    "Task",
    "Token",
    "TokenAlreadyResolved",
    "TokenFailed",
    "TokenNotFound",
    "TokenState",
    "TokenTimedOut",
    "TriggerItem",
    "TriggerResult",
    "UnknownQueue",
    "Contended",
    "UnknownTask",
    "UsageError",
    "VersionInfo",
    "current_step",
    "step",
}


def test_all_is_exactly_the_pinned_api() -> None:
    assert set(rung.__all__) == PINNED
    for name in rung.__all__:
        assert hasattr(rung, name), name


def test_testing_is_reachable_from_the_top_level_package() -> None:
    # In a fresh interpreter: this module's own `import rung.testing` must not help.
    probe = "import rung; print(rung.testing.LocalEngine.__name__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "LocalEngine", out.stderr
    assert rung.testing.LocalEngine is rung.testing.__dict__["LocalEngine"]
    assert set(rung.testing.__all__) == {"LocalEngine", "SimulatedCrash"}


def test_statuses_are_the_pinned_set() -> None:
    assert {s.value for s in rung.RunStatus} == {
        "QUEUED",
        "DELAYED",
        "RUNNING",
        "WAITING",
        "COMPLETED",
        "FAILED",
        "CANCELED",
        "EXPIRED",
        "TIMED_OUT",
    }


def test_errors_form_one_tree() -> None:
    for name in (
        "InvalidConfig",
        "InvalidPayload",
        "PayloadTooLarge",
        "UnknownTask",
        "UnknownQueue",
        "Contended",
        "RunNotFound",
        "RunExpired",
        "RunAlreadyFinished",
        "RunNotFailed",
        "TokenNotFound",
        "TokenAlreadyResolved",
        "LeaseLost",
        "NonDeterminismError",
        "StepFailed",
        "NonRetryable",
        "RetryAfter",
        "UsageError",
    ):
        assert issubclass(getattr(rung, name), rung.RungError), name
    for name in ("UnknownTask", "UnknownQueue", "RunNotFound", "RunExpired", "TokenNotFound"):
        assert issubclass(getattr(rung, name), LookupError), name
    # What a wait raises in the task body is a StepFailed: one except clause catches all.
    for name in (
        "TokenFailed",
        "TokenTimedOut",
        "ConditionNotMet",
        "BatchFailed",
        "ChildRunFailed",
    ):
        assert issubclass(getattr(rung, name), rung.StepFailed), name


def test_the_option_dicts_localengine_passes_on_match_the_clients_parameters() -> None:
    """``LocalEngine.trigger``/``list_runs`` take ``**TriggerOptions``/``**ListOptions``:
    a parameter added to ``Client`` must be added there too, with the same type."""
    import inspect
    import typing

    from rung.models import ListOptions, TriggerOptions

    for method, options in (
        (rung.Client.trigger, TriggerOptions),
        (rung.Client.list_runs, ListOptions),
    ):
        hints = typing.get_type_hints(method)
        keyword = {
            name
            for name, p in inspect.signature(method).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        fields = typing.get_type_hints(options)
        assert set(fields) == keyword, method.__name__
        assert {n: fields[n] for n in keyword} == {n: hints[n] for n in keyword}, method.__name__
