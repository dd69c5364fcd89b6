"""template.yaml as a stack: translation, the data plane, deployment and outputs.

The only module that talks to CloudFormation. ``rung dev`` and the LocalStack
scripts deploy the *data plane* of template.yaml (table, queues, log groups) to
an emulator, because no emulator here can run Lambda code; the functions are
read from the same template and run by rung's local runtime instead. The CLI
finds the resources of any target (emulator, LocalStack, AWS) through the
stack's outputs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from rung._aws.logs import default_group
from rung.errors import RungError

#: Resource types that need a Lambda runtime; emulators get the rest of the stack.
_COMPUTE_TYPES = (
    "AWS::Lambda::",
    "AWS::IAM::",
    "AWS::Events::Rule",  # schedules: rung dev runs them itself (the bus is data plane)
    # No emulator's CloudFormation creates alarms (moto keeps a nameless placeholder):
    # rung dev puts them with PutMetricAlarm instead (``alarms``).
    "AWS::CloudWatch::Alarm",
    "AWS::Scheduler::",
    "AWS::ApiGateway",
)
_PLACEHOLDER_CODE = "s3://rung-local-code/unused.zip"


#: What ``Ref: AWS::NoValue`` resolves to: left out of the resolved properties.
_NO_VALUE: Any = object()


class StackError(RungError):
    """The stack is missing, failed, or its template cannot be used."""


@dataclass(frozen=True)
class EventSource:
    """An SQS event source mapping of a function, as the template declares it."""

    queue: str  # the logical id of the queue
    batch_size: int
    maximum_concurrency: int | None
    report_batch_item_failures: bool


@dataclass(frozen=True)
class FunctionSpec:
    """A function of the template, with its intrinsic functions resolved."""

    logical_id: str
    handler: str  # "path/module.function", relative to the code root
    timeout: int
    memory_mb: int
    environment: dict[str, str]
    event_sources: tuple[EventSource, ...] = ()
    schedules: tuple[str, ...] = ()  # schedule expressions, e.g. "rate(5 minutes)"
    #: where its output goes: ``LoggingConfig.LogGroup``, else Lambda's default group
    #: for the function's name (``/aws/lambda/<name>``)
    log_group: str = ""
    #: its FunctionName (else ``<stack>-<logical id>``, as CloudFormation names it)
    name: str = ""


@dataclass
class Stack:
    """A deployed stack: its outputs and its resources' physical ids."""

    name: str
    outputs: dict[str, str]
    physical_ids: dict[str, str] = field(default_factory=dict)


def load_template(path: Path) -> dict[str, Any]:
    """Parse a (SAM) CloudFormation template, short-form tags included."""
    from samtranslator.yaml_helper import yaml_parse

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StackError(f"cannot read the template {path}: {exc}") from None
    template = yaml_parse(text)
    if not isinstance(template, dict) or "Resources" not in template:
        raise StackError(f"{path} is not a CloudFormation template (no Resources)")
    return dict(template)


def translate(template: dict[str, Any], parameters: dict[str, str], region: str) -> dict[str, Any]:
    """Expand the SAM transform into plain CloudFormation, offline."""
    from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
    from samtranslator.translator.transform import transform

    if "Transform" not in template:
        return template
    fragment = copy.deepcopy(template)
    for resource in fragment["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            # SAM wants an S3 location; the local runtime runs the code from disk.
            resource.setdefault("Properties", {})["CodeUri"] = _PLACEHOLDER_CODE

    class _OfflinePolicies(ManagedPolicyLoader):  # type: ignore[misc]
        def __init__(self) -> None:
            pass

        def load(self) -> dict[str, str]:
            return {}

    # The translator warns about its own unpublished metrics on every use.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    previous = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region  # the translator reads the region from here
    try:
        return dict(transform(fragment, dict(parameters), _OfflinePolicies()))
    except Exception as exc:
        raise StackError(f"the SAM template does not translate: {exc}") from None
    finally:
        if previous is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = previous


def data_plane(cfn: dict[str, Any]) -> dict[str, Any]:
    """The template without what needs a Lambda runtime (and outputs that name it)."""
    resources = {
        name: res
        for name, res in cfn["Resources"].items()
        if not str(res.get("Type", "")).startswith(_COMPUTE_TYPES)
    }
    removed = set(cfn["Resources"]) - set(resources)
    outputs = {
        name: out
        for name, out in cfn.get("Outputs", {}).items()
        if not (_references(out.get("Value")) & removed)
    }
    plane = {k: v for k, v in cfn.items() if k not in ("Resources", "Outputs", "Transform")}
    plane["Resources"] = resources
    plane["Outputs"] = outputs
    return plane


def settle_conditions(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, Any]:
    """``template`` with every ``Fn::If`` in its resources chosen by ``parameters`` (its
    conditions depend on parameters only) and what chose ``AWS::NoValue`` left out.

    For the emulators, which deploy a list element that is ``!If [c, x, !Ref
    AWS::NoValue]`` as ``None`` (moto does, for the table's conditional indexes); AWS
    gets the template as it is.
    """
    resolver = _Resolver(template, Stack("", {}), parameters, "")

    def settle(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"Fn::If"}:
            condition, yes, no = value["Fn::If"]
            return settle(yes if resolver._condition(condition) else no)
        if isinstance(value, dict):
            if value == {"Ref": "AWS::NoValue"}:
                return _NO_VALUE
            pairs = ((k, settle(v)) for k, v in value.items())
            return {k: v for k, v in pairs if v is not _NO_VALUE}
        if isinstance(value, list):
            return [v for v in map(settle, value) if v is not _NO_VALUE]
        return value

    return {**template, "Resources": settle(template["Resources"])}


def _references(value: Any) -> set[str]:
    """Logical ids a value refers to through Ref, Fn::GetAtt or Fn::Sub."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                found.add(inner)
            elif key == "Fn::GetAtt":
                target = inner[0] if isinstance(inner, list) else str(inner).split(".")[0]
                found.add(str(target))
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", str(text)))
            found |= _references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _references(inner)
    return found


def deploy(
    cfn_client: Any,
    name: str,
    template: dict[str, Any],
    parameters: dict[str, str],
    timeout: float = 120.0,
) -> Stack:
    """Create the stack, or update it when it exists; wait until it is complete."""
    body = json.dumps(settle_conditions(template, parameters))
    params = [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()]
    declared = set(template.get("Parameters", {}))
    params = [p for p in params if p["ParameterKey"] in declared]
    try:
        cfn_client.describe_stacks(StackName=name)
        exists = True
    except ClientError:
        exists = False
    try:
        if exists:
            cfn_client.update_stack(StackName=name, TemplateBody=body, Parameters=params)
        else:
            cfn_client.create_stack(StackName=name, TemplateBody=body, Parameters=params)
    except ClientError as exc:
        if "No updates are to be performed" not in str(exc):
            raise StackError(f"stack {name}: {exc}") from None
    wait_for_stack(cfn_client, name, timeout)
    return describe(cfn_client, name)


def wait_for_stack(
    cfn_client: Any, name: str, timeout: float | None = 120.0, poll: float = 0.2
) -> str:
    """Wait until the stack's create or update is complete; its status then.

    Raises:
        StackError: it failed or rolled back (with the failed resources' reasons), or
            it is still in progress after ``timeout`` seconds (None: no limit).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        stack = cfn_client.describe_stacks(StackName=name)["Stacks"][0]
        status = str(stack["StackStatus"])
        if status.endswith("_COMPLETE") and "ROLLBACK" not in status:
            return status
        if status.endswith(("_FAILED", "ROLLBACK_COMPLETE")):
            reasons = [
                f"{e.get('LogicalResourceId')}: {e.get('ResourceStatusReason')}"
                for e in cfn_client.describe_stack_events(StackName=name)["StackEvents"]
                if e.get("ResourceStatus", "").endswith("FAILED")
            ]
            raise StackError(f"stack {name} is {status}: {'; '.join(reasons[:5])}")
        if deadline is not None and time.monotonic() > deadline:
            raise StackError(f"stack {name} is still {status} after {timeout:g}s")
        time.sleep(poll)


def parameters(cfn_client: Any, name: str) -> dict[str, str]:
    """The deployed stack's parameters and their values (``****`` for NoEcho ones)."""
    stack = cfn_client.describe_stacks(StackName=name)["Stacks"][0]
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}


#: What ``update_parameter`` acknowledges: template.yaml is a SAM template (a macro) that
#: makes IAM roles. These acknowledge what the template does; they grant nothing.
_CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


def update_parameter(
    cfn_client: Any, name: str, key: str, value: str, *, poll: float = 5.0
) -> None:
    """Update the stack with its template as deployed and every parameter as it is,
    but ``key`` set to ``value``; wait until the update is complete, however long
    (a new DynamoDB index is built during it).

    Raises:
        StackError: CloudFormation refused the update, or it failed and rolled back.
    """
    params = [
        {"ParameterKey": k, "ParameterValue": value}
        if k == key
        else {"ParameterKey": k, "UsePreviousValue": True}
        for k in parameters(cfn_client, name)
    ]
    try:
        cfn_client.update_stack(
            StackName=name,
            UsePreviousTemplate=True,
            Parameters=params,
            Capabilities=_CAPABILITIES,
        )
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        raise StackError(f"stack {name}: CloudFormation refused {key}={value}: {message}") from None
    wait_for_stack(cfn_client, name, timeout=None, poll=poll)


def describe(cfn_client: Any, name: str, endpoint: str | None = None) -> Stack:
    """The stack's outputs and physical ids, or ``StackError`` saying what to do."""
    try:
        stack = cfn_client.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as exc:
        where = endpoint or "AWS"
        raise StackError(
            f"no stack {name!r} at {where} ({exc.response.get('Error', {}).get('Message', exc)}); "
            "start `rung dev`, deploy template.yaml, or pass --stack / --endpoint-url"
        ) from None
    except EndpointConnectionError as exc:
        where = endpoint or "AWS"
        raise StackError(
            f"nothing is listening at {where} ({exc}); start `rung dev` or LocalStack, or "
            "check --endpoint-url / AWS_ENDPOINT_URL"
        ) from None
    except NoCredentialsError:
        raise StackError(
            f"no AWS credentials to read stack {name!r} with: configure a profile or set "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or point --endpoint-url at an emulator)"
        ) from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    resources = cfn_client.describe_stack_resources(StackName=name)["StackResources"]
    physical = {
        r["LogicalResourceId"]: r.get("PhysicalResourceId") or ""
        for r in resources
        if "LogicalResourceId" in r  # moto lists a nameless placeholder for types it lacks
    }
    return Stack(name=name, outputs=outputs, physical_ids=physical)


def functions(
    cfn: dict[str, Any], stack: Stack, parameters: dict[str, str], region: str
) -> list[FunctionSpec]:
    """The template's functions with their handler, timeout, environment and triggers."""
    resolver = _Resolver(cfn, stack, parameters, region)
    resources = cfn["Resources"]
    # An alias (SAM's AutoPublishAlias) or a version stands for its function.
    stands_for = {
        logical_id: _references(res.get("Properties", {}).get("FunctionName"))
        for logical_id, res in resources.items()
        if res.get("Type") in ("AWS::Lambda::Alias", "AWS::Lambda::Version")
    }

    def function_of(value: Any) -> set[str]:
        return {f for ref in _references(value) for f in stands_for.get(ref, {ref})}

    specs = []
    for logical_id, res in resources.items():
        if res.get("Type") != "AWS::Lambda::Function":
            continue
        props = res.get("Properties", {})
        env = props.get("Environment", {}).get("Variables", {})
        sources = []
        schedules = []
        for other in resources.values():
            other_props = other.get("Properties", {})
            if other.get("Type") == "AWS::Lambda::EventSourceMapping" and function_of(
                other_props.get("FunctionName")
            ) == {logical_id}:
                queue = sorted(_references(other_props.get("EventSourceArn")))
                scaling = other_props.get("ScalingConfig", {})
                max_conc = scaling.get("MaximumConcurrency")
                sources.append(
                    EventSource(
                        queue=queue[0] if queue else "",
                        batch_size=int(resolver.resolve(other_props.get("BatchSize", 10))),
                        maximum_concurrency=int(resolver.resolve(max_conc))
                        if max_conc is not None
                        else None,
                        report_batch_item_failures="ReportBatchItemFailures"
                        in (other_props.get("FunctionResponseTypes") or []),
                    )
                )
            if other.get("Type") in ("AWS::Events::Rule", "AWS::Scheduler::Schedule"):
                targets = other_props.get("Targets") or [other_props.get("Target", {})]
                if any(logical_id in _references(t) for t in targets):
                    schedules.append(str(resolver.resolve(other_props.get("ScheduleExpression"))))
        name = resolver.resolve(props.get("FunctionName")) or f"{stack.name}-{logical_id}"
        group = resolver.resolve(props.get("LoggingConfig", {}).get("LogGroup"))
        specs.append(
            FunctionSpec(
                logical_id=logical_id,
                handler=str(props.get("Handler", "")),
                timeout=int(resolver.resolve(props.get("Timeout", 3))),
                memory_mb=int(resolver.resolve(props.get("MemorySize", 128))),
                environment={
                    k: str(v) for k, v in resolver.deep(env).items() if v is not _NO_VALUE
                },
                event_sources=tuple(sources),
                schedules=tuple(schedules),
                log_group=str(group or default_group(str(name))),
                name=str(name),
            )
        )
    return specs


def alarms(
    cfn: dict[str, Any], stack: Stack, parameters: dict[str, str], region: str
) -> list[dict[str, Any]]:
    """The template's CloudWatch alarms as ``PutMetricAlarm`` arguments, resolved against
    the deployed stack (``rung dev`` puts them itself; see ``_COMPUTE_TYPES``)."""
    resolver = _Resolver(cfn, stack, parameters, region)
    out = []
    for logical_id, res in cfn["Resources"].items():
        if res.get("Type") != "AWS::CloudWatch::Alarm":
            continue
        props = resolver.deep(res.get("Properties", {}))
        props.setdefault("AlarmName", f"{stack.name}-{logical_id}")
        for number in ("Period", "EvaluationPeriods"):
            if number in props:
                props[number] = int(props[number])
        for query in props.get("Metrics", []):  # metric math: each query's own period
            if "Period" in query.get("MetricStat", {}):
                query["MetricStat"]["Period"] = int(query["MetricStat"]["Period"])
        props["Threshold"] = float(props["Threshold"])
        out.append(props)
    return out


class _Resolver:
    """Resolves the intrinsic functions template.yaml uses, against a deployed stack."""

    def __init__(
        self, cfn: dict[str, Any], stack: Stack, parameters: dict[str, str], region: str
    ) -> None:
        self.cfn = cfn
        self.stack = stack
        self.region = region
        self.params = {
            name: str(parameters.get(name, spec.get("Default", "")))
            for name, spec in cfn.get("Parameters", {}).items()
        }

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._ref(str(arg))
            if key == "Fn::FindInMap":
                table, first, second = (str(self.resolve(a)) for a in arg)
                return self.cfn["Mappings"][table][first][second]
            if key == "Fn::If":
                condition, yes, no = arg
                return self.resolve(yes if self._condition(condition) else no)
            if key == "Fn::Sub":
                text = arg[0] if isinstance(arg, list) else arg
                return re.sub(r"\$\{([^}]+)\}", lambda m: str(self._ref(m.group(1))), text)
            if key == "Fn::GetAtt":
                target, attribute = arg if isinstance(arg, list) else str(arg).split(".", 1)
                if attribute == "QueueName":
                    return self._ref(f"{target}.QueueName")
                if attribute == "Name":
                    return self._ref(str(target))
                return self.stack.physical_ids.get(str(target), "")
        return value

    def deep(self, value: Any) -> Any:
        """``value`` with every intrinsic function in it resolved, and what resolves to
        ``AWS::NoValue`` left out."""
        value = self.resolve(value)
        if isinstance(value, dict):
            pairs = ((k, self.deep(v)) for k, v in value.items())
            return {k: v for k, v in pairs if v is not _NO_VALUE}
        if isinstance(value, list):
            return [v for v in (self.deep(v) for v in value) if v is not _NO_VALUE]
        return value

    def _ref(self, name: str) -> Any:
        pseudo = {"AWS::StackName": self.stack.name, "AWS::Region": self.region}
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        logical = name.split(".")[0]
        physical = self.stack.physical_ids.get(logical, "")
        if not physical:  # an emulator that kept no physical id: the resource's own name
            named = self.cfn["Resources"].get(logical, {}).get("Properties", {}).get("Name")
            physical = str(self.resolve(named)) if named is not None else ""
        if name.endswith(".QueueName") and physical.startswith("http"):
            return physical.rsplit("/", 1)[-1]  # a queue's physical id is its URL
        return physical

    def _condition(self, name: str) -> bool:
        spec = self.cfn.get("Conditions", {}).get(name)
        return bool(spec) and self._truth(spec)

    def _truth(self, spec: Any) -> bool:
        ((key, arg),) = spec.items()
        if key == "Fn::Not":
            return not self._truth(arg[0])
        if key == "Fn::Equals":
            return str(self.resolve(arg[0])) == str(self.resolve(arg[1]))
        if key == "Fn::And":
            return all(self._truth(a) for a in arg)
        if key == "Fn::Or":
            return any(self._truth(a) for a in arg)
        if key == "Condition":
            return self._condition(arg)
        return False
