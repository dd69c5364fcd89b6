"""The application as the rung package ships it: the template and the handlers."""

from __future__ import annotations

from pathlib import Path

import handler.api
import handler.callback
import handler.reconciler
import handler.worker
import rung._lambda.api
import rung._lambda.callback
import rung._lambda.reconciler
import rung._lambda.worker
from rung._lambda import ENTRY_POINTS, template_path

ROOT = Path(__file__).resolve().parents[2]


def test_the_packaged_template_is_the_checkouts_template() -> None:
    # SAM builds from the root template.yaml; `rung dev` outside a checkout runs the
    # packaged copy. One template, so that what is validated is what is shipped.
    assert template_path().read_bytes() == (ROOT / "template.yaml").read_bytes(), (
        "sdk/rung/_lambda/template.yaml differs from template.yaml: "
        "cp template.yaml sdk/rung/_lambda/template.yaml"
    )


def test_the_checkouts_handlers_are_the_packaged_ones() -> None:
    assert handler.worker.lambda_handler is rung._lambda.worker.lambda_handler
    assert handler.reconciler.lambda_handler is rung._lambda.reconciler.lambda_handler
    assert handler.api.lambda_handler is rung._lambda.api.lambda_handler
    assert handler.callback.lambda_handler is rung._lambda.callback.lambda_handler
    template = (ROOT / "template.yaml").read_text()
    for name, packaged in ENTRY_POINTS.items():
        assert f"Handler: {name}.lambda_handler" in template
        assert (ROOT / "sdk" / f"{packaged}.py").is_file()
