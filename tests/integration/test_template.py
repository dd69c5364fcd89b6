"""template.yaml: it lints clean and agrees with the code that reads what it deploys."""

from __future__ import annotations

import importlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_file  # type: ignore[import-untyped]
from cfnlint.decode import decode  # type: ignore[import-untyped]

from rung._aws.cloudformation import (
    Stack,
    functions,
    load_template,
    settle_conditions,
    translate,
)
from rung._aws.dynamodb import INDEXES, KEY_SCHEMA, LEGACY_INDEXES, PROJECTIONS, TTL_ATTRIBUTE

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    # cfn-lint's loader understands the short-form tags (!Ref, !GetAtt, !Sub ...).
    loaded, problems = decode(str(TEMPLATE))
    assert not problems, problems
    return dict(loaded)


def _resource(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][logical_id]["Properties"]
    return properties


def _keys(schema: list[dict[str, str]]) -> dict[str, str]:
    return {k["AttributeName"]: k["KeyType"] for k in schema}


def test_cfn_lint_passes() -> None:
    matches = lint_file(TEMPLATE)

    assert [str(m) for m in matches] == []


def _table_at(template: dict[str, Any], step: str) -> dict[str, Any]:
    settled = settle_conditions(template, {"IndexUpgradeStep": step})
    return _resource(settled, "Table")


def _indexes(table: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {i["IndexName"]: _keys(i["KeySchema"]) for i in table["GlobalSecondaryIndexes"]}


def test_the_table_has_the_stores_keys_indexes_and_ttl(template: dict[str, Any]) -> None:
    default = template["Parameters"]["IndexUpgradeStep"]["Default"]
    table = _table_at(template, default)

    assert _keys(table["KeySchema"]) == KEY_SCHEMA
    assert _indexes(table) == INDEXES
    assert {i["IndexName"]: i["Projection"] for i in table["GlobalSecondaryIndexes"]} == PROJECTIONS
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def test_each_index_upgrade_step_adds_or_removes_one_index(template: dict[str, Any]) -> None:
    # CloudFormation refuses more than one GSI creation or deletion per stack update, so
    # `rung upgrade-table` walks the steps; every step declares exactly the attributes
    # its keys use (CloudFormation refuses others).
    steps = template["Parameters"]["IndexUpgradeStep"]["AllowedValues"]
    tables = [_table_at(template, step) for step in steps]
    layouts = [_indexes(table) for table in tables]

    assert layouts[0] == LEGACY_INDEXES
    assert layouts[-1] == INDEXES
    for before, after in itertools.pairwise(layouts):
        assert len(set(before) ^ set(after)) == 1, (before, after)
    for table, layout in zip(tables, layouts, strict=True):
        used = set(KEY_SCHEMA) | {a for keys in layout.values() for a in keys}
        assert {a["AttributeName"] for a in table["AttributeDefinitions"]} == used


def test_the_function_handler_and_environment_match_handler_worker(
    template: dict[str, Any],
) -> None:
    function = _resource(template, "WorkerFunction")
    module_path, _, attr = function["Handler"].rpartition(".")

    module = importlib.import_module(module_path.replace("/", "."))

    assert callable(getattr(module, attr))
    assert {"RUNG_APP", "RUNG_TABLE_NAME", "RUNG_QUEUE_URL"} <= set(
        function["Environment"]["Variables"]
    )


def test_each_timeout_has_a_slot_lease_beyond_it_and_a_visibility_at_least_the_timeout(
    template: dict[str, Any],
) -> None:
    timeouts = template["Parameters"]["FunctionTimeout"]["AllowedValues"]
    settings = template["Mappings"]["TimeoutSettings"]

    assert sorted(settings) == sorted(timeouts)
    for timeout, row in settings.items():
        # A slot is renewed before steps only: it must outlive a live invocation.
        assert row["SlotLeaseSeconds"] == int(timeout) + 60
        # Lambda refuses an event source whose visibility is below the function timeout.
        assert row["VisibilitySeconds"] >= int(timeout)


def test_the_run_lease_is_short_and_kept_by_the_heartbeat(template: dict[str, Any]) -> None:
    variables = _resource(template, "WorkerFunction")["Environment"]["Variables"]
    lease = int(variables["RUNG_LEASE_SECONDS"])
    # Not derived from the timeout: a crashed attempt is retried about a lease after it
    # died, whatever the function's timeout (docs/retries.md).
    assert lease <= 60
    assert variables["RUNG_SLOT_LEASE_SECONDS"] == {
        "Fn::FindInMap": ["TimeoutSettings", {"Ref": "FunctionTimeout"}, "SlotLeaseSeconds"]
    }


def _statements(template: dict[str, Any], role: str, tracing: bool = True) -> list[dict[str, Any]]:
    """The role's statements as deployed with the Tracing parameter Active (or not):
    the one conditional statement (TracingOn) resolved."""
    policies = _resource(template, role)["Policies"]
    out = []
    for statement in (s for p in policies for s in p["PolicyDocument"]["Statement"]):
        if "Fn::If" in statement:
            condition, active, passive = statement["Fn::If"]
            assert condition == "TracingOn" and passive == {"Ref": "AWS::NoValue"}
            statement = active if tracing else None
        if statement is not None:
            out.append(statement)
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_no_iam_statement_grants_every_resource(template: dict[str, Any]) -> None:
    roles = [k for k, v in template["Resources"].items() if v["Type"] == "AWS::IAM::Role"]

    assert {"WorkerRole", "ReconcilerRole"} <= set(roles)
    for role in roles:
        statements = _statements(template, role)
        assert statements, role
        # X-Ray's write actions have no resource-level permissions: "*" is the only
        # resource they accept, so their statement (present while Tracing is Active) is
        # the one allowed to name it, and names nothing else.
        everywhere = [s for s in statements if s["Resource"] == "*"]
        traces = {
            "Sid": "Traces",
            "Effect": "Allow",
            "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
            "Resource": "*",
        }
        assert everywhere == ([] if role == "SchedulerRole" else [traces]), role
        others = [s for s in statements if s["Resource"] != "*"]
        assert '"*"' not in json.dumps(others), role
        assert '"*"' not in json.dumps(_statements(template, role, tracing=False)), role
        assert "ManagedPolicyArns" not in _resource(template, role), role


def test_schedules_send_as_a_role_that_may_only_send_to_the_work_queue(
    template: dict[str, Any],
) -> None:
    role = _resource(template, "SchedulerRole")
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    # The group's ARN, as AWS documents it for EventBridge Scheduler's role (a schedule's
    # ARN or a name prefix there makes every AssumeRole fail: no firing is delivered).
    assert trust["Condition"]["ArnEquals"] == {
        "aws:SourceArn": {"Fn::GetAtt": ["ScheduleGroup", "Arn"]}
    }
    assert _statements(template, "SchedulerRole") == [
        {
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": {"Fn::GetAtt": ["WorkQueue", "Arn"]},
        }
    ]
    group = _resource(template, "ScheduleGroup")
    assert group["Name"] == {"Ref": "AWS::StackName"}  # the group Client.from_stack finds
    outputs = template["Outputs"]
    assert outputs["ScheduleGroupName"]["Value"] == {"Ref": "ScheduleGroup"}
    assert outputs["SchedulerRoleArn"]["Value"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}


def test_the_reconciler_handler_and_environment_name_the_table_and_queue(
    template: dict[str, Any],
) -> None:
    function = _resource(template, "ReconcilerFunction")
    module_path, _, attr = function["Handler"].rpartition(".")

    module = importlib.import_module(module_path.replace("/", "."))

    assert callable(getattr(module, attr))
    assert function["Role"] == {"Fn::GetAtt": ["ReconcilerRole", "Arn"]}
    assert _plain(function["Environment"]["Variables"]) == {
        "RUNG_TABLE_NAME": {"Ref": "Table"},
        "RUNG_QUEUE_URL": {"Ref": "WorkQueue"},
        "RUNG_RECONCILE_GRACE_SECONDS": {"Ref": "ReconcileGraceSeconds"},
        "RUNG_RETENTION_DAYS": {"Ref": "RetentionDays"},
        "RUNG_PAYLOAD_BUCKET": {"Ref": "PayloadBucket"},  # the sweep deletes run objects
    }
    assert "RUNG_APP" not in function["Environment"]["Variables"]  # it runs no task code


def test_the_reconciler_runs_on_a_schedule(template: dict[str, Any]) -> None:
    function = _resource(template, "ReconcilerFunction")
    [event] = function["Events"].values()

    assert event["Type"] == "Schedule"
    assert _plain(event["Properties"]["Schedule"]) == {"Ref": "ReconcileSchedule"}
    assert template["Parameters"]["ReconcileSchedule"]["Default"] == "rate(1 minute)"
    assert function["Timeout"] == 300


def test_the_worker_may_read_runs_in_batches(template: dict[str, Any]) -> None:
    # Worker.settle_worn reads the runs of a batch's worn messages with BatchGetItem
    # (and a parent waiting for children reads them so); an emulator does not check IAM.
    actions = {
        action
        for statement in _statements(template, "WorkerRole")
        if _plain(statement["Resource"]) == {"Fn::GetAtt": ["Table", "Arn"]}
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    }
    assert {"dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:UpdateItem"} <= actions
    # A long wait asks whether the table has the timer index (Worker._later).
    assert "dynamodb:DescribeTable" in actions


def test_the_reconciler_may_only_list_by_status_mark_runs_and_send(
    template: dict[str, Any],
) -> None:
    grants: dict[str, list[Any]] = {}
    sweep_keys: list[Any] = []
    for statement in _statements(template, "ReconcilerRole"):
        actions = statement["Action"]
        for action in actions if isinstance(actions, list) else [actions]:
            grants.setdefault(action, []).append(_plain(statement["Resource"]))
        if "Condition" in statement:
            sweep_keys.append(statement["Condition"])
    table = {"Fn::GetAtt": ["Table", "Arn"]}
    grants = {a: r[0] if len(r) == 1 else r for a, r in grants.items()}

    assert grants == {
        "dynamodb:Query": [
            [
                {"Fn::Sub": "${Table.Arn}/index/runs_by_status"},
                {"Fn::Sub": "${Table.Arn}/index/by_status"},  # until the upgrade removes it
                {"Fn::Sub": "${Table.Arn}/index/runs_by_due"},  # the timer sweep
            ],
            table,  # the retention sweep: an expired run's items (docs/retention.md)
        ],
        "dynamodb:DescribeTable": table,  # which indexes exist
        "dynamodb:BatchGetItem": table,  # the candidates' items
        "dynamodb:UpdateItem": table,
        "dynamodb:DeleteItem": table,  # the sweep, only under these keys:
        "dynamodb:BatchWriteItem": table,
        "sqs:SendMessage": {"Fn::GetAtt": ["WorkQueue", "Arn"]},
        # a swept run's offloaded values (docs/payloads.md), under runs/ only
        "s3:DeleteObject": {"Fn::Sub": "${PayloadBucket.Arn}/runs/*"},
        "s3:ListBucket": {"Fn::GetAtt": ["PayloadBucket", "Arn"]},
        "logs:CreateLogStream": {"Fn::GetAtt": ["ReconcilerLogGroup", "Arn"]},
        "logs:PutLogEvents": {"Fn::GetAtt": ["ReconcilerLogGroup", "Arn"]},
        "xray:PutTraceSegments": "*",  # Lambda's own segments, while Tracing is Active
        "xray:PutTelemetryRecords": "*",
    }
    assert sweep_keys == [
        {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["RUN#*", "TOKEN#*", "IDEM#*"]}},
        {"StringLike": {"s3:prefix": "runs/*"}},
    ]
    assert {"runs_by_status", "by_status"} <= set(INDEXES) | set(LEGACY_INDEXES)


def test_retention_is_one_parameter_for_the_worker_and_the_reconciler(
    template: dict[str, Any],
) -> None:
    parameter = template["Parameters"]["RetentionDays"]
    assert (parameter["Default"], parameter["MinValue"], parameter["MaxValue"]) == (30, 1, 3650)
    for name in ("WorkerFunction", "ReconcilerFunction"):
        variables = _resource(template, name)["Environment"]["Variables"]
        assert _plain(variables["RUNG_RETENTION_DAYS"]) == {"Ref": "RetentionDays"}
    assert _plain(template["Outputs"]["RetentionDays"]["Value"]) == {"Ref": "RetentionDays"}


def test_the_reconciler_logs_to_its_own_group_with_the_retention_parameter(
    template: dict[str, Any],
) -> None:
    function = _resource(template, "ReconcilerFunction")
    group = _resource(template, "ReconcilerLogGroup")

    assert _plain(function["LoggingConfig"]["LogGroup"]) == {"Ref": "ReconcilerLogGroup"}
    assert _plain(group["RetentionInDays"]) == {"Ref": "LogRetentionDays"}
    assert {"ReconcilerFunctionName", "ReconcilerFunctionArn", "ReconcilerLogGroupName"} <= set(
        template["Outputs"]
    )


def test_tracing_is_active_by_default_and_one_parameter_turns_it_off(
    template: dict[str, Any],
) -> None:
    assert template["Parameters"]["Tracing"]["Default"] == "Active"
    assert template["Parameters"]["Tracing"]["AllowedValues"] == ["Active", "PassThrough"]
    assert _plain(template["Conditions"]["TracingOn"]) == {
        "Fn::Equals": [{"Ref": "Tracing"}, "Active"]
    }
    for name in ("WorkerFunction", "ReconcilerFunction"):
        assert _plain(_resource(template, name)["Tracing"]) == {"Ref": "Tracing"}
    variables = _resource(template, "WorkerFunction")["Environment"]["Variables"]
    assert _plain(variables["RUNG_TRACING"]) == {"Fn::If": ["TracingOn", "on", "off"]}


def test_the_functions_log_json_at_info_to_their_own_groups(template: dict[str, Any]) -> None:
    for name, group in (
        ("WorkerFunction", "WorkerLogGroup"),
        ("ReconcilerFunction", "ReconcilerLogGroup"),
    ):
        logging = _plain(_resource(template, name)["LoggingConfig"])
        assert logging == {
            "LogGroup": {"Ref": group},
            "LogFormat": "JSON",
            "ApplicationLogLevel": "INFO",
            "SystemLogLevel": "INFO",
        }


def test_each_function_logs_to_its_logging_config_group_else_lambdas_default() -> None:
    params = {"RungApp": "shop.tasks:app"}
    cfn = translate(load_template(TEMPLATE), params, "us-east-1")
    stack = Stack(
        "shop",
        outputs={},
        physical_ids={  # a log group's physical id is its name (unused by the worker here)
            "WorkerLogGroup": "/custom/worker",
            "ReconcilerLogGroup": "/custom/reconciler",
            "ApiLogGroup": "/custom/api",
            "CallbackLogGroup": "/custom/callback",
        },
    )
    del cfn["Resources"]["WorkerFunction"]["Properties"]["LoggingConfig"]

    groups = {f.logical_id: f.log_group for f in functions(cfn, stack, params, "us-east-1")}

    assert groups == {
        "WorkerFunction": "/aws/lambda/shop-worker",  # FunctionName: ${AWS::StackName}-worker
        "ReconcilerFunction": "/custom/reconciler",
        "ApiFunction": "/custom/api",
        "CallbackFunction": "/custom/callback",
    }


def test_alarms_and_the_dashboard_watch_only_metrics_rung_reports_and_resources_that_exist(
    template: dict[str, Any],
) -> None:
    from rung._engine.telemetry import METRICS

    resources = template["Resources"]
    alarms = {
        k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert set(alarms) == {
        "DeadLetterAlarm",
        "FailedRunsAlarm",
        "StartDelayAlarm",
        "RedrivesAlarm",
        "ThrottlesAlarm",
    }
    aws_metrics = {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/Lambda", "Invocations"),
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "ConcurrentExecutions"),
    }
    for name, alarm in alarms.items():
        # A plain alarm watches one metric; a metric-math one, each query's metric.
        stats = [q["MetricStat"]["Metric"] for q in alarm.get("Metrics", []) if "MetricStat" in q]
        for metric in stats or [alarm]:
            watched = (metric["Namespace"], metric["MetricName"])
            assert watched in aws_metrics or (watched[0] == "rung" and watched[1] in METRICS), name
            if watched[0] == "rung":  # the table: the dimension every rung metric also has
                dimensions = _plain(metric["Dimensions"])
                assert dimensions == [{"Name": "table", "Value": {"Ref": "Table"}}], name
        assert _plain(alarm["AlarmActions"]) == {
            "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
        }, name
        threshold = _plain(alarm["Threshold"])
        assert threshold["Ref"] in template["Parameters"], name  # a parameter, with a default
        assert "Default" in template["Parameters"][threshold["Ref"]], name
        for reference in _refs(alarm):
            assert reference in resources or reference in template["Parameters"], (name, reference)

    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    for reference in re.findall(r"\$\{([^}.]+)[^}]*\}", body):
        assert reference.startswith("AWS::") or reference in resources, reference
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    for widget in widgets:
        for metric in widget["properties"]["metrics"]:
            if isinstance(metric[0], dict):  # a SEARCH expression over rung's metrics
                names = re.findall(r'MetricName="(\w+)"', metric[0]["expression"])
                assert names and set(names) <= METRICS, widget["properties"]["title"]
                continue
            namespace, name = metric[0], metric[1]
            assert (namespace, name) in aws_metrics or (namespace == "rung" and name in METRICS), (
                widget["properties"]["title"]
            )


def test_lifecycle_events_go_to_the_stacks_own_bus_only(template: dict[str, Any]) -> None:
    assert template["Resources"]["EventBus"]["Type"] == "AWS::Events::EventBus"
    statements = [
        s for s in _statements(template, "WorkerRole") if s.get("Sid") == "LifecycleEvents"
    ]
    assert _plain(statements) == [
        {
            "Sid": "LifecycleEvents",
            "Effect": "Allow",
            "Action": "events:PutEvents",
            "Resource": {"Fn::GetAtt": ["EventBus", "Arn"]},
        }
    ]
    variables = _resource(template, "WorkerFunction")["Environment"]["Variables"]
    assert _plain(variables["RUNG_EVENT_BUS"]) == {"Fn::GetAtt": ["EventBus", "Name"]}


def _refs(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str) and not inner.startswith("AWS::"):
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0] if isinstance(inner, list) else inner.split(".")[0])
            found |= _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _refs(inner)
    return found


def test_the_failed_runs_alarm_counts_timed_out_runs_too(template: dict[str, Any]) -> None:
    alarm = template["Resources"]["FailedRunsAlarm"]["Properties"]
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    names = {q["MetricStat"]["Metric"]["MetricName"] for q in queries.values() if "MetricStat" in q}
    assert names == {"RunsFailed", "RunsTimedOut"}
    [summed] = [q for q in queries.values() if q.get("ReturnData")]
    assert summed["Expression"] == "FILL(failed, 0) + FILL(timedout, 0)"


def test_the_functions_architecture_and_python_are_parameters_the_build_defaults_to(
    template: dict[str, Any],
) -> None:
    # The bundle's compiled wheels must match the function: the Makefile's RUNG_ARCH and
    # RUNG_PYTHON default to the template's defaults (arm64, Python 3.12).
    parameters = template["Parameters"]
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    build_arch = re.search(r"^RUNG_ARCH \?= (\S+)$", makefile, re.MULTILINE)
    build_python = re.search(r"^RUNG_PYTHON \?= (\S+)$", makefile, re.MULTILINE)

    assert (parameters["Architecture"]["Default"], parameters["PythonRuntime"]["Default"]) == (
        "arm64",
        "python3.12",
    )
    assert parameters["Architecture"]["AllowedValues"] == ["arm64", "x86_64"]
    assert parameters["PythonRuntime"]["AllowedValues"] == ["python3.12", "python3.13"]
    assert build_arch and build_arch[1] == parameters["Architecture"]["Default"]
    assert build_python and f"python{build_python[1]}" == parameters["PythonRuntime"]["Default"]
    for name in ("WorkerFunction", "ReconcilerFunction"):
        function = _resource(template, name)
        assert _plain(function["Runtime"]) == {"Ref": "PythonRuntime"}
        assert [_plain(a) for a in function["Architectures"]] == [{"Ref": "Architecture"}]


def test_every_deploy_publishes_a_version_and_the_queue_invokes_the_latest() -> None:
    params = {"RungApp": "shop.tasks:app"}
    cfn = translate(load_template(TEMPLATE), params, "us-east-1")
    resources = cfn["Resources"]
    aliases = {k: v for k, v in resources.items() if v["Type"] == "AWS::Lambda::Alias"}
    [(alias_id, alias)] = aliases.items()
    assert alias["Properties"]["Name"] == "live"
    assert alias["Properties"]["FunctionName"] == {"Ref": "WorkerFunction"}
    [mapping] = [v for v in resources.values() if v["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert mapping["Properties"]["FunctionName"] == {"Ref": alias_id}  # the alias, not $LATEST
    # rung dev reads the mapping through the alias: the worker still has its queue.
    stack = Stack("shop", outputs={}, physical_ids={})
    sources = {f.logical_id: f.event_sources for f in functions(cfn, stack, params, "us-east-1")}
    assert [s.queue for s in sources["WorkerFunction"]] == ["WorkQueue"]


def test_the_worker_may_invoke_only_its_own_functions_versions(template: dict[str, Any]) -> None:
    function_name = _resource(template, "WorkerFunction")["FunctionName"]
    assert function_name == {"Fn::Sub": "${AWS::StackName}-worker"}
    invoking = [s for s in _statements(template, "WorkerRole") if "lambda:InvokeFunction" in str(s)]
    assert invoking == [
        {
            "Sid": "HandRunsToTheirVersion",
            "Effect": "Allow",
            "Action": "lambda:InvokeFunction",
            "Resource": {
                "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:"
                "function:${AWS::StackName}-worker:*"
            },
        }
    ]
    assert not any("lambda:" in str(s) for s in _statements(template, "ReconcilerRole"))


def test_the_payload_bucket_is_private_encrypted_tls_only_and_kept(
    template: dict[str, Any],
) -> None:
    bucket = template["Resources"]["PayloadBucket"]
    props = bucket["Properties"]
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("Retain", "Retain")
    [rule] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    [deny] = template["Resources"]["PayloadBucketPolicy"]["Properties"]["PolicyDocument"][
        "Statement"
    ]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    # The worker reads and writes objects under runs/ only, and nothing else of S3.
    grants = {
        action: _plain(statement["Resource"])
        for statement in _statements(template, "WorkerRole")
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        if action.startswith("s3:")
    }
    objects = {"Fn::Sub": "${PayloadBucket.Arn}/runs/*"}
    bucket = {"Fn::GetAtt": ["PayloadBucket", "Arn"]}  # listed only under runs/: a missing
    assert grants == {"s3:GetObject": objects, "s3:PutObject": objects, "s3:ListBucket": bucket}
    [listing] = [s for s in _statements(template, "WorkerRole") if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "runs/*"}}  # key: NoSuchKey
    worker = _resource(template, "WorkerFunction")["Environment"]["Variables"]
    assert _plain(worker["RUNG_PAYLOAD_BUCKET"]) == {"Ref": "PayloadBucket"}
    assert _plain(template["Outputs"]["PayloadBucketName"]["Value"]) == {"Ref": "PayloadBucket"}
    for function in ("ApiFunction", "CallbackFunction"):  # a token value may be over 128 KiB
        variables = _resource(template, function)["Environment"]["Variables"]
        assert _plain(variables["RUNG_PAYLOAD_BUCKET"]) == {"Ref": "PayloadBucket"}


# -- the HTTP API and token callback URLs (docs/http.md) -------------------------------


def test_the_api_is_a_function_url_that_takes_only_sigv4_signed_calls(
    template: dict[str, Any],
) -> None:
    function = _resource(template, "ApiFunction")
    assert function["Handler"] == "handler/api.lambda_handler"
    assert function["FunctionUrlConfig"] == {"AuthType": "AWS_IAM"}
    assert function["Role"] == {"Fn::GetAtt": ["ApiRole", "Arn"]}
    variables = function["Environment"]["Variables"]
    assert variables["RUNG_APP"] == {"Ref": "RungApp"}  # triggers validate payloads
    assert {"RUNG_TABLE_NAME", "RUNG_QUEUE_URL", "RUNG_RETENTION_DAYS"} <= set(variables)
    cfn = translate(load_template(TEMPLATE), {"RungApp": "shop.tasks:app"}, "us-east-1")
    url = cfn["Resources"]["ApiFunctionUrl"]
    assert url["Type"] == "AWS::Lambda::Url"
    assert url["Properties"]["AuthType"] == "AWS_IAM"
    # No resource policy opens it: only identities allowed lambda:InvokeFunctionUrl call it.
    opened = [
        r
        for r in cfn["Resources"].values()
        if r["Type"] == "AWS::Lambda::Permission"
        and r["Properties"].get("FunctionName") == {"Ref": "ApiFunction"}
    ]
    assert opened == []


def test_token_callbacks_are_an_open_url_on_a_function_that_may_only_answer_tokens(
    template: dict[str, Any],
) -> None:
    function = _resource(template, "CallbackFunction")
    assert function["Handler"] == "handler/callback.lambda_handler"
    assert function["FunctionUrlConfig"] == {"AuthType": "NONE"}
    assert "RUNG_APP" not in function["Environment"]["Variables"]  # imports no task code
    grants = {
        action: (json.dumps(s["Resource"]), json.dumps(s.get("Condition")))
        for s in _statements(template, "CallbackRole")
        if s["Sid"] not in ("Traces", "Logs")
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    table = json.dumps({"Fn::GetAtt": ["Table", "Arn"]})
    keys = json.dumps({"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["TOKEN#*", "RUN#*"]}})
    assert grants == {
        "dynamodb:GetItem": (table, keys),
        "dynamodb:UpdateItem": (table, keys),
        "dynamodb:ConditionCheckItem": (table, keys),
        "sqs:SendMessage": (json.dumps({"Fn::GetAtt": ["WorkQueue", "Arn"]}), "null"),
        # a token value over 128 KiB (docs/payloads.md): objects under runs/ only
        "s3:GetObject": (json.dumps({"Fn::Sub": "${PayloadBucket.Arn}/runs/*"}), "null"),
        "s3:PutObject": (json.dumps({"Fn::Sub": "${PayloadBucket.Arn}/runs/*"}), "null"),
        "s3:ListBucket": (
            json.dumps({"Fn::GetAtt": ["PayloadBucket", "Arn"]}),
            json.dumps({"StringLike": {"s3:prefix": "runs/*"}}),
        ),
    }
    cfn = translate(load_template(TEMPLATE), {"RungApp": "shop.tasks:app"}, "us-east-1")
    assert cfn["Resources"]["CallbackFunctionUrl"]["Properties"]["AuthType"] == "NONE"


def test_the_worker_hands_out_token_urls_below_the_callback_functions_url(
    template: dict[str, Any],
) -> None:
    variables = _resource(template, "WorkerFunction")["Environment"]["Variables"]
    assert variables["RUNG_CALLBACK_URL"] == {"Fn::GetAtt": ["CallbackFunctionUrl", "FunctionUrl"]}
    outputs = template["Outputs"]
    assert outputs["ApiUrl"]["Value"] == {"Fn::GetAtt": ["ApiFunctionUrl", "FunctionUrl"]}
    assert outputs["CallbackUrl"]["Value"] == {"Fn::GetAtt": ["CallbackFunctionUrl", "FunctionUrl"]}
    assert outputs["ApiFunctionArn"]["Value"] == {"Fn::GetAtt": ["ApiFunction", "Arn"]}


def test_the_api_and_callback_functions_are_built_like_the_others() -> None:
    makefile = (TEMPLATE.parent / "Makefile").read_text()
    assert re.search(
        r"^build-WorkerFunction .*build-ApiFunction build-CallbackFunction:", makefile, re.M
    )
