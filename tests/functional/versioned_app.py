"""Two versions of one app, as two deploys of the worker function would hold them
(tests/functional/test_lambda_versions.py): ``RUNG_APP=tests.functional.versioned_app:v1``
or ``...:v2``. Version 2 adds a step before the wait and renames the one after it, so
a run started on version 1 would fail version 2's determinism check."""

from __future__ import annotations

from collections import Counter

import rung
from tests.functional.lambda_deployment import InvocationDied

#: Real executions of each version's steps ("v1:draft", ...).
calls: Counter[str] = Counter()
#: Steps that kill their invocation the next time they run (a crash mid-attempt).
die_in: set[str] = set()


def _step(name: str) -> str:
    if name in die_in:
        die_in.discard(name)
        raise InvocationDied(name)
    calls[name] += 1
    return name


def _app(version: str) -> rung.App:
    app = rung.App("versioned")

    @app.task(id="review")
    def review(ctx: rung.Context, order: str) -> str:
        if version == "v2":
            ctx.step("score", _step, "v2:score")
        ctx.step("draft", _step, f"{version}:draft")
        answer = ctx.wait_for_token(ctx.create_token("approve"))
        ctx.step("ship_it" if version == "v2" else "ship", _step, f"{version}:ship")
        return f"{order}:{answer}:{version}"

    return app


v1 = _app("v1")
v2 = _app("v2")
