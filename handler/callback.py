"""Lambda entry point for token callback URLs (template.yaml: CallbackFunction).

The handler lives in the rung package (``rung._lambda.callback``), so that an installed rung
runs it too; this module is the name the template gives it. See docs/http.md.
"""

from handler import _bundle

_bundle.check()  # before rung imports pydantic's compiled core

from rung._lambda.callback import callback, lambda_handler, logger  # noqa: E402

__all__ = ["callback", "lambda_handler", "logger"]
