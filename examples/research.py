"""A research agent: search, summarize every source with a rate-limited LLM, wait for
a person to approve, publish.

What it shows, on ``rung.testing.LocalEngine`` (real time, four worker threads):

* **Fan-out to child runs.** ``batch_trigger_and_wait`` starts one ``summarize`` run
  per source; the parent holds no worker while they run and is woken once, by the
  last one to end. A source whose summary fails is reported, not fatal.
* **Flow control.** ``summarize`` runs on the ``llm`` queue: at most 3 at once across
  all workers, and at most 4 starts per second (the provider's rate limit). The demo
  prints the most calls seen at once and in any one second.
* **A human in the loop.** The agent creates a token, "sends" it to a reviewer and
  waits for it (for up to 2 days) without holding a worker; the demo answers it with
  ``client.complete_token`` as the reviewer's approval would.
* **Retries that resume.** The LLM fails once for one source with a rate-limit error;
  that child retries its ``llm`` step alone.

Run it with ``.venv/bin/python examples/research.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING

import pydantic

import rung
import rung.testing

if TYPE_CHECKING:  # the demo's terminal output; the task code needs no rich on Lambda
    from rich.console import Console

app = rung.App("research")

llm = rung.Queue(
    "llm",
    concurrency_limit=3,
    rate_limit=rung.Rate(4, per=timedelta(seconds=1)),
)


class Topic(pydantic.BaseModel):
    question: str


class Source(pydantic.BaseModel):
    url: str


class Summary(pydantic.BaseModel):
    url: str
    text: str


class FakeLLM:
    """Stands in for an LLM API: records when each call started, and answers one
    source with a rate-limit error the first time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starts: list[float] = []
        self.calls: Counter[str] = Counter()
        self.running = self.peak = 0

    def complete(self, prompt: str, key: str) -> str:
        with self.lock:
            self.starts.append(time.time())
            self.calls[key] += 1
            first = self.calls[key] == 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.3)  # the model thinks
        finally:
            with self.lock:
                self.running -= 1
        if "flaky" in prompt and first:
            raise rung.RetryAfter(timedelta(seconds=2), "429 Too Many Requests")
        if "broken" in prompt:
            raise rung.NonRetryable("the page could not be read")
        return f"summary of {prompt.split()[-1]}"


model = FakeLLM()


@app.task(
    id="summarize",
    queue=llm,
    retry=rung.RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1)),
)
def summarize(ctx: rung.Context, source: Source) -> Summary:
    def ask() -> str:
        return model.complete(f"summarize {source.url}", rung.current_step().idempotency_key)

    return Summary(url=source.url, text=ctx.step("llm", ask))


@app.task(id="research")
def research(ctx: rung.Context, topic: Topic) -> dict[str, object]:
    urls = ctx.step("search", lambda: [f"https://example.com/{n}" for n in range(8)])
    urls = [*urls, "https://example.com/flaky", "https://example.com/broken"]
    results = ctx.batch_trigger_and_wait(summarize, [Source(url=url) for url in urls])
    summaries = [r.output for r in results if r.ok]
    skipped = [str(r.error) for r in results if not r.ok]
    draft = ctx.step("draft", lambda: f"{len(summaries)} sources on {topic.question!r}")
    review = ctx.create_token("review", timeout=timedelta(days=2))
    ctx.step("ask reviewer", lambda: print(f"  (sent to the reviewer: token {review.id})"))
    verdict = ctx.wait_for_token(review)  # no worker is held while a person decides
    if not verdict.get("approved"):
        return {"published": False, "draft": draft}
    ctx.step("publish", lambda: None)
    return {"published": True, "draft": draft, "sources": len(summaries), "skipped": skipped}


def busiest_second(starts: list[float]) -> int:
    times = sorted(starts)
    return max((sum(1 for t in times[i:] if t - s < 1.0) for i, s in enumerate(times)), default=0)


def run_demo(console: Console) -> tuple[rung.Run, list[rung.Run]]:
    """Trigger the agent, approve its draft when it asks, return the run and its children."""
    # Real time, so that the rate limit's one-second windows are wall-clock seconds.
    with rung.testing.LocalEngine(app, workers=4, virtual_time=False) as engine:
        handle = engine.trigger("research", {"question": "durable agents"})
        token = engine.wait_for_token(handle.run_id, "review", timeout=120)
        parked = engine.get_run(handle.run_id)
        console.print(f"run {handle.run_id} is {parked.status}: {parked.waiting_for}")
        engine.client.complete_token(token.id, {"approved": True, "by": "ada"})
        run = engine.wait(handle.run_id, timeout=60)
        return run, engine.client.list_children(handle.run_id)


def main() -> int:
    from rich.console import Console

    console = Console()
    run, children = run_demo(console)
    console.print(f"status: {run.status}; output: {run.output}")
    statuses = Counter(str(c.status) for c in children)
    console.print(f"{len(children)} child runs: {dict(statuses)}")
    console.print(
        f"LLM calls: {len(model.starts)}; at most {model.peak} at once (limit 3) and "
        f"{busiest_second(model.starts)} in any second (limit 4); the flaky source was "
        f"asked {max(model.calls.values())}x"
    )
    ok = (
        run.status == rung.RunStatus.COMPLETED
        and isinstance(run.output, dict)
        and run.output.get("published") is True
        and run.output.get("sources") == 9
        and statuses == Counter({"COMPLETED": 9, "FAILED": 1})
        and busiest_second(model.starts) <= 4
        and model.peak <= 3
    )
    if not ok:
        console.print("[bold red]unexpected result[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
