"""``rung deploy``: build and deploy template.yaml with the SAM CLI, the parameters rung
needs filled in, then say which version is live and how many runs are still on older
ones (docs/deploying.md, docs/versioning.md)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click

from rung._aws import cloudformation, sessions
from rung._aws.functions import FunctionVersions
from rung.cli._common import EXIT_USAGE, _error, _Target

ARCHITECTURES = ("arm64", "x86_64")
PYTHONS = ("3.12", "3.13")


@dataclass(frozen=True)
class Plan:
    """The two SAM commands, and the environment the build reads (the Makefile's)."""

    build: list[str]
    build_env: dict[str, str]
    deploy: list[str]

    def lines(self) -> list[str]:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.build_env.items())
        return [f"{env} {shlex.join(self.build)}", shlex.join(self.deploy)]


@click.command("deploy")
@click.option(
    "--template",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("template.yaml"),
    show_default=True,
    help="The SAM template; its directory holds the Makefile that builds the functions.",
)
@click.option(
    "--code-dir",
    "code_dirs",
    multiple=True,
    metavar="DIR",
    help="A directory (or module) of your tasks to bundle [default: --app's top package].",
)
@click.option(
    "--requirements",
    type=click.Path(dir_okay=False),
    help="A requirements file of your tasks' own dependencies.",
)
@click.option(
    "--arch",
    type=click.Choice(ARCHITECTURES),
    default=lambda: os.environ.get("RUNG_ARCH", "arm64"),
    show_default="RUNG_ARCH, else arm64",
    help="The functions' architecture: the build and the Architecture parameter both.",
)
@click.option(
    "--python",
    "python_version",
    type=click.Choice(PYTHONS),
    default=lambda: os.environ.get("RUNG_PYTHON", "3.12"),
    show_default="RUNG_PYTHON, else 3.12",
    help="Lambda's Python: the build and the PythonRuntime parameter both.",
)
@click.option(
    "--parameter",
    "parameters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Another template parameter (MaximumConcurrency=50, ...).",
)
@click.option("--guided", is_flag=True, help="Let `sam deploy --guided` ask (the first time).")
@click.option("--dry-run", is_flag=True, help="Print the SAM commands; run nothing.")
@click.pass_obj
def deploy(
    target: _Target,
    template: Path,
    code_dirs: tuple[str, ...],
    requirements: str | None,
    arch: str,
    python_version: str,
    parameters: tuple[str, ...],
    guided: bool,
    dry_run: bool,
) -> None:
    """Build and deploy the stack (sam build, then sam deploy) for --app.

    The parameters rung needs are filled in: RungApp from --app, and Architecture and
    PythonRuntime from the same --arch and --python the bundle is built for, so the two
    never disagree. Every deploy publishes a new version: runs already started finish on
    theirs. Afterwards it prints the version now live and the runs still on older ones.
    `sam build && sam deploy` keeps working for those who prefer it.
    """
    app = target.app()
    if app is None or target.app_ref is None:
        raise _error(
            "rung deploy needs the app: pass --app module:attr (e.g. --app shop.tasks:app) "
            "or set RUNG_APP",
            EXIT_USAGE,
        )
    plan = _plan(
        target,
        target.app_ref,
        template,
        code_dirs,
        requirements,
        arch,
        python_version,
        parameters,
        guided,
    )
    if dry_run:
        for line in plan.lines():
            click.echo(line)
        return
    sam = _sam()
    root = template.resolve().parent
    for what, command, env in (
        ("sam build", plan.build, {**os.environ, **plan.build_env}),
        ("sam deploy", plan.deploy, dict(os.environ)),
    ):
        click.echo(f"rung deploy: {shlex.join(command)}")
        code = subprocess.call([sam, *command[1:]], cwd=root, env=env)  # noqa: S603
        if code != 0:
            raise _error(f"{what} failed (exit status {code}); nothing more was done")
    try:
        changed = target.client(need_app=True).deploy_schedules()
    except Exception as exc:  # the stack is deployed; say what is left to do
        click.echo(
            f"rung deploy: the declared schedules were not deployed ({exc}); run `rung deploy` "
            "again once that is fixed (docs/schedules.md)",
            err=True,
        )
    else:
        if changed:
            click.echo(f"rung deploy: schedules deployed: {', '.join(changed)}")
    _report(target)


def _plan(
    target: _Target,
    app_ref: str,
    template: Path,
    code_dirs: tuple[str, ...],
    requirements: str | None,
    arch: str,
    python_version: str,
    parameters: tuple[str, ...],
    guided: bool,
) -> Plan:
    if not template.is_file():
        raise _error(
            f"no template at {template}: run rung deploy in the directory that holds "
            "template.yaml and its Makefile (docs/deploying.md), or pass --template",
            EXIT_USAGE,
        )
    for parameter in parameters:
        key, sep, _ = parameter.partition("=")
        if not sep or not key:
            raise _error(f"--parameter {parameter!r}: write KEY=VALUE", EXIT_USAGE)
        if key in ("RungApp", "Architecture", "PythonRuntime"):
            raise _error(
                f"--parameter {key}=...: rung deploy sets {key} itself (from --app, --arch, "
                "--python)",
                EXIT_USAGE,
            )
    dirs = code_dirs or (_top_package(app_ref, template.resolve().parent),)
    build_env = {"RUNG_CODE_DIRS": " ".join(dirs), "RUNG_ARCH": arch, "RUNG_PYTHON": python_version}
    if requirements:
        build_env["RUNG_REQUIREMENTS"] = requirements
    deploy = [
        "sam",
        "deploy",
        "--stack-name",
        target.stack_name(),
        "--capabilities",
        "CAPABILITY_IAM",
        "--no-fail-on-empty-changeset",
        "--parameter-overrides",
        f"RungApp={app_ref}",
        f"Architecture={arch}",
        f"PythonRuntime=python{python_version}",
        *parameters,
    ]
    deploy += ["--guided"] if guided else ["--resolve-s3"]
    if target.region:
        deploy += ["--region", target.region]
    return Plan(["sam", "build", "--template", str(template)], build_env, deploy)


def _top_package(app_ref: str, root: Path) -> str:
    """What to bundle for ``shop.tasks:app``: ``shop`` (a package) or ``shop.py``."""
    top = app_ref.partition(":")[0].split(".")[0]
    if (root / top).is_dir():
        return top
    if (root / f"{top}.py").is_file():
        return f"{top}.py"
    raise _error(
        f"--app {app_ref}: no {top}/ or {top}.py next to the template ({root}); pass "
        "--code-dir DIR for the directory that holds your tasks",
        EXIT_USAGE,
    )


def _sam() -> str:
    """The SAM CLI: $RUNG_SAM, ``sam`` on the PATH, or the checkout's .venv-sam."""
    found = os.environ.get("RUNG_SAM") or shutil.which("sam")
    if not found and Path(".venv-sam/bin/sam").is_file():
        found = str(Path(".venv-sam/bin/sam").resolve())
    if not found:
        raise _error(
            "rung deploy runs the SAM CLI, which is not installed: pipx install "
            "aws-sam-cli, or `make sam-validate` in a rung checkout (.venv-sam), or set "
            "RUNG_SAM to its path"
        )
    return found


def _report(target: _Target) -> None:
    """The version now live, and the runs still in flight on older ones."""
    endpoint = target.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    stack = target.stack_name()
    cfn = sessions.client("cloudformation", endpoint, target.region)
    outputs = cloudformation.describe(cfn, stack, endpoint).outputs
    function = outputs.get("WorkerFunctionName") or f"{stack}-worker"
    latest = FunctionVersions(sessions.client("lambda", endpoint, target.region), function).latest()
    counts = target.client().runs_in_flight()
    older = {v: sum(by.values()) for v, by in counts.items() if v is not None and v != latest}
    click.echo(f"rung deploy: version {latest} of {function} is live; new runs start on it")
    if any(older.values()):
        each = ", ".join(f"{n} on version {v}" for v, n in sorted(older.items()) if n)
        click.echo(
            f"rung deploy: {sum(older.values())} run(s) in flight on older versions ({each}); "
            "they finish there (rung versions list)"
        )
    else:
        click.echo("rung deploy: no run is in flight on an older version")
