"""The application rung deploys: its template and its Lambda entry points.

``template.yaml`` here is package data, byte for byte the checkout's root
``template.yaml`` (``tests/unit/test_lambda_package.py`` keeps them equal), so that an
installed rung can run it (``rung dev`` in a project that has no template of its own)
without a checkout. ``worker`` and ``reconciler`` hold the handlers the template names;
the checkout's ``handler/worker.py`` and ``handler/reconciler.py``, which SAM packages,
only re-export them. ``rung dev`` runs these modules directly when the project has no
``handler/`` (``rung._dev``).

Importing ``worker`` or ``reconciler`` needs the ``lambda`` extra (Powertools).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The template's handler modules ("handler/worker") and the modules here that hold them.
ENTRY_POINTS = {
    "handler/worker": "rung/_lambda/worker",
    "handler/reconciler": "rung/_lambda/reconciler",
}


def template_path() -> Path:
    """The packaged template.yaml (a real file: rung is installed unzipped)."""
    return Path(str(resources.files(__name__).joinpath("template.yaml")))


__all__ = ["ENTRY_POINTS", "template_path"]
