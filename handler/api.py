"""Lambda entry point for the HTTP API (template.yaml: ApiFunction).

The handler lives in the rung package (``rung._lambda.api``), so that an installed rung
runs it too; this module is the name the template gives it. See docs/http.md.
"""

from handler import _bundle

_bundle.check()  # before rung imports pydantic's compiled core

from rung._lambda.api import api, lambda_handler, logger  # noqa: E402

__all__ = ["api", "lambda_handler", "logger"]
