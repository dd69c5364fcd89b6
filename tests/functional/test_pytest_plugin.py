"""rung's pytest plugin (rung.testing.pytest_plugin), loaded through its ``pytest11``
entry point as in a user's project: pytest runs test files here (pytester) that use the
``rung_engine`` fixtures with no conftest of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "test_orders.py"

APP = """
import rung

app = rung.App("plugged")
seen = []


@app.task(id="double")
def double(ctx: rung.Context, n: int) -> int:
    return ctx.step("times-two", lambda: n * 2)
"""


def test_the_documented_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_orders=EXAMPLE.read_text())
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_the_app_comes_from_the_mark_the_option_or_the_ini_value(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(plugged_app=APP)
    pytester.makepyfile(
        test_by_mark="""
import pytest

@pytest.mark.rung_app("plugged_app:app", workers=2)
def test_marked(rung_engine):
    assert rung_engine.app.name == "plugged"
    assert rung_engine.wait(rung_engine.trigger("double", 21).run_id).output == 42
""",
        test_by_config="""
def test_configured(rung_engine):
    assert rung_engine.wait(rung_engine.trigger("double", 4).run_id).output == 8
""",
    )
    pytester.makeini("[pytest]\nrung_app = plugged_app:app\n")
    pytester.syspathinsert()
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
    by_option = pytester.runpytest("-p", "no:randomly", "--rung-app", "plugged_app:app")
    by_option.assert_outcomes(passed=2)
    pytester.makepyfile(
        test_options_only="""
import pytest

@pytest.mark.rung_app(workers=3)
def test_options(rung_engine):
    assert rung_engine.app.name == "plugged" and rung_engine._workers == 3
"""
    )
    pytester.runpytest("-p", "no:randomly", "test_options_only.py").assert_outcomes(passed=1)


def test_a_module_engine_is_shared_by_the_modules_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(plugged_app=APP)
    pytester.makepyfile(
        test_shared="""
import pytest
from plugged_app import app

pytestmark = pytest.mark.rung_app(app)
engines = []

def test_first(rung_module_engine):
    engines.append(rung_module_engine)
    rung_module_engine.wait(rung_module_engine.trigger("double", 1).run_id)

def test_second(rung_module_engine):
    assert engines == [rung_module_engine]
    assert len(rung_module_engine.list_runs()) == 1  # the first test's run is there
"""
    )
    pytester.syspathinsert()
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


def test_no_app_or_a_wrong_one_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_missing="""
def test_needs_an_app(rung_engine):
    pass
""",
        test_wrong="""
import pytest

@pytest.mark.rung_app("no_such_module:app")
def test_wrong_app(rung_engine):
    pass

@pytest.mark.rung_app(42)
def test_not_an_app(rung_engine):
    pass
""",
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(errors=3)
    assert "pytest_plugin.py" not in result.stdout.str()  # the reason, not a traceback
    result.stdout.fnmatch_lines(
        [
            "*rung_engine needs the app under test: mark the test*",
            "*rung app 'no_such_module:app': cannot import 'no_such_module'*",
            "*the app under test is a rung.App or 'module:attr', got 42*",
        ],
        consecutive=False,
    )
