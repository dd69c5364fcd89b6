"""The research agent as an async task: search, summarize every source concurrently on
the event loop, let the sources settle for an hour, wait for a person to approve, and
publish through a child run.

What it shows, on ``rung.testing.LocalEngine`` (virtual time, so the hour passes at
once):

* **Async steps.** ``search`` is an ``async def`` decorated with ``@rung.step``; the
  LLM client is async (it awaits its "HTTP" call), and each call passes the step's
  ``idempotency_key``, as a provider's API takes one.
* **A concurrent map on one loop.** ``ctx.map`` runs ``summarize_one`` for every source
  as asyncio tasks, at most 5 at once; no thread per branch. One source fails for good
  and is tolerated (``Completion(tolerated_failures=1)``); one answers 429 once, and
  the run retries from that step (the other summaries are not asked again).
* **Durable waits.** ``await ctx.wait(timedelta(hours=1))`` and a review token: the
  run holds no worker (and no event loop) while it waits.
* **A child run.** ``await ctx.trigger_and_wait(publish, draft)``.

Run it with ``.venv/bin/python examples/research_async.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

import pydantic

import rung
import rung.testing

if TYPE_CHECKING:  # the demo's terminal output; the task code needs no rich on Lambda
    from rich.console import Console

app = rung.App("research-async")


class Query(pydantic.BaseModel):
    text: str


class Summary(pydantic.BaseModel):
    url: str
    text: str


class Draft(pydantic.BaseModel):
    title: str
    summaries: list[Summary]


class Report(pydantic.BaseModel):
    title: str
    sources: int
    skipped: list[str]
    approved_by: str
    published_at: str


class FakeAsyncLLM:
    """Stands in for an async LLM client: counts calls (by idempotency key) and how
    many are in flight at once; one source answers 429 the first time, one fails."""

    def __init__(self, warm_up: int = 5) -> None:
        self.calls: Counter[str] = Counter()
        self.running = self.peak = 0
        self.warm_up = warm_up  # the first calls answer once this many are in flight
        self.warm: asyncio.Event | None = None

    async def summarize(self, url: str, *, idempotency_key: str) -> str:
        self.calls[idempotency_key] += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.warm is None:
            self.warm = asyncio.Event()  # (on the loop of the attempt that first calls)
        if self.running >= self.warm_up:
            self.warm.set()
        try:
            # The HTTP call, on the loop. The first calls wait until a full batch is in
            # flight, so the demo shows the concurrency on any machine, busy or not.
            await asyncio.wait_for(self.warm.wait(), timeout=10)
            await asyncio.sleep(0.05)
        finally:
            self.running -= 1
        if url.endswith("flaky") and self.calls[idempotency_key] == 1:
            raise rung.RetryAfter(timedelta(seconds=30), "429 Too Many Requests")
        if url.endswith("broken"):
            raise rung.NonRetryable("the page could not be read")
        return f"summary of {url}"


llm = FakeAsyncLLM()


@rung.step
async def search(text: str) -> list[str]:
    await asyncio.sleep(0)  # a search API, awaited
    return [f"https://example.com/{n}" for n in range(10)] + [
        "https://example.com/flaky",
        "https://example.com/broken",
    ]


async def summarize(url: str) -> Summary:
    key = rung.current_step().idempotency_key  # the same on every retry of this step
    return Summary(url=url, text=await llm.summarize(url, idempotency_key=key))


async def summarize_one(ctx: rung.AsyncContext, url: str) -> Summary:
    return await ctx.step("summarize", summarize, url)


@app.task(id="publish")
async def publish(ctx: rung.AsyncContext, draft: Draft) -> str:
    await ctx.step("upload", lambda: f"s3://reports/{draft.title}.md")
    return "2026-12-06T09:00:00Z"


@app.task(id="research", retry=rung.RetryPolicy(max_attempts=3))
async def research(ctx: rung.AsyncContext, q: Query) -> Report:
    urls = await search(q.text)
    batch = await ctx.map(
        urls,
        summarize_one,
        max_concurrency=5,
        completion=rung.Completion(tolerated_failures=1),
    )
    summaries = [item.result for item in batch.items if item.result is not None]
    skipped = [str(item.error) for item in batch.items if item.error is not None]
    await ctx.wait(timedelta(hours=1))  # let late sources settle; no worker is held
    review = await ctx.create_token("review", timeout=timedelta(days=2))
    await ctx.step("ask reviewer", lambda: print(f"  (sent to the reviewer: {review.id})"))
    approval = await ctx.wait_for_token(review)
    draft = Draft(title=q.text, summaries=summaries)
    published_at = await ctx.trigger_and_wait(publish, draft)
    return Report(
        title=q.text,
        sources=len(summaries),
        skipped=skipped,
        approved_by=str(approval["by"]),
        published_at=published_at,
    )


def run_demo(console: Console) -> tuple[rung.Run, list[rung.HistoryEvent]]:
    """Trigger the agent, approve its draft when it asks; the run and its history."""
    with rung.testing.LocalEngine(app) as engine:
        handle = engine.trigger("research", {"text": "durable agents"})
        token = engine.wait_for_token(handle.run_id, "review")
        parked = engine.get_run(handle.run_id)
        console.print(f"run {handle.run_id} is {parked.status}: {parked.waiting_for}")
        engine.client.complete_token(token.id, {"approved": True, "by": "ada"})
        run = engine.wait(handle.run_id)
        return run, engine.history(handle.run_id)


def main() -> int:
    from rich.console import Console

    console = Console()
    run, _ = run_demo(console)
    console.print(f"status: {run.status}; output: {run.output}")
    console.print(
        f"LLM calls: {sum(llm.calls.values())} for {len(llm.calls)} steps; at most "
        f"{llm.peak} at once on one event loop (max_concurrency 5)"
    )
    ok = (
        run.status == rung.RunStatus.COMPLETED
        and isinstance(run.output, dict)
        and run.output.get("sources") == 11
        and llm.peak == 5
    )
    if not ok:
        console.print("[bold red]unexpected result[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
