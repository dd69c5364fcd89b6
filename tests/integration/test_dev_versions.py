"""Code versions on ``rung dev``, with real worker processes (docs/versioning.md): a run
waiting while its task's source file is edited finishes on the code it started on, a
new run takes the new code, and ``rung versions list|prune`` see both versions, then
only the new one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

import rung
from rung._dev import DevStack
from rung.cli import main
from rung.models import EventType
from tests.integration.test_dev_processes import dev_options

T = TypeVar("T")

FLOW = """
import rung

app = rung.App("versiontest")
VERSION = "{version}"


@app.task(id="review")
def review(ctx: rung.Context, order: str) -> list[str]:
    steps = [{steps}]
    if VERSION == "v2":
        steps.append(ctx.step("score", lambda: "scored"))
    steps.append(ctx.step("draft", lambda: VERSION))
    answer = ctx.wait_for_token(ctx.create_token("approve"))
    steps.append(ctx.step("ship_it" if VERSION == "v2" else "ship", lambda: VERSION))
    return [*steps, answer]
"""


def write_flow(module: Path, version: str) -> None:
    module.write_text(FLOW.format(version=version, steps=""))


def until(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g}s")


def token_of(dev: DevStack, run_id: str) -> rung.TokenState:
    return until(lambda: next(iter(dev.client.list_tokens(run_id)), None), f"run {run_id}'s token")


def versions(dev: DevStack, *args: str) -> Any:
    result = CliRunner().invoke(
        main,
        ["--stack", dev.stack_name, "versions", *args, "--json"],
        env={
            "AWS_ENDPOINT_URL": dev.endpoint_url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_PROFILE": None,
            "RUNG_APP": None,
            "RUNG_STACK": None,
        },
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.timeout(300)
def test_a_waiting_run_finishes_on_the_code_it_started_on_after_a_reload(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    module = project / "flow_app.py"
    write_flow(module, "v1")
    lines: list[str] = []
    options = dev_options(tmp_path, app="flow_app:app", code_root=project, reload=True)
    with DevStack(options, emit=lines.append) as dev:
        old = dev.client.trigger("review", "o-1").run_id
        old_token = token_of(dev, old)
        assert dev.client.get_run(old).version == "1"

        time.sleep(1.1)  # a later mtime than the first version's
        write_flow(module, "v2")  # a step inserted before the wait, one renamed after it
        reload = until(
            lambda: [line for line in lines if "new runs start on version 2" in line],
            "the reload",
        )
        assert "1 run(s) stay on version 1" in reload[0]
        new = dev.client.trigger("review", "o-2").run_id
        new_token = token_of(dev, new)
        listed = {v["version"]: v for v in versions(dev, "list")}
        assert (listed["1"]["waiting"], listed["1"]["latest"]) == (1, False)
        assert (listed["2"]["waiting"], listed["2"]["latest"]) == (1, True)

        dev.client.complete_token(old_token.id, "yes")
        dev.client.complete_token(new_token.id, "ok")
        finished_old = dev.wait(old, timeout=60)
        finished_new = dev.wait(new, timeout=60)
        assert (finished_old.status, finished_old.output, finished_old.version) == (
            "COMPLETED",
            ["v1", "v1", "yes"],
            "1",
        )
        assert (finished_new.status, finished_new.output, finished_new.version) == (
            "COMPLETED",
            ["scored", "v2", "v2", "ok"],
            "2",
        )
        assert EventType.RUN_FAILED not in [e.type for e in dev.client.history(old)]

        # Version 1's processes go once its last run has ended; prune retires it.
        until(
            lambda: any("version 1 has no runs left" in line for line in lines),
            "version 1's workers stopping",
        )
        pruned = versions(dev, "prune", "--keep-recent", "0s")
        assert pruned["deleted"] == ["1"]
        assert [v["version"] for v in versions(dev, "list")] == ["2"]
        until(
            lambda: any("removed the snapshot of a pruned version" in line for line in lines),
            "version 1's snapshot removed",
        )
        assert len(list((options.state_dir / "versions").iterdir())) == 1
