"""Deploy template.yaml's data plane (table, queues, log group) to LocalStack.

    .venv/bin/python infra/localstack/deploy.py examples.orders:app [--stack rung-dev]
        [--endpoint-url http://127.0.0.1:4566] [--param MaxReceiveCount=3 ...]

Prints the stack's outputs as JSON (TableName, QueueUrl, DeadLetterQueueUrl, ...).
LocalStack cannot run Lambda functions without Docker, so the function, its role and
its event source mapping are left out (rung._aws.cloudformation.data_plane); rung runs the handler
itself. Creating the stack again updates it; it is idempotent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "sdk"))  # run from a checkout without installing rung

from rung._aws import cloudformation, sessions  # noqa: E402

REGION = "us-east-1"
DEFAULT_ENDPOINT = "http://127.0.0.1:4566"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help="RungApp: the rung.App as module:attr (examples.orders:app)")
    parser.add_argument("--stack", default="rung-localstack", help="stack name (rung-localstack)")
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("RUNG_LOCALSTACK_ENDPOINT") or DEFAULT_ENDPOINT,
        help=f"LocalStack's endpoint ($RUNG_LOCALSTACK_ENDPOINT, else {DEFAULT_ENDPOINT})",
    )
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a template parameter (repeatable); FunctionTimeout defaults to 60",
    )
    args = parser.parse_args(argv)
    params = {"RungApp": args.app, "FunctionTimeout": "60"}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--param wants KEY=VALUE, got {item!r}")
        params[key] = value
    try:
        stack = deploy_data_plane(args.endpoint_url, args.stack, params, args.template)
    except cloudformation.StackError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stack.outputs, indent=2, sort_keys=True))
    return 0


def deploy_data_plane(
    endpoint_url: str, stack_name: str, params: dict[str, str], template: Path
) -> cloudformation.Stack:
    """template.yaml -> plain CloudFormation -> its data plane -> a stack at the endpoint."""
    cfn = cloudformation.translate(cloudformation.load_template(template), params, REGION)
    plane = cloudformation.data_plane(cfn)
    client = sessions.client("cloudformation", endpoint_url, REGION)
    return cloudformation.deploy(client, stack_name, plane, params)


if __name__ == "__main__":
    sys.exit(main())
