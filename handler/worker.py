"""Lambda entry point for the work queue's SQS event source (template.yaml: WorkerFunction).

The handler lives in the rung package (``rung._lambda.worker``), so that an installed
rung runs it too (``rung dev`` outside this checkout); this module is the name the
template gives it. Configuration (``RUNG_APP``, ``RUNG_TABLE_NAME``, ...) is described
there.
"""

from handler import _bundle

_bundle.check()  # before rung imports pydantic's compiled core

from rung._lambda.worker import MessageNotDone, lambda_handler, logger, worker  # noqa: E402

__all__ = ["MessageNotDone", "lambda_handler", "logger", "worker"]
