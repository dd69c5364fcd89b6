"""rung's pytest plugin (entry point ``pytest11``): a ``LocalEngine`` for the app under
test, as a fixture (docs/testing.md).

Which app: ``@pytest.mark.rung_app(app)`` on a test, a class or a module
(``pytestmark``) — the ``rung.App`` itself or ``"module:attr"`` — else ``--rung-app
module:attr`` on the command line, else ``rung_app = module:attr`` in the pytest
configuration. The marker's keyword arguments go to ``LocalEngine`` (``workers=4``,
``lease_duration=...``; a mark may give only those). ``rung_module_engine`` reads the
module's marks only.

    rung_engine          a LocalEngine per test, started and stopped around it
    rung_module_engine   one LocalEngine for a whole module (faster; runs of earlier
                         tests are still in it)

pytest loads the plugin wherever rung is installed: that imports the ``rung`` package
(about 0.4 s); the engine and the emulator are imported when a fixture is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from rung.app import App
    from rung.testing import LocalEngine

MARKER = "rung_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rung-app",
        metavar="MODULE:ATTR",
        help="the rung.App that the rung_engine fixtures run (else the rung_app marker "
        "or the rung_app ini value)",
    )
    parser.addini("rung_app", "the rung.App (module:attr) the rung_engine fixtures run")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(app, **engine_options): the rung.App (or 'module:attr') that the "
        "rung_engine fixtures run, and LocalEngine options",
    )


@pytest.fixture
def rung_engine(request: pytest.FixtureRequest) -> Iterator[LocalEngine]:
    """A started ``rung.testing.LocalEngine`` for the app under test, stopped after the
    test."""
    yield from _engine(request)


@pytest.fixture(scope="module")
def rung_module_engine(request: pytest.FixtureRequest) -> Iterator[LocalEngine]:
    """One started ``LocalEngine`` for every test of a module (the module's marker or
    the command line's app)."""
    yield from _engine(request)


def _engine(request: pytest.FixtureRequest) -> Iterator[LocalEngine]:
    from rung.testing import LocalEngine  # the emulator, only when a test needs it

    app, options = _app_and_options(request)
    with LocalEngine(app, **options) as engine:
        yield engine


def _app_and_options(request: pytest.FixtureRequest) -> tuple[App, dict[str, Any]]:
    # The requesting node: the test for rung_engine, the module for rung_module_engine
    # (whose marks are the module's ``pytestmark``).
    marker = request.node.get_closest_marker(MARKER)
    options: dict[str, Any] = {}
    ref: object = None
    if marker is not None:
        if len(marker.args) > 1:
            _fail(
                f"@pytest.mark.{MARKER} takes one app (a rung.App or 'module:attr') and "
                f"LocalEngine options, got {len(marker.args)} positional arguments"
            )
        ref, options = (marker.args or (None,))[0], dict(marker.kwargs)
    ref = ref or request.config.getoption("--rung-app") or request.config.getini("rung_app")
    if not ref:
        _fail(
            "rung_engine needs the app under test: mark the test (or its module) "
            f"@pytest.mark.{MARKER}(app) or @pytest.mark.{MARKER}('pkg.module:app'), pass "
            "--rung-app pkg.module:app, or set rung_app = pkg.module:app in pytest's "
            "configuration"
        )
    return _load(ref), options


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def _load(ref: object) -> App:
    from rung.app import App

    if isinstance(ref, App):
        return ref
    if not isinstance(ref, str) or ref.count(":") != 1:
        _fail(f"the app under test is a rung.App or 'module:attr', got {ref!r}")
    module_name, attr = ref.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"rung app {ref!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}")
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        _fail(f"rung app {ref!r}: {module_name}.{attr} is not a rung.App")
    return app
