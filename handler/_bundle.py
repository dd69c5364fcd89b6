"""The Lambda bundle's build target against the function it runs in.

``make build-WorkerFunction`` (what ``sam build`` runs) writes ``rung-bundle.json`` at the
top of the bundle: the architecture and Python version its compiled wheels (pydantic-core)
were downloaded for, ``RUNG_ARCH`` and ``RUNG_PYTHON``. A function deployed with another
``Architecture`` or ``PythonRuntime`` parameter would fail on importing pydantic with an
error about a shared object; ``check`` fails first, saying what differs and what to do.
Outside a bundle (``rung dev``, tests) there is no such file and nothing to check.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

BUNDLE_FILE = Path(__file__).resolve().parents[1] / "rung-bundle.json"
#: platform.machine() on Lambda's two architectures, as the template names them
_ARCHITECTURES = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


class BundleMismatch(RuntimeError):
    """The bundle was built for another architecture or Python than the function's."""


def check(path: Path = BUNDLE_FILE) -> None:
    """Raise ``BundleMismatch`` if the bundle at ``path`` does not fit this process."""
    if not path.is_file():
        return
    built = json.loads(path.read_text())
    machine = platform.machine()
    here = {
        "architecture": _ARCHITECTURES.get(machine, machine),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    wrong = [
        f"{key} {built.get(key)} (here: {here[key]})" for key in here if built.get(key) != here[key]
    ]
    if wrong:
        raise BundleMismatch(
            "this Lambda bundle was built for " + " and ".join(wrong) + ": build it for the "
            "function's, `RUNG_ARCH=<arm64|x86_64> RUNG_PYTHON=<3.12|3.13> sam build`, or "
            "deploy with the template parameters Architecture and PythonRuntime that match "
            "the build (sam deploy --parameter-overrides Architecture=... PythonRuntime=...)"
        )
