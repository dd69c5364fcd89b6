"""The worker function's published versions (Lambda's API): what ``rung versions``
lists and prunes, and the asynchronous invoke that hands a run's message to its own
version (docs/versioning.md). The only code that builds Lambda requests.

template.yaml publishes a version on every deploy (``AutoPublishAlias: live``); the
alias ``live`` names the latest, which the queue invokes. Lambda keeps every version
until it is deleted.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from rung.errors import RungError

#: The alias the queue's event source invokes (template.yaml's AutoPublishAlias).
ALIAS = "live"


class FunctionNotFound(RungError):
    """The worker function (or the version asked for) does not exist."""


class FunctionVersions:
    """The published versions of one function."""

    def __init__(self, client: Any, function_name: str) -> None:
        self._client = client
        self.function_name = function_name

    def published(self) -> list[tuple[str, datetime | None]]:
        """Its published versions, oldest first, with when each was published."""
        found: list[tuple[str, datetime | None]] = []
        try:
            self._client.get_function(FunctionName=self.function_name)  # it exists at all
            pages = self._client.get_paginator("list_versions_by_function").paginate(
                FunctionName=self.function_name
            )
            for page in pages:
                for version in page.get("Versions", []):
                    if version["Version"] != "$LATEST":
                        found.append((version["Version"], _when(version.get("LastModified"))))
        except ClientError as exc:
            raise self._not_found(exc) from exc
        return sorted(found, key=lambda v: int(v[0]))

    def latest(self) -> str | None:
        """The version the alias ``live`` points at (new runs start there), else the
        newest published one; None when none is."""
        try:
            alias = self._client.get_alias(FunctionName=self.function_name, Name=ALIAS)
            return str(alias["FunctionVersion"])
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
        published = self.published()
        return published[-1][0] if published else None

    def delete(self, version: str) -> None:
        """Delete one published version (never ``$LATEST`` or the alias's)."""
        if not version.isdigit():
            raise ValueError(f"not a published version: {version!r}")
        self._client.delete_function(FunctionName=self.function_name, Qualifier=version)

    def _not_found(self, exc: ClientError) -> Exception:
        if _code(exc) == "ResourceNotFoundException":
            return FunctionNotFound(
                f"no Lambda function {self.function_name!r} here: is the stack deployed "
                "with its functions (sam deploy), or rung dev running for it? (LocalStack's "
                "data-plane stacks have no functions.) --function NAME names another"
            )
        return exc


def invoke_event(client: Any, function_name: str, version: str, event: dict[str, Any]) -> bool:
    """Invoke one published version of a function asynchronously with ``event``. False:
    that version does not exist. Raises when Lambda did not accept the invocation."""
    target = f"{function_name}:{version}"
    try:
        out = client.invoke(
            FunctionName=target, InvocationType="Event", Payload=json.dumps(event).encode()
        )
    except ClientError as exc:
        if _code(exc) == "ResourceNotFoundException":
            return False
        raise
    if out.get("StatusCode") != 202:
        raise RungError(f"Lambda did not accept the invocation of {target}: {out}")
    return True


def recent(published: datetime | None, now: datetime, within: timedelta) -> bool:
    """Whether a version was published less than ``within`` before ``now``."""
    return published is not None and now - published < within


def _when(text: str | None) -> datetime | None:
    """Lambda's LastModified ("2026-12-06T05:22:47.717+0000"), or None."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
