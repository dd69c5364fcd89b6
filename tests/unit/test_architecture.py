"""The layout keeps its promises (docs/architecture.md, "The module map"): no import
cycle, also through imports inside functions or under TYPE_CHECKING; no module past
650 lines; the map names every package and public module that ``ls`` shows. (The
layers themselves are import-linter's contracts in pyproject.toml, run by make lint.)"""

from __future__ import annotations

import re
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "rung"
MAX_LINES = 650


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(module: str) -> None:
        nonlocal counter
        index[module] = low[module] = counter
        counter += 1
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("rung", include_external_packages=False)
    assert len(graph.modules) > 50  # the whole package was read
    assert _cycles(graph) == []


def test_a_deferred_import_is_still_an_edge_of_the_graph() -> None:
    # The check above would miss cycles dodged by importing inside a function if the
    # graph left such imports out: one is known (the CLI loads `rung dev` lazily).
    graph = grimp.build_graph("rung", include_external_packages=False)
    assert graph.direct_import_exists(importer="rung.cli", imported="rung._dev.command")


def test_no_module_is_longer_than_a_reader_can_hold() -> None:
    lengths = {
        str(path.relative_to(SDK)): len(path.read_text().splitlines()) for path in SDK.rglob("*.py")
    }
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_the_module_map_names_what_ls_shows() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## The module map") : text.index("## The table")]
    named = set(re.findall(r"`([\w]+/|[\w]+\.py)`", section))
    shown = {
        f"{path.name}/" if path.is_dir() else path.name
        for path in SDK.iterdir()
        if path.name not in {"__init__.py", "py.typed", "__pycache__"}
    }
    assert shown - named == set()
