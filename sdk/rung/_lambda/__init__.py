"""The application rung deploys: its template and its Lambda entry points.

``template.yaml`` here is package data, byte for byte the checkout's root
``template.yaml`` (``tests/unit/test_lambda_package.py`` keeps them equal), so that an
installed rung can run it (``rung dev`` in a project that has no template of its own)
without a checkout. ``worker``, ``reconciler``, ``api`` (the HTTP API) and ``callback``
(token callback URLs) hold the handlers the template names; the checkout's
``handler/*.py``, which SAM packages, only re-export them; ``views`` is the JSON of runs
and tokens the API returns (and the CLI prints). ``rung dev`` runs these modules
directly when the project has no ``handler/`` (``rung._dev``).

Importing ``worker``, ``reconciler``, ``api`` or ``callback`` needs the ``lambda`` extra
(Powertools).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The template's handler modules ("handler/worker") and the modules here that hold them.
ENTRY_POINTS = {
    "handler/worker": "rung/_lambda/worker",
    "handler/reconciler": "rung/_lambda/reconciler",
    "handler/api": "rung/_lambda/api",
    "handler/callback": "rung/_lambda/callback",
}


def template_path() -> Path:
    """The packaged template.yaml (a real file: rung is installed unzipped)."""
    return Path(str(resources.files(__name__).joinpath("template.yaml")))


__all__ = ["ENTRY_POINTS", "template_path"]
