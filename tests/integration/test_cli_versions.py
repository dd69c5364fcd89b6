"""``rung versions list|prune`` against the embedded emulator: the worker function's
versions are real Lambda versions on moto (CreateFunction, PublishVersion, an alias
"live"), the runs are pinned to them by real workers of each version, and prune's
deletions are read back through Lambda's ListVersionsByFunction."""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import rung
from rung._aws import sessions
from rung._aws.cloudformation import data_plane, deploy, load_template, translate
from rung._aws.dynamodb import DynamoStore
from rung._aws.emulator import EmbeddedEmulator
from rung._aws.sqs import SqsQueue
from rung._engine.routing import Versioning
from rung._engine.worker import Disposition, Worker
from rung._util.clock import SystemClock
from rung.cli import main
from tests.functional.lambda_deployment import code_zip
from tests.integration.test_cli import REGION, TEMPLATE

app = rung.App("versions-cli")


@app.task(id="hold")
def hold(ctx: rung.Context, _: None) -> str:
    return str(ctx.wait_for_token(ctx.create_token("go")))


@dataclass
class Stack:
    name: str
    function: str
    endpoint_url: str
    api: Any  # Lambda
    client: rung.Client
    store: DynamoStore
    queue: SqsQueue

    def rung(self, *args: str) -> Result:
        env = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_PROFILE": None,
            "AWS_REGION": None,
            "RUNG_STACK": None,
            "RUNG_APP": None,
            "COLUMNS": "200",
        }
        return CliRunner().invoke(
            main, ["--stack", self.name, *args], env=env, catch_exceptions=False, prog_name="rung"
        )

    def versions(self, *args: str) -> Any:
        result = self.rung("versions", *args, "--function", self.function, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    def publish(self) -> str:
        """A deploy: new code, a new version, the alias "live" moved to it."""
        out = self.api.update_function_code(
            FunctionName=self.function,
            ZipFile=code_zip(f"# {secrets.token_hex(4)}\n"),
            Publish=True,
        )
        version = str(out["Version"])
        with contextlib.suppress(self.api.exceptions.ResourceNotFoundException):
            self.api.update_alias(FunctionName=self.function, Name="live", FunctionVersion=version)
            return version
        self.api.create_alias(FunctionName=self.function, Name="live", FunctionVersion=version)
        return version

    def work_as(self, version: str) -> None:
        """That version's worker handles every message due now."""
        worker = Worker(
            app, self.store, self.queue, SystemClock(), versioning=Versioning(version, _nowhere)
        )
        for message in self.queue.receive(max_messages=10):
            if worker.handle(message) == Disposition.ACK:
                self.queue.delete(message)


def _nowhere(*_: Any) -> Disposition | None:
    raise AssertionError("no run of another version was due in this test")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    emulator = EmbeddedEmulator.shared()
    name = f"rung-versions-{secrets.token_hex(4)}"
    params = {"RungApp": "tests.integration.test_cli_versions:app"}
    cfn = sessions.client("cloudformation", emulator.endpoint_url, REGION)
    outputs = deploy(
        cfn, name, data_plane(translate(load_template(TEMPLATE), params, REGION)), params
    ).outputs
    iam = sessions.client("iam", emulator.endpoint_url, REGION)
    api = sessions.client("lambda", emulator.endpoint_url, REGION)
    function = f"{name}-worker"
    role = iam.create_role(RoleName=function, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    api.create_function(
        FunctionName=function,
        Runtime="python3.12",
        Role=role,
        Handler="handler/worker.lambda_handler",
        Code={"ZipFile": code_zip("# first\n")},
    )
    sqs = sessions.client("sqs", emulator.endpoint_url, REGION)
    store = DynamoStore(
        sessions.client("dynamodb", emulator.endpoint_url, REGION), outputs["TableName"]
    )
    queue = SqsQueue(sqs, outputs["QueueUrl"])
    client = rung.Client(
        app,
        table_name=outputs["TableName"],
        queue_url=outputs["QueueUrl"],
        endpoint_url=emulator.endpoint_url,
        region=REGION,
    )
    yield Stack(name, function, emulator.endpoint_url, api, client, store, queue)
    with contextlib.suppress(Exception):  # (moto fails on an alias of a deleted version)
        api.delete_function(FunctionName=function)
    iam.delete_role(RoleName=function)
    cfn.delete_stack(StackName=name)
    with contextlib.suppress(Exception):  # the table is DeletionPolicy: Retain
        store.client.delete_table(TableName=outputs["TableName"])


def test_versions_list_counts_each_versions_runs_and_prune_retires_the_unused(
    stack: Stack,
) -> None:
    assert stack.publish() == "1"
    on_1 = stack.client.trigger("hold").run_id
    stack.work_as("1")
    assert stack.client.get_run(on_1).version == "1"
    assert stack.publish() == "2"
    assert stack.publish() == "3"
    queued = stack.client.trigger("hold", delay=3600).run_id  # not started: on the latest

    listed = stack.versions("list")
    assert [(v["version"], v["latest"], v["queued"], v["waiting"]) for v in listed] == [
        ("1", False, 0, 1),
        ("2", False, 0, 0),
        ("3", True, 1, 0),
    ]
    table = stack.rung("versions", "list", "--function", stack.function).stdout
    assert "latest" in table and "1" in table

    # Replaced just now by version 3: kept unless --keep-recent allows it (a deploy's
    # previous version may still be taking batches).
    default = stack.versions("prune", "--dry-run")
    assert default["would_delete"] == []
    reasons = {k["version"]: k["reason"] for k in default["kept"]}
    assert reasons["2"].startswith("replaced less than 15")
    planned = stack.versions("prune", "--dry-run", "--keep-recent", "0s")
    assert planned["would_delete"] == ["2"] and planned["deleted"] == []
    assert {k["version"]: k["reason"] for k in planned["kept"]} == {
        "1": "1 run(s) in flight",
        "3": "the latest",
    }
    assert stack.versions("prune", "--keep-recent", "0s")["deleted"] == ["2"]
    published = stack.api.list_versions_by_function(FunctionName=stack.function)["Versions"]
    assert [v["Version"] for v in published] == ["$LATEST", "1", "3"]

    # Its run done, version 1 goes too; the latest never does.
    [token] = stack.client.list_tokens(on_1)
    stack.client.complete_token(token.id, "ok")
    stack.work_as("1")
    assert stack.client.get_run(on_1).status == rung.RunStatus.COMPLETED
    assert stack.versions("prune", "--keep-recent", "0s")["deleted"] == ["1"]
    assert [v["version"] for v in stack.versions("list")] == ["3"]
    stack.client.cancel(queued)


def test_a_version_deleted_by_hand_while_runs_need_it_shows_as_missing(stack: Stack) -> None:
    latest = stack.publish()
    run_id = stack.client.trigger("hold").run_id
    stack.work_as(latest)
    newer = stack.publish()
    stack.api.delete_function(FunctionName=stack.function, Qualifier=latest)

    listed = {v["version"]: v for v in stack.versions("list")}
    assert (listed[latest]["exists"], listed[latest]["waiting"]) == (False, 1)
    assert listed[newer]["latest"]
    text = stack.rung("versions", "list", "--function", stack.function).stdout
    assert "missing" in text
    pruned = stack.versions("prune", "--keep-recent", "0s")
    assert latest not in pruned["deleted"] and newer not in pruned["deleted"]
    assert {"version": newer, "reason": "the latest"} in pruned["kept"]
    stack.client.cancel(run_id)


def test_the_worker_function_is_found_by_the_name_template_yaml_gives_it(stack: Stack) -> None:
    # The data plane has no WorkerFunctionName output: <stack>-worker is the name the
    # template gives the function (and rung dev registers its versions under).
    found = stack.rung("versions", "list", "--json")
    assert found.exit_code == 0, found.stderr
    assert json.loads(found.stdout) == stack.versions("list")
    missing = stack.rung("versions", "list", "--function", "no-such-worker")
    assert missing.exit_code == 1
    assert "no Lambda function 'no-such-worker' here" in missing.stderr
    assert "--function NAME" in missing.stderr


# -- rung deploy --------------------------------------------------------------------------

STUB_SAM = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    names = ("RUNG_CODE_DIRS", "RUNG_ARCH", "RUNG_PYTHON", "RUNG_REQUIREMENTS")
    env = {{k: os.environ[k] for k in names if k in os.environ}}
    log.write(json.dumps({{"argv": sys.argv[1:], "env": env, "cwd": os.getcwd()}}) + "\\n")
sys.exit(int(os.environ.get("STUB_EXIT_" + sys.argv[1].upper(), "0")))
"""


@pytest.fixture
def stub_sam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the SAM CLI that records how it was called: deploying for real
    needs AWS, which no emulator here can stand in for (moto's CloudFormation cannot
    run SAM's transform and Lambda's code). What the deploy left behind is set up on the
    emulator by the test, and read back by rung deploy through the real APIs."""
    sam = tmp_path / "sam"
    sam.write_text(STUB_SAM.format(python=sys.executable))
    sam.chmod(0o755)
    log = tmp_path / "sam.log"
    monkeypatch.setenv("RUNG_SAM", str(sam))
    monkeypatch.setenv("STUB_LOG", str(log))
    project = tmp_path / "project"
    (project / "shop").mkdir(parents=True)
    (project / "shop" / "__init__.py").write_text("")
    (project / "shop" / "tasks.py").write_text(
        "from tests.integration.test_cli_versions import app\n"
    )
    (project / "template.yaml").write_text(TEMPLATE.read_text())
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    return log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_rung_deploy_builds_and_deploys_with_the_apps_parameters_then_reports_versions(
    stack: Stack, stub_sam: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNG_ARCH", "x86_64")
    latest = stack.publish()
    run_id = stack.client.trigger("hold").run_id
    stack.work_as(latest)  # a run in flight on the version about to become older
    newer = stack.publish()  # what the deploy published

    result = stack.rung("--app", "shop.tasks:app", "deploy", "--parameter", "BatchSize=5")

    assert result.exit_code == 0, result.stderr
    build, deploy = calls(stub_sam)
    assert build["argv"] == ["build", "--template", "template.yaml"]
    assert build["env"] == {"RUNG_CODE_DIRS": "shop", "RUNG_ARCH": "x86_64", "RUNG_PYTHON": "3.12"}
    assert deploy["argv"] == [
        "deploy", "--stack-name", stack.name, "--capabilities", "CAPABILITY_IAM",
        "--no-fail-on-empty-changeset", "--parameter-overrides", "RungApp=shop.tasks:app",
        "Architecture=x86_64", "PythonRuntime=python3.12", "BatchSize=5", "--resolve-s3",
    ]  # fmt: skip
    assert Path(build["cwd"]) == Path.cwd()
    assert f"version {newer} of {stack.function} is live" in result.stdout
    assert f"1 run(s) in flight on older versions (1 on version {latest})" in result.stdout
    stack.client.cancel(run_id)


def test_rung_deploy_dry_run_prints_the_commands_and_runs_nothing(
    stack: Stack, stub_sam: Path
) -> None:
    result = stack.rung(
        "--app", "shop.tasks:app", "deploy", "--dry-run", "--arch", "arm64", "--python", "3.13",
        "--code-dir", "shop", "--code-dir", "billing", "--guided",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    build, deploy = result.stdout.splitlines()
    assert build == (
        "RUNG_CODE_DIRS='shop billing' RUNG_ARCH=arm64 RUNG_PYTHON=3.13 "
        "sam build --template template.yaml"
    )
    assert "Architecture=arm64 PythonRuntime=python3.13" in deploy
    assert deploy.endswith("--guided")
    assert calls(stub_sam) == []


def test_rung_deploy_stops_at_a_failed_build_and_refuses_bad_input(
    stack: Stack, stub_sam: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_EXIT_BUILD", "2")
    failed = stack.rung("--app", "shop.tasks:app", "deploy")
    assert failed.exit_code == 1
    assert "sam build failed (exit status 2); nothing more was done" in failed.stderr
    assert [c["argv"][0] for c in calls(stub_sam)] == ["build"]  # no deploy after it

    no_app = stack.rung("deploy")
    assert no_app.exit_code == 2 and "rung deploy needs the app" in no_app.stderr
    ours = stack.rung("--app", "shop.tasks:app", "deploy", "--parameter", "RungApp=x:y")
    assert ours.exit_code == 2 and "rung deploy sets RungApp itself" in ours.stderr
    arch = stack.rung("--app", "shop.tasks:app", "deploy", "--arch", "sparc")
    assert arch.exit_code == 2 and "sparc" in arch.stderr
    monkeypatch.setenv("RUNG_SAM", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    missing = stack.rung("--app", "shop.tasks:app", "deploy")
    assert missing.exit_code == 1 and "pipx install aws-sam-cli" in missing.stderr
