"""A run's trace context in X-Ray's format: ids and the trace header.

A run has one trace from its trigger to its end. The trigger picks it (continuing the
caller's X-Ray trace when there is one) and it is kept on the run item as a header:

    Root=1-5f84c7a1-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1;Caller=...

``Root`` is the trace id (``1-<8 hex: epoch seconds>-<24 hex random>``), ``Parent`` the
id of the run's own segment (the parent of every attempt's segment), ``Sampled``
whether the run's segments are recorded, and ``Caller`` (optional) the segment of the
code that triggered the run, the run segment's own parent. Messages of the run carry
``Root``, ``Parent`` and ``Sampled`` as SQS's ``AWSTraceHeader`` system attribute.
"""

from __future__ import annotations

import math
import os
import random
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from rung.errors import InvalidConfig

#: The environment variable Lambda sets to the invocation's trace header.
LAMBDA_TRACE_ENV = "_X_AMZN_TRACE_ID"
#: The share of new runs whose trace is recorded (0 to 1; default 1: every run).
SAMPLE_RATE_ENV = "RUNG_TRACE_SAMPLE_RATE"

_TRACE_ID = re.compile(r"^1-[0-9a-f]{8}-[0-9a-f]{24}$")
_SEGMENT_ID = re.compile(r"^[0-9a-f]{16}$")


def segment_id() -> str:
    """A new X-Ray segment id: 16 hex digits."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    #: the run's own segment: the parent of its attempts' segments
    run_segment: str
    sampled: bool
    #: the segment of the code that triggered the run, if it was traced
    caller: str | None = None

    @classmethod
    def new(
        cls, now: datetime, caller_header: str | None = None, sampled: bool | None = None
    ) -> TraceContext:
        """The trace of a new run: the caller's trace when ``caller_header`` names one
        (an X-Ray header, as Lambda sets in ``_X_AMZN_TRACE_ID``), else a new trace.
        ``sampled``: the decision to keep (a child takes its parent's); None draws it
        from ``RUNG_TRACE_SAMPLE_RATE``."""
        keep = _sample() if sampled is None else sampled
        caller = _parse(caller_header) if caller_header else {}
        root = caller.get("Root", "")
        if _TRACE_ID.match(root):
            parent = caller.get("Parent", "")
            return cls(root, segment_id(), keep, parent if _SEGMENT_ID.match(parent) else None)
        trace_id = f"1-{int(now.timestamp()):08x}-{secrets.token_hex(12)}"
        return cls(trace_id, segment_id(), keep)

    @classmethod
    def for_trigger(cls, now: datetime) -> TraceContext:
        """The trace of a run triggered by ``Client.trigger`` in this process: it
        continues the Lambda invocation's trace when called from a traced function."""
        return cls.new(now, os.environ.get(LAMBDA_TRACE_ENV))

    @classmethod
    def parse(cls, stored: str | None) -> TraceContext | None:
        """The context kept on a run item (None for a run stored without one)."""
        fields = _parse(stored) if stored else {}
        root, parent = fields.get("Root", ""), fields.get("Parent", "")
        if not _TRACE_ID.match(root) or not _SEGMENT_ID.match(parent):
            return None
        return cls(root, parent, fields.get("Sampled") == "1", fields.get("Caller") or None)

    def stored(self) -> str:
        """The form kept on the run item."""
        caller = f";Caller={self.caller}" if self.caller else ""
        return f"{self.header()}{caller}"

    def header(self) -> str:
        """The X-Ray trace header its messages carry (``AWSTraceHeader``)."""
        return f"Root={self.trace_id};Parent={self.run_segment};Sampled={int(self.sampled)}"


def _parse(header: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            fields[key] = value
    return fields


def _sample() -> bool:
    raw = os.environ.get(SAMPLE_RATE_ENV, "1")
    try:
        rate = float(raw)
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= 1:
        raise InvalidConfig(
            f"{SAMPLE_RATE_ENV} must be a number from 0 to 1 (the share of runs traced), "
            f"got {raw!r}"
        )
    return rate >= 1 or random.random() < rate  # noqa: S311 (sampling, not security)


def header_of(stored: str | None) -> str | None:
    """The message header (``AWSTraceHeader``) for a run's stored trace context."""
    context = TraceContext.parse(stored)
    return context.header() if context is not None else None
