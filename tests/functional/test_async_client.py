"""``rung.AsyncClient``: Client's methods, awaited, on threads of its own, inside an
asyncio app."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import pytest

import rung
from rung.client import Client
from rung.testing import LocalEngine


def test_every_client_method_is_on_the_async_client_with_the_same_parameters() -> None:
    public = {
        name: member
        for name, member in vars(Client).items()
        if callable(member) and not name.startswith("_") and name != "from_stack"
    }
    for name, method in public.items():
        twin = getattr(rung.AsyncClient, name, None)
        assert twin is not None, f"AsyncClient lacks {name}"
        assert inspect.iscoroutinefunction(twin), name
        assert inspect.signature(twin) == inspect.signature(method), name
    assert inspect.iscoroutinefunction(rung.AsyncClient.from_stack)


def test_an_asyncio_app_triggers_answers_and_reads_runs_without_calls_on_its_loop() -> None:
    app = rung.App("async-client")

    @app.task(id="approve")
    def approve(ctx: rung.Context, payload: dict[str, Any]) -> str:
        token = ctx.create_token("ok")
        answer = ctx.wait_for_token(token)
        return f"{payload['n']}: {answer}"

    with LocalEngine(app) as engine:
        threads: list[str] = []
        dynamodb = engine.client._store.client

        def note_thread(**_: Any) -> None:
            threads.append(threading.current_thread().name)

        dynamodb.meta.events.register("before-call", note_thread)

        async def main() -> tuple[list[rung.Run], list[str], int, str]:
            threads.clear()  # (the engine's own calls before this)
            async with rung.AsyncClient.of(engine.client, max_workers=4) as client:
                handles = await asyncio.gather(
                    *(
                        client.trigger("approve", {"n": n}, idempotency_key=f"k{n}")
                        for n in range(8)
                    )
                )
                again = await client.trigger("approve", {"n": 0}, idempotency_key="k0")
                assert again.run_id == handles[0].run_id and not again.created
                loop_thread = threading.current_thread().name
                for handle in handles:
                    token = await asyncio.to_thread(engine.wait_for_token, handle.run_id, "ok")
                    await client.complete_token(token.id, "yes")
                runs = [await asyncio.to_thread(engine.wait, h.run_id) for h in handles]
                page = await client.list_runs(task="approve", limit=20)
                events = await client.history(handles[0].run_id)
                with pytest.raises(rung.RunNotFound):
                    await client.get_run("run_01JAAAAAAAAAAAAAAAAAAAAAAA")
                dynamodb.meta.events.unregister("before-call", note_thread)
                return runs, [str(e.type) for e in events], len(page), loop_thread

        runs, events, listed, loop_thread = asyncio.run(main())
    assert [r.output for r in runs] == [f"{n}: yes" for n in range(8)]
    assert listed == 8
    assert events[0] == "RunTriggered" and events[-1] == "RunCompleted"
    client_threads = {name for name in threads if name.startswith("rung-client")}
    assert client_threads, threads
    assert len(client_threads) <= 4  # bounded by max_workers
    assert loop_thread not in threads  # no AWS call on the loop's thread


def test_a_closed_async_client_says_so_and_bad_options_are_refused() -> None:
    app = rung.App("closed")

    @app.task(id="t")
    def t(ctx: rung.Context, payload: None) -> None:
        return None

    with LocalEngine(app) as engine:

        async def main() -> None:
            client = rung.AsyncClient.of(engine.client)
            await client.close()
            with pytest.raises(rung.UsageError, match="this AsyncClient is closed"):
                await client.trigger("t")

        asyncio.run(main())
        with pytest.raises(rung.UsageError, match="max_workers"):
            rung.AsyncClient.of(engine.client, max_workers=0)
        with pytest.raises(rung.UsageError, match="needs a rung.Client"):
            rung.AsyncClient.of("client")  # type: ignore[arg-type]
    with pytest.raises(rung.UsageError, match="needs the table and queue"):
        rung.AsyncClient(app)
