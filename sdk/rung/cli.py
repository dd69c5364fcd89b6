"""The ``rung`` command. The durable core ships ``--version``; the run commands
(`rung dev`, `rung trigger`, `rung runs ...`) arrive with the local platform."""

from __future__ import annotations

import click

import rung


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rung.__version__, prog_name="rung")
def main() -> None:
    """rung: durable task execution for Python on your own AWS account."""


if __name__ == "__main__":
    main()
