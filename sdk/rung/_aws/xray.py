"""X-Ray: the only module that sends or reads trace segments.

rung writes X-Ray segment documents itself (``rung._engine.tracing`` builds them) rather
than through the X-Ray SDK or Powertools Tracer: on Lambda those record under the
invocation's own trace (a new one for each SQS batch), while a run's attempts, days
apart, must land in the run's one trace. Documents go:

- to the X-Ray daemon over UDP when ``AWS_XRAY_DAEMON_ADDRESS`` is set (Lambda sets it
  when the function has ``Tracing: Active``): no request in the invocation's path;
- else to the ``PutTraceSegments`` API of the endpoint in use (the embedded emulator in
  ``rung dev`` and ``LocalEngine``, or AWS).

Sending never fails a run: an error is logged and the segments are dropped.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("rung.tracing")

#: Set by Lambda (``Tracing: Active``): ``host:port`` of the X-Ray daemon.
DAEMON_ENV = "AWS_XRAY_DAEMON_ADDRESS"
#: ``off`` turns rung's tracing off (template.yaml's ``Tracing`` parameter sets it).
TRACING_ENV = "RUNG_TRACING"
#: X-Ray's limit for one segment document (and the daemon's UDP datagram).
MAX_DOCUMENT_BYTES = 64_000
_DAEMON_HEADER = b'{"format": "json", "version": 1}\n'
#: PutTraceSegments takes a list of documents; a few per call keeps requests small.
_PER_CALL = 25


def tracing_enabled() -> bool:
    return os.environ.get(TRACING_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


class XRay:
    """Sends segment documents (see the module docstring) and reads traces back.

    ``client``: a boto3 X-Ray client, used when no daemon address is set and for reads.
    """

    def __init__(self, client: Any, daemon_address: str | None = None) -> None:
        self.client = client
        self.daemon = _address(daemon_address) if daemon_address else None
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, make_client: Callable[[], Any]) -> XRay | None:
        """The sink this process should use: None when ``RUNG_TRACING=off``. The
        client is made only when there is no daemon to send to: on Lambda, a cold start
        builds no X-Ray client it would never use."""
        if not tracing_enabled():
            return None
        daemon = os.environ.get(DAEMON_ENV) or None
        return cls(None if daemon else make_client(), daemon)

    def put(self, documents: Iterable[dict[str, Any]]) -> None:
        """Send segment documents; never raises (tracing must not fail a run)."""
        encoded = [json.dumps(d, separators=(",", ":")) for d in documents]
        if not encoded:
            return
        try:
            if self.daemon is not None:
                self._to_daemon(encoded)
            else:
                self._to_api(encoded)
        except Exception as exc:
            log.warning("could not send %d trace segments: %s", len(encoded), exc)

    def _to_daemon(self, encoded: list[str]) -> None:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        assert self.daemon is not None
        for document in encoded:
            self._socket.sendto(_DAEMON_HEADER + document.encode(), self.daemon)

    def _to_api(self, encoded: list[str]) -> None:
        for start in range(0, len(encoded), _PER_CALL):
            out = self.client.put_trace_segments(
                TraceSegmentDocuments=encoded[start : start + _PER_CALL]
            )
            for unprocessed in out.get("UnprocessedTraceSegments", []):
                log.warning("X-Ray refused a trace segment: %s", unprocessed)

    def segments(self, trace_id: str) -> list[dict[str, Any]]:
        """The segment documents of one trace, as X-Ray returns them (BatchGetTraces)."""
        out = self.client.batch_get_traces(TraceIds=[trace_id])
        return [
            json.loads(segment["Document"])
            for trace in out.get("Traces", [])
            for segment in trace.get("Segments", [])
        ]


def _address(raw: str) -> tuple[str, int]:
    # Lambda's form is "169.254.79.129:2000"; the daemon's own docs also allow
    # "tcp:host:port udp:host:port", of which the UDP one is what segments use.
    for part in raw.split():
        if part.startswith("tcp:"):
            continue
        host, _, port = part.removeprefix("udp:").rpartition(":")
        return host, int(port)
    raise ValueError(f"{DAEMON_ENV} has no UDP address: {raw!r}")
