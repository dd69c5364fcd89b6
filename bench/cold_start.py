"""Cold start: what a fresh Lambda worker process pays before its first message is done,
next to a minimal Powertools function, on this machine.

Builds the worker's bundle as ``sam build`` does (``make build-WorkerFunction``) and a
minimal function's (aws-lambda-powertools at the bundle's pinned version, a handler that
logs one line), then, each in a fresh CPython 3.12 started as Lambda starts it (``-I
-S``, only the bundle on the path), measures:

* **import**: the time to import the handler module and build what it builds at import
  (rung's worker: the app, the store, the queue, the clients), from inside the process;
* **first message**: from starting the process to the handler's return for one SQS event
  carrying a real run against the embedded emulator: examples/orders.py's process-order,
  whose first attempt checkpoints a step, runs a step that fails (the demo's payment
  provider times out once) and schedules its retry. So: the import, the clients' first
  requests and the run's own. The minimal function's row is its one event.

Absolute times on a shared machine are noisy: each figure is the median of ``ROUNDS``
processes, and the table also gives each as a ratio to the bare interpreter's start
(``python -I -S -c pass``), the floor any Lambda Python function pays.

Run it: ``.venv/bin/python bench/cold_start.py`` (needs a CPython 3.12: $RUNG_PYTHON312,
pyenv's, or python3.12). Results go to bench/results/cold_start.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples import orders  # noqa: E402 - the repository root is on the path now
from rung._aws import sessions  # noqa: E402
from rung._aws.emulator import EmbeddedEmulator  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    LAMBDA_CONTEXT,
    REGION,
    deploy_data_plane,
    lambda_env,
    sqs_event,
)

RESULTS = ROOT / "bench" / "results" / "cold_start.json"
ROUNDS = 7
PINS = ROOT / "infra" / "requirements-lambda.txt"

#: In the process: the import's own time, then the handler on stdin's event.
_RUN = (
    """
import json, sys, time
sys.path.insert(0, sys.argv[1])
began = time.perf_counter()
module = __import__(sys.argv[2], fromlist=["_"])
imported = time.perf_counter() - began
"""
    + LAMBDA_CONTEXT
    + """
event = sys.stdin.read()
if event:
    module.lambda_handler(json.loads(event), Context())
print(json.dumps({"import": imported}))
"""
)

_MINIMAL = """
from aws_lambda_powertools import Logger

logger = Logger(service="minimal")


@logger.inject_lambda_context
def lambda_handler(event, context):
    logger.info("got %d records", len(event.get("Records", [])))
    return {"batchItemFailures": []}
"""


def python312() -> str:
    candidates = [os.environ.get("RUNG_PYTHON312", "")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(map(str, pyenv.glob("versions/3.12*/bin/python3.12")), reverse=True)
    candidates.append(shutil.which("python3.12") or "")
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.stdout.strip() == "True":
            return candidate
    raise SystemExit("no CPython 3.12 here: set RUNG_PYTHON312 to one")


def build(target: Path) -> tuple[Path, Path]:
    """rung's worker bundle and the minimal Powertools function's."""
    worker = target / "worker"
    machine = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    subprocess.run(
        ["make", "--no-print-directory", "build-WorkerFunction", f"ARTIFACTS_DIR={worker}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        # this machine's, and the default code (examples/), whatever this shell sets
        env={k: v for k, v in os.environ.items() if not k.startswith("RUNG_")}
        | {"RUNG_ARCH": machine, "RUNG_PYTHON": "3.12"},
    )
    minimal = target / "minimal"
    pin = next(line for line in PINS.read_text().splitlines() if line.startswith("aws_lambda"))
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-compile", "--target", str(minimal), pin,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (minimal / "minimal.py").write_text(_MINIMAL)
    return worker, minimal


def size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def once(
    python: str, bundle: Path, module: str, env: dict[str, str], event: str
) -> dict[str, float]:
    began = time.perf_counter()
    ran = subprocess.run(
        [python, "-I", "-S", "-c", _RUN, str(bundle), module],
        input=event,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),
    )
    total = time.perf_counter() - began
    if ran.returncode != 0:
        raise SystemExit(f"{module} failed:\n{ran.stderr}")
    return {"import": json.loads(ran.stdout.splitlines()[-1])["import"], "total": total}


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    console = Console()
    python = python312()
    with tempfile.TemporaryDirectory() as tmp:
        worker, minimal = build(Path(tmp))
        emulator = EmbeddedEmulator()
        try:
            plane = deploy_data_plane(emulator.endpoint_url, "rung-cold-start")
            client = plane.client(orders.app)
            sqs = sessions.client("sqs", plane.endpoint_url, REGION)
            env = lambda_env(
                {
                    "RUNG_APP": "examples.orders:app",
                    "RUNG_TABLE_NAME": plane.table_name,
                    "RUNG_QUEUE_URL": plane.queue_url,
                    "RUNG_MAX_RECEIVE_COUNT": str(plane.max_receive_count),
                    "AWS_ENDPOINT_URL": plane.endpoint_url,
                    "RUNG_DEMO_STATE": str(Path(tmp) / "demo"),
                }
            )

            def event() -> str:
                client.trigger("process-order", {"order_id": f"o-{time.monotonic_ns()}"})
                while True:
                    got = sqs.receive_message(
                        QueueUrl=plane.queue_url,
                        MaxNumberOfMessages=1,
                        WaitTimeSeconds=1,
                        AttributeNames=["All"],
                    ).get("Messages", [])
                    if got:
                        return json.dumps(sqs_event(got, plane.outputs["QueueArn"]))

            floor = [once(python, minimal, "json", env, "") for _ in range(ROUNDS)]
            minimal_rows = [
                once(python, minimal, "minimal", env, json.dumps({"Records": []}))
                for _ in range(ROUNDS)
            ]
            worker_rows = [
                once(python, worker, "handler.worker", env, event()) for _ in range(ROUNDS)
            ]
        finally:
            emulator.stop()
        sizes = {"worker": size_mib(worker), "minimal": size_mib(minimal)}

    base = median(floor, "total")
    rows = {
        "interpreter start (python -I -S)": {"import": 0.0, "total": base, "mib": 0.0},
        "minimal Powertools function": {
            "import": median(minimal_rows, "import"),
            "total": median(minimal_rows, "total"),
            "mib": sizes["minimal"],
        },
        "rung worker (examples.orders)": {
            "import": median(worker_rows, "import"),
            "total": median(worker_rows, "total"),
            "mib": sizes["worker"],
        },
    }
    table = Table(title=f"Cold start on this machine (CPython 3.12, median of {ROUNDS})")
    for column in ("function", "bundle MiB", "import s", "first message s", "x interpreter"):
        table.add_column(column, justify="left" if column == "function" else "right")
    for name, row in rows.items():
        table.add_row(
            name,
            f"{row['mib']:.1f}",
            f"{row['import']:.3f}",
            f"{row['total']:.3f}",
            f"{row['total'] / base:.1f}",
        )
    console.print(table)
    console.print(
        "- first message: process start to the handler's return; rung's includes the first"
        " attempt of a process-order run (a step, a failing step, its retry scheduled)"
        " against the embedded emulator, over HTTP to 127.0.0.1."
    )
    out = {
        "note": (
            "fresh CPython 3.12 processes started as Lambda does (-I -S, the bundle alone"
            " on the path); medians; ratios to the bare interpreter's start"
        ),
        "rounds": ROUNDS,
        "python": python,
        "rows": {
            name: {
                "bundle_mib": round(row["mib"], 1),
                "import_s": round(row["import"], 3),
                "first_message_s": round(row["total"], 3),
                "x_interpreter_start": round(row["total"] / base, 1),
            }
            for name, row in rows.items()
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
