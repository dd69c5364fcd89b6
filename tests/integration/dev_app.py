"""Tasks for the real-process tests of `rung dev` (imported by its worker processes).

Side effects are appended, one line each, to the file named by RUNG_TEST_EFFECTS so
the tests can count them across processes and restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import time
from pathlib import Path

import rung

app = rung.App("devtest")


def effect(name: str) -> str:
    """Append one line for this step execution; returns ``name``."""
    info = rung.current_step()
    line = f"{info.run_id} {info.step_id} {name} {os.getpid()}\n"
    with Path(os.environ["RUNG_TEST_EFFECTS"]).open("a") as out:
        out.write(line)
    return name


def wait_for_gate(gate: str) -> None:
    """Record this process's pid, then block until the test opens the gate."""
    Path(gate + ".pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@app.task(id="pipeline", retry=rung.RetryPolicy(max_attempts=5, initial_interval=0.5))
def pipeline(ctx: rung.Context, payload: dict[str, str]) -> list[str]:
    done = []
    for name in ("one", "two"):
        done.append(ctx.step(name, effect, name))

    def slow() -> str:
        wait_for_gate(payload["gate"])
        return effect("slow")

    done.append(ctx.step("slow", slow))
    done.append(ctx.step("after", effect, "after"))
    return done


async def wait_for_gate_async(gate: str) -> None:
    """``wait_for_gate`` without blocking the event loop."""
    Path(gate + ".pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not Path(gate).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@app.task(id="pipeline-async", retry=rung.RetryPolicy(max_attempts=5, initial_interval=0.5))
async def pipeline_async(ctx: rung.AsyncContext, payload: dict[str, str]) -> list[str]:
    """``pipeline`` as an async task: plain steps on threads, an async one on the loop."""
    done = []
    for name in ("one", "two"):
        done.append(await ctx.step(name, effect, name))

    async def slow() -> str:
        await wait_for_gate_async(payload["gate"])
        return effect("slow")

    done.append(await ctx.step("slow", slow))
    done.append(await ctx.step("after", effect, "after"))
    return done


def _roll(*parts: object) -> float:
    digest = hashlib.sha256(" ".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


@app.task(
    id="chaos",
    retry=rung.RetryPolicy(max_attempts=8, initial_interval=0.2, backoff=1.5, max_interval=2),
)
def chaos(ctx: rung.Context, payload: int) -> int:
    """Three steps with injected failures, decided before each side effect."""
    total = 0
    for n in range(3):

        def work(n: int = n) -> int:
            info = rung.current_step()
            # ctx.attempt grows after a crash too (a step's own attempt does not: the
            # crash is the run's attempt), so a crashed step rolls again next time.
            roll = _roll(info.run_id, info.step_id, info.attempt, ctx.attempt)
            if roll < 0.02:
                raise rung.NonRetryable("deliberate failure")
            if roll < 0.05:
                os._exit(1)  # the worker process dies mid-step
            if roll < 0.25:
                raise ConnectionError("transient")
            effect(f"s{n}")
            return n

        total += ctx.step(f"s{n}", work)
    return total


@app.task(id="hostile", retry=rung.RetryPolicy(max_attempts=3, initial_interval=0.2))
def hostile(ctx: rung.Context, payload: str) -> str:
    """Misbehaves on its first attempt in the way the payload names, then succeeds."""

    def misbehave() -> str:
        if ctx.attempt == 1:
            if payload == "segfault":
                import ctypes

                ctypes.string_at(0)  # SIGSEGV in this worker process
            elif payload == "memory":
                hog = bytearray(8 * 1024**3)  # more than the function's memory
                return str(len(hog))
        return effect(payload)

    return ctx.step("misbehave", misbehave)


@app.task(id="resume", retry=rung.RetryPolicy(max_attempts=3, initial_interval=0.5))
def resume(ctx: rung.Context, payload: dict[str, int]) -> int:
    """Step b fails on the first attempt (before its effect); the retry resumes at b."""
    a = ctx.step("a", lambda: int(effect("a") == "a") * payload["x"])

    def b() -> int:
        if ctx.attempt == 1:
            raise ConnectionError("upstream hiccup")
        effect("b")
        return a * 10

    b_value = ctx.step("b", b)
    return ctx.step("c", lambda: int(effect("c") == "c") * (b_value + 1))


@app.task(id="doomed")
def doomed(ctx: rung.Context, payload: None) -> None:
    def refuse() -> None:
        raise rung.NonRetryable("card reported stolen")

    ctx.step("charge", refuse)


@app.task(id="sleeper")
def sleeper(ctx: rung.Context, payload: dict[str, float]) -> str:
    """Waits ``payload["seconds"]`` between two counted steps."""
    ctx.step("before", effect, "before")
    ctx.wait(payload["seconds"])
    ctx.step("after", effect, "after")
    return "rested"


@app.task(id="traced", retry=rung.RetryPolicy(max_attempts=3, initial_interval=0.2))
def traced(ctx: rung.Context, payload: dict[str, float]) -> str:
    """Step "flaky" fails on the first attempt; a wait of ``payload["seconds"]`` follows."""
    ctx.step("first", effect, "first")

    def flaky() -> str:
        logging.getLogger("devtest").warning("calling upstream")
        if ctx.attempt == 1:
            raise ConnectionError("upstream hiccup")
        return effect("flaky")

    ctx.step("flaky", flaky)
    ctx.wait(payload["seconds"])
    return ctx.step("last", effect, "last")


@app.task(id="approval", retry=rung.RetryPolicy(max_attempts=3, initial_interval=0.2))
def approval(ctx: rung.Context, payload: dict[str, str]) -> object:
    """Creates a token, announces it in a file, blocks at a gate, then waits for it."""
    token = ctx.create_token("approval", timeout=300)

    def announce() -> str:
        Path(payload["token_file"]).write_text(token.id)
        return effect("announce")

    def slow() -> str:
        wait_for_gate(payload["gate"])
        return effect("slow")

    ctx.step("announce", announce)
    ctx.step("slow", slow)
    return ctx.wait_for_token(token)


def hold(gate: str) -> str:
    """Record entering and leaving (with times and this pid), blocking at the gate."""
    info = rung.current_step()
    log = Path(os.environ["RUNG_TEST_EFFECTS"])
    with log.open("a") as out:
        out.write(f"enter {info.run_id} {os.getpid()} {time.time()}\n")
    deadline = time.monotonic() + 120
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    with log.open("a") as out:
        out.write(f"leave {info.run_id} {os.getpid()} {time.time()}\n")
    return info.run_id


@app.task(
    id="limited",
    queue=rung.Queue("dev-limited", concurrency_limit=2),
    retry=rung.RetryPolicy(max_attempts=4, initial_interval=0.2),
)
def limited(ctx: rung.Context, payload: dict[str, str]) -> str:
    """Holds one of the queue's two slots until the test opens the gate."""
    return ctx.step("hold", hold, payload["gate"])


@app.task(id="part", retry=rung.RetryPolicy(max_attempts=1))
def part(ctx: rung.Context, n: int) -> int:
    """A child: waits ``n`` tenths of a second (so the parts end apart), fails for 0."""
    ctx.wait(n / 10)
    if n == 0:
        raise rung.NonRetryable("part 0 is broken")
    return ctx.step("double", lambda: n * 2)


@app.task(id="fanout")
def fanout(ctx: rung.Context, payload: dict[str, int]) -> dict[str, object]:
    """A batch of children (one fails), then one child waited for on its own, then a
    token answered from outside; its body's executions are counted in a step-free way
    (a line per execution, not a checkpoint)."""
    with Path(os.environ["RUNG_TEST_EFFECTS"]).open("a") as out:
        out.write(f"{ctx.run_id} body fanout {os.getpid()}\n")
    results = ctx.batch_trigger_and_wait(part, list(range(payload["parts"])))
    single = ctx.trigger_and_wait(part, 5, name="single")
    token = ctx.create_token("ok", timeout=300)
    answer = ctx.wait_for_token(token)
    return {
        "batch": [r.output if r.ok else r.status for r in results],
        "single": single,
        "answer": answer,
    }


@app.task(
    id="soak",
    retry=rung.RetryPolicy(max_attempts=50, initial_interval=0.2, backoff=1.5, max_interval=1),
)
def soak(ctx: rung.Context, payload: int) -> int:
    """Four short counted steps (each execution's line carries the run's attempt);
    every third run's second step fails once first (a backoff, so its message is
    deferred). Up to 50 attempts: kill -9 of its worker costs the run an attempt, and
    the soak kills often."""
    total = 0
    for n in range(4):

        def work(n: int = n) -> int:
            time.sleep(0.05)  # room for a kill to land mid-step
            info = rung.current_step()
            if n == 1 and payload % 3 == 0 and info.attempt == 1:
                raise ConnectionError("transient")
            line = f"{info.run_id} {info.step_id} s{n} {os.getpid()} {ctx.attempt}\n"
            with Path(os.environ["RUNG_TEST_EFFECTS"]).open("a") as out:
                out.write(line)
            return n

        total += ctx.step(f"s{n}", work)
    return total


#: A user's own logger: no handler of its own (its WARNING lines reach stderr however
#: the worker configures logging).
user_log = logging.getLogger("devtest.logged")


@app.task(id="logged", retry=rung.RetryPolicy(max_attempts=3, initial_interval=0.2))
def logged(ctx: rung.Context, payload: dict[str, str]) -> str:
    """Logs a line in its body and one in its step (each naming the run, the attempt
    and this process); the first attempt then blocks in the step at the gate, where
    the test kills its process."""
    user_log.warning("%s body attempt %d pid %d", ctx.run_id, ctx.attempt, os.getpid())

    def work() -> str:
        user_log.warning("%s step attempt %d pid %d", ctx.run_id, ctx.attempt, os.getpid())
        if ctx.attempt == 1:
            wait_for_gate(payload["gate"])
        return "logged"

    return ctx.step("work", work)


def _resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def die(how: str, memory_mb: int) -> None:
    """End this worker process the way ``how`` names (the step never returns)."""
    if how == "exit":
        os._exit(1)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)  # SIGSEGV
    if how == "oom":
        # Lambda ends a function whose memory passes its MemorySize by killing its
        # sandbox (SIGKILL, no MemoryError). rung dev's workers get a MemoryError
        # instead, from an address-space cap (RLIMIT_AS) set well above MemorySize so
        # the interpreter fits; that path is tested elsewhere. To end as Lambda does,
        # this grows its resident memory (touched pages, 32 MiB at a time) past
        # MemorySize and then the process is killed as the sandbox would be. Safe on
        # any machine that runs the tests: it stops at MemorySize (512 MiB).
        hog = []
        while _resident_mb() <= memory_mb:
            hog.append(bytearray(b"\x01" * (32 * 2**20)))
        os.kill(os.getpid(), signal.SIGKILL)
    # "kill" (the test sends SIGKILL) and "timeout" (the function's time limit: rung
    # dev kills the process as Lambda does): block until killed.
    while True:
        time.sleep(0.05)


@app.task(id="crash", retry=rung.RetryPolicy(max_attempts=3, initial_interval=0.2))
def crash(ctx: rung.Context, payload: dict[str, str]) -> list[str]:
    """Step "fatal" ends its process on the first attempt (``payload["how"]``), after
    writing the moment to ``payload["mark"]``; the retry writes its own moment to
    ``<mark>.retry`` and completes."""
    before = ctx.step("before", effect, "before")

    def fatal() -> str:
        mark = Path(payload["mark"])
        if ctx.attempt == 1:
            mark.write_text(f"{os.getpid()} {time.time()}")
            die(payload["how"], int(payload.get("memory_mb", "512")))
        if not Path(f"{mark}.retry").exists():
            Path(f"{mark}.retry").write_text(f"{os.getpid()} {time.time()}")
        return effect("fatal")

    return [before, ctx.step("fatal", fatal)]


@app.task(id="new-year", schedule=rung.Cron("0 0 1 1 *", timezone="Europe/Paris"))
def new_year(ctx: rung.Context, event: rung.ScheduleEvent) -> str:
    """A declared schedule (never due during a test): rung dev deploys it."""
    return event.scheduled_at.isoformat()


@app.task(id="bulky")
def bulky(ctx: rung.Context, payload: dict[str, object]) -> dict[str, object]:
    """A big payload in, a big step result replayed after a wait, a digest out."""
    value = ctx.step("make", lambda: "b" * int(str(payload["size"])))
    ctx.wait(1)
    blob = str(payload["blob"])
    return {"payload": len(blob), "step": len(value), "digest": _sha(value)}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
