"""rung as it is shipped: the wheel a user installs, and the Lambda bundle `sam build` makes.

The wheel (``pip wheel``, once per module) builds without deprecation warnings, and,
installed with its ``local`` extra into a fresh virtualenv, runs a project of the
user's own outside this checkout: ``rung dev`` with nothing in the project but a
tasks module (no template.yaml, no handler/), and the CLI triggering a run there.

The Lambda bundle is built once per module with ``make build-WorkerFunction
ARTIFACTS_DIR=<tmp>``, which downloads wheels for Lambda's platform from the package
index. Then: its layout (rung, handler/, the example's code, pydantic-core compiled for
CPython 3.12; no moto, no dev tools), its versions (those pinned in
infra/requirements-lambda.txt), and, when a Python 3.12 is at hand, that it runs on it
with nothing but the bundle on its path: the handlers import, and the worker takes
examples/orders.py's process-order to COMPLETED against an emulated table and queue,
invoked with SQS events as Lambda does.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rung
from examples import orders
from rung._aws import sessions
from rung._aws.emulator import EmbeddedEmulator
from rung.models import RunStatus
from tests.integration.conftest import (
    LAMBDA_CONTEXT,
    REGION,
    DataPlane,
    deploy_data_plane,
    lambda_env,
    sqs_event,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "infra" / "requirements-lambda.txt"
#: What a Lambda bundle must not carry: the emulator and the development tools.
#: The command line's own packages: the worker never imports them (issue 12's lean
#: bundle; infra/lambda_requirements.py's CLI_ONLY and what they pull in).
CLI_ONLY = ("click", "rich", "pygments", "markdown_it", "mdurl")
NOT_BUNDLED = (
    *CLI_ONLY,
    "moto",
    "werkzeug",
    "samtranslator",
    "yaml",
    "pytest",
    "mypy",
    "ruff",
    "cfnlint",
    "mypy_boto3_dynamodb",
    "boto3_stubs",
)


#: This machine's architecture as the template names it: the bundle the tests run is built
#: for it (the default build is arm64's).
MACHINE = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
BUILD_VARIABLES = (
    "RUNG_CODE_DIRS",
    "RUNG_REQUIREMENTS",
    "ARTIFACTS_DIR",
    "RUNG_ARCH",
    "RUNG_PYTHON",
)


# -- the wheel, installed as a user installs it -------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel, and what its build printed (verbose: the build backend's warnings)."""
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--verbose", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [found] = out.glob("rung-*.whl")
    return found, built.stdout + built.stderr


def test_the_wheel_builds_without_deprecation_warnings(wheel: tuple[Path, str]) -> None:
    _, log = wheel

    # e.g. setuptools' "`project.license` as a TOML table is deprecated"
    assert "deprecat" not in log.lower(), [
        line for line in log.splitlines() if "deprecat" in line.lower()
    ]


@pytest.fixture(scope="module")
def user_bin(wheel: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh virtualenv with ``pip install 'rung[local]'`` from the wheel."""
    venv = tmp_path_factory.mktemp("user") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    began = time.monotonic()
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{wheel[0]}[local]"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    print(f"pip install rung[local]: {time.monotonic() - began:.1f}s")
    return venv / "bin"


#: A user's project: this module and nothing else (no template.yaml, no handler/).
USER_TASKS = """
import sys

import rung

app = rung.App("mine")


@app.task(id="hello")
def hello(ctx: rung.Context, payload: dict) -> dict:
    greeting = ctx.step("greet", lambda: "hello " + payload["name"])
    return {"greeting": greeting, "handler": sys.modules["rung._lambda.worker"].__file__}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_rung_dev_runs_a_project_outside_the_checkout(user_bin: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.py").write_text(USER_TASKS)
    # Only what a user's shell would have: nothing points at this checkout.
    env = {"PATH": f"{user_bin}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    port = _free_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [str(user_bin / "rung"), "dev", "--app", "tasks:app", "--port", str(port)]
            + ["--workers", "1", "--no-reload"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "ready;" not in log.read_text():
            assert dev.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        triggered = subprocess.run(
            [str(user_bin / "rung"), "--endpoint-url", f"http://127.0.0.1:{port}"]
            + ["--app", "tasks:app", "trigger", "hello", "--payload", '{"name": "ada"}']
            + ["--wait", "--json"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        dev.send_signal(signal.SIGINT)
        stopped = dev.wait(timeout=60)

    assert triggered.returncode == 0, triggered.stderr + log.read_text()
    run = json.loads(triggered.stdout)["run"]
    assert run["status"] == "COMPLETED"
    assert run["output"]["greeting"] == "hello ada"
    # The worker process ran the installed package's handler, not this checkout's.
    assert run["output"]["handler"].startswith(str(user_bin.parent))
    assert "using rung's own" in log.read_text()
    assert sorted(p.name for p in project.iterdir()) == [".rung", "__pycache__", "tasks.py"]
    assert stopped == 0, log.read_text()


# -- the Lambda bundle ---------------------------------------------------------------------


def _build(artifacts: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    began = time.monotonic()
    built = subprocess.run(
        ["make", "--no-print-directory", "build-WorkerFunction", f"ARTIFACTS_DIR={artifacts}"],
        cwd=ROOT,
        # the defaults (examples/, no extra requirements), whatever this shell sets
        env={k: v for k, v in os.environ.items() if k not in BUILD_VARIABLES} | variables,
        capture_output=True,
        text=True,
        timeout=280,
    )
    print(f"build-WorkerFunction {variables}: {time.monotonic() - began:.1f}s")
    return built


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built for this machine's architecture, so that the tests can run it here."""
    artifacts = tmp_path_factory.mktemp("lambda") / "WorkerFunction"
    built = _build(artifacts, RUNG_ARCH=MACHINE)
    assert built.returncode == 0, built.stdout + built.stderr
    return artifacts


def _distributions(bundle: Path) -> dict[str, str]:
    """Normalized name -> version of every distribution installed in the bundle."""
    found = {}
    for dist_info in bundle.glob("*.dist-info"):
        metadata = (dist_info / "METADATA").read_text(errors="replace")
        name = re.search(r"^Name: (.+)$", metadata, re.MULTILINE)
        version = re.search(r"^Version: (.+)$", metadata, re.MULTILINE)
        assert name and version, dist_info
        found[_normalize(name[1])] = version[1].strip()
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def test_the_bundle_has_rung_the_handlers_and_the_task_code(bundle: Path) -> None:
    for path in (
        "handler/worker.py",
        "handler/reconciler.py",
        "handler/api.py",
        "handler/callback.py",
        "rung/__init__.py",
        "rung/_engine/worker.py",
        "examples/orders.py",
        "aws_lambda_powertools/__init__.py",
        "pydantic/__init__.py",
        "boto3/__init__.py",
    ):
        assert (bundle / path).is_file(), path
    # pydantic-core is compiled: the wheel must be Lambda's (CPython 3.12 on Linux, the
    # architecture asked for), whatever Python ran the build.
    assert [p.name for p in (bundle / "pydantic_core").glob("*.so")] == [
        f"_pydantic_core.cpython-312-{'aarch64' if MACHINE == 'arm64' else 'x86_64'}-linux-gnu.so"
    ]


def test_the_bundle_leaves_out_the_emulator_dev_tools_and_build_litter(bundle: Path) -> None:
    top = {p.name for p in bundle.iterdir()}

    assert top.isdisjoint(NOT_BUNDLED), sorted(top & set(NOT_BUNDLED))
    assert "bin" not in top  # console scripts, with the build machine's interpreter
    assert not list(bundle.rglob("__pycache__")), "bytecode of the build machine's Python"
    assert "tests" not in top and "sdk" not in top


def test_the_bundle_holds_what_the_worker_imports_and_no_more(bundle: Path) -> None:
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"worker bundle: {size / 2**20:.1f} MiB")

    assert not set(CLI_ONLY) & {p.name.lower() for p in bundle.iterdir()}
    assert not [d.name for d in bundle.glob("*.dist-info") if d.name.lower().startswith(CLI_ONLY)]
    # 53 MB with the CLI's packages (7 MB of them); Lambda's limit is 250 MB unzipped.
    assert size < 45 * 2**20


def test_by_default_the_bundle_is_built_for_arm64_and_says_so(tmp_path: Path) -> None:
    # The template's Architecture defaults to arm64 (Graviton): so does the build.
    built = _build(tmp_path / "arm")
    wrong = _build(tmp_path / "wrong", RUNG_ARCH="sparc")
    both = _build(tmp_path / "both", RUNG_ARCH="arm64 x86_64")

    assert built.returncode == 0, built.stdout + built.stderr
    assert [p.name for p in (tmp_path / "arm" / "pydantic_core").glob("*.so")] == [
        "_pydantic_core.cpython-312-aarch64-linux-gnu.so"
    ]
    assert json.loads((tmp_path / "arm" / "rung-bundle.json").read_text()) == {
        "architecture": "arm64",
        "python": "3.12",
    }
    assert wrong.returncode != 0
    assert 'RUNG_ARCH is "sparc": set arm64 or x86_64' in wrong.stderr
    assert both.returncode != 0 and 'RUNG_ARCH is "arm64 x86_64"' in both.stderr


def test_the_bundle_has_exactly_the_pinned_versions(bundle: Path) -> None:
    pins = {}
    for line in PINS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_normalize(name)] = version.strip()

    installed = _distributions(bundle)

    assert installed.pop("rung") == rung.__version__
    # Every third-party package in the bundle is pinned (a new dependency needs
    # `make lambda-requirements`), and the pins are what was installed.
    assert installed == pins


# -- on CPython 3.12, with nothing but the bundle ---------------------------------------------


def _python312() -> str | None:
    """A CPython 3.12 to run the bundle with: $RUNG_PYTHON312, pyenv's, or python3.12."""
    candidates = [os.environ.get("RUNG_PYTHON312", "")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(map(str, pyenv_root.glob("versions/3.12*/bin/python3.12")), reverse=True)
    candidates.append(shutil.which("python3.12") or "")
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run(
                [candidate, "-I", "-S", "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 12)":
            return candidate
    return None


@pytest.fixture(scope="module")
def python312() -> str:
    found = _python312()
    if found is None:
        pytest.skip("no CPython 3.12 here (set RUNG_PYTHON312 to one)")
    return found


# Runs in the subprocess: -I -S (no site-packages, no PYTHON* variables, no cwd on the
# path), the bundle first on sys.path, as on Lambda's /var/task.
_PRELUDE = """
import json, sys
sys.path.insert(0, sys.argv[1])
"""

_IMPORTS = (
    _PRELUDE
    + """
import handler.reconciler, handler.worker
worker = handler.worker.worker()          # imports RUNG_APP, builds the store and queue
reconciler = handler.reconciler.reconciler()
allowed = (sys.argv[1], sys.base_prefix)  # the bundle and the standard library
print(json.dumps({
    "worker": handler.worker.__file__,
    "app": worker.app.name,
    "tasks": sorted(m for m in sys.modules if m.startswith("examples")),
    "strays": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(","))),
    "outside": sorted(
        name for name, m in list(sys.modules.items())
        if not (getattr(m, "__file__", None) or sys.base_prefix).startswith(allowed)
    ),
}))
"""
)

_INVOKE = (
    _PRELUDE
    + """
import handler.worker
"""
    + LAMBDA_CONTEXT
    + """
print(json.dumps(handler.worker.lambda_handler(json.load(sys.stdin), Context())))
"""
)


def test_the_handlers_import_on_python312_from_the_bundle_alone(
    bundle: Path, python312: str, tmp_path: Path
) -> None:
    env = lambda_env(
        {
            "RUNG_APP": "examples.orders:app",
            "RUNG_TABLE_NAME": "t",
            "RUNG_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
        }
    )
    ran = subprocess.run(
        [python312, "-I", "-S", "-c", _IMPORTS, str(bundle), ",".join(NOT_BUNDLED)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout.splitlines()[-1])

    assert report["worker"] == str(bundle / "handler" / "worker.py")
    assert report["app"] == orders.app.name
    assert "examples.orders" in report["tasks"]
    assert report["strays"] == []
    assert report["outside"] == []  # every module came from the bundle or the stdlib


def test_a_bundle_built_for_another_function_refuses_to_start_and_says_what_to_do(
    bundle: Path, python312: str, tmp_path: Path
) -> None:
    # As if built for the other architecture and Python 3.13 and deployed here (3.12):
    # the handler stops before pydantic's compiled core fails.
    other = "x86_64" if MACHINE == "arm64" else "arm64"
    copy = tmp_path / "bundle"
    shutil.copytree(bundle / "handler", copy / "handler")
    (copy / "rung-bundle.json").write_text(f'{{"architecture": "{other}", "python": "3.13"}}')
    ran = subprocess.run(
        [python312, "-I", "-S", "-c", _PRELUDE + "import handler.worker", str(copy)],
        cwd=tmp_path,
        env=lambda_env({}),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode != 0
    assert (
        f"BundleMismatch: this Lambda bundle was built for architecture {other} (here: {MACHINE})"
    ) in ran.stderr
    assert "and python 3.13 (here: 3.12)" in ran.stderr
    assert "RUNG_ARCH=<arm64|x86_64> RUNG_PYTHON=<3.12|3.13> sam build" in ran.stderr


@pytest.fixture
def emulated_plane() -> Iterator[DataPlane]:
    emulator = EmbeddedEmulator()
    try:
        yield deploy_data_plane(emulator.endpoint_url, "rung-packaging")
    finally:
        emulator.stop()


def test_the_bundled_worker_runs_process_order_to_completion_on_python312(
    bundle: Path, python312: str, emulated_plane: DataPlane, tmp_path: Path
) -> None:
    plane = emulated_plane
    client = plane.client(orders.app)
    sqs = sessions.client("sqs", plane.endpoint_url, REGION)
    state = tmp_path / "demo-state"
    env = lambda_env(
        {
            "RUNG_APP": "examples.orders:app",
            "RUNG_TABLE_NAME": plane.table_name,
            "RUNG_QUEUE_URL": plane.queue_url,
            "RUNG_MAX_RECEIVE_COUNT": str(plane.max_receive_count),
            "RUNG_LEASE_SECONDS": "120",
            "AWS_ENDPOINT_URL": plane.endpoint_url,
            "RUNG_DEMO_STATE": str(state),  # the fake payment provider's and the call log
        }
    )
    handle = client.trigger("process-order", {"order_id": "o-1"})

    # Play the SQS event source: receive, invoke the bundle's handler on Python 3.12,
    # delete what it did not report as a batch item failure.
    invocations: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while client.get_run(handle.run_id).status != RunStatus.COMPLETED:
        assert time.monotonic() < deadline, (client.get_run(handle.run_id), invocations)
        received = sqs.receive_message(
            QueueUrl=plane.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not received:
            continue
        ran = subprocess.run(
            [python312, "-I", "-S", "-c", _INVOKE, str(bundle)],
            input=json.dumps(sqs_event(received, plane.outputs["QueueArn"])),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        response = json.loads(ran.stdout.splitlines()[-1])
        invocations.append(response)
        kept = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
        for message in received:
            if message["MessageId"] not in kept:
                sqs.delete_message(QueueUrl=plane.queue_url, ReceiptHandle=message["ReceiptHandle"])

    run = client.get_run(handle.run_id)
    assert run.output == {"order_id": "o-1", "charge_id": "ch_1"}
    assert run.attempt == 2
    # The charge timed out once: the first invocation kept the message for the retry,
    # the second resumed at the charge (fetch_order not run again) and completed.
    assert len(invocations) == 2 and invocations[0]["batchItemFailures"]
    calls = Counter(line.split("\t")[0] for line in (state / "calls.log").read_text().splitlines())
    assert calls == {"fetch_order": 1, "charge": 2, "email": 1}
