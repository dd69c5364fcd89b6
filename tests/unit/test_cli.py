from __future__ import annotations

from click.testing import CliRunner

import rung
from rung.cli import main


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"rung, version {rung.__version__}"
