"""Fixtures of the tests that call the Lambda handler (``lambda_deployment``)."""

from tests.functional.lambda_deployment import (  # noqa: F401 - fixtures, found by name
    aws_clients,
    aws_env,
    deployed,
    endpoint_url,
    fresh_handler,
)
