"""Lambda entry point for the reconciler's schedule (template.yaml: ReconcilerFunction).

The handler lives in the rung package (``rung._lambda.reconciler``), so that an installed
rung runs it too (``rung dev`` outside this checkout); this module is the name the
template gives it. Configuration is described there.
"""

from handler import _bundle

_bundle.check()  # before rung imports pydantic's compiled core

from rung._lambda.reconciler import lambda_handler, logger, reconciler  # noqa: E402

__all__ = ["lambda_handler", "logger", "reconciler"]
