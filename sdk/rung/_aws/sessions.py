"""boto3 sessions and clients: one place that knows how rung reaches AWS.

The same code talks to AWS, LocalStack or the embedded emulator; only the
endpoint differs (``endpoint_url`` or ``AWS_ENDPOINT_URL``).

Sessions are cached per region and AWS profile (and per "dummy credentials for an
emulator"):
each new session loads botocore's service models again, which costs about a
second. boto3 sessions are not thread-safe, so clients are created under a lock;
the clients themselves are safe to share between threads.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"
_RETRIES = Config(
    retries={"max_attempts": 5, "mode": "standard"},
    connect_timeout=5,
    read_timeout=30,
    tcp_keepalive=True,
    # Branches of ctx.map write checkpoints from up to 32 threads (by default) at once.
    max_pool_connections=64,
)
#: For what a run reports on the side (trace segments, events): one retry, short
#: timeouts, so that an unreachable service costs an invocation seconds, not minutes.
_REPORTING = Config(
    retries={"max_attempts": 2, "mode": "standard"},
    connect_timeout=2,
    read_timeout=3,
)
_PATH_STYLE = Config(s3={"addressing_style": "path"})
_lock = threading.Lock()
_sessions: dict[tuple[str, bool, str], boto3.session.Session] = {}  # region, dummy, profile


def session(endpoint_url: str | None = None, region: str | None = None) -> boto3.session.Session:
    """A boto3 session; against an emulator it supplies dummy credentials if none are set."""
    with _lock:
        return _session(bool(endpoint_url), _region(region))


def use_profile(profile: str | None) -> None:
    """Make every session of this process use the named AWS profile (``rung
    --profile``): its credentials win over the environment's, as with ``aws
    --profile``, and its region is the default one."""
    global _profile
    with _lock:
        _profile = profile or None


def _profile_name() -> str | None:
    return _profile or os.environ.get("AWS_PROFILE") or None


def _region(region: str | None) -> str:
    """``region``, else the environment's (``AWS_REGION``, ``AWS_DEFAULT_REGION``), else
    the AWS profile's (``--profile``, or ``AWS_PROFILE``, its ``region`` in the AWS
    config), else us-east-1."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    key = (_profile_name() or "", os.environ.get("AWS_CONFIG_FILE") or "")
    if key not in _profile_regions:
        # A session reads the config files (and the profile) as the AWS CLI does.
        found = boto3.session.Session(profile_name=_profile).region_name
        _profile_regions[key] = found or DEFAULT_REGION
    return _profile_regions[key]


_profile: str | None = None
_profile_regions: dict[tuple[str, str], str] = {}


def _session(emulated: bool, region: str) -> boto3.session.Session:
    profile = _profile_name() or ""
    plain = _sessions.get((region, False, profile))
    if plain is None:
        plain = _sessions[(region, False, profile)] = boto3.session.Session(
            region_name=region, profile_name=_profile
        )
    if not emulated or plain.get_credentials() is not None:
        return plain
    dummy = _sessions.get((region, True, ""))
    if dummy is None:
        dummy = _sessions[(region, True, "")] = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name=region
        )
    return dummy


def client(
    service: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    reporting: bool = False,
    session: Any = None,
) -> Any:
    """A client of ``service``. ``reporting``: for telemetry sent beside a run (X-Ray,
    EventBridge): one retry and short timeouts instead of the engine's patient ones.
    ``session``: a ``boto3.Session`` of the caller's (its credentials, profile and
    region; ``region`` still wins) instead of rung's own."""
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    config = _REPORTING if reporting else _RETRIES
    if service == "s3" and endpoint_url:  # an emulator answers at one host: no bucket DNS
        config = config.merge(_PATH_STYLE)
    with _lock:  # (sessions are not thread-safe; their clients are)
        if session is not None:
            if not isinstance(session, boto3.session.Session):
                raise TypeError(f"session must be a boto3.Session, got {type(session).__name__}")
            return session.client(  # type: ignore[call-overload]
                service,
                endpoint_url=endpoint_url,
                region_name=region or session.region_name or DEFAULT_REGION,
                config=config,
            )
        return _session(bool(endpoint_url), _region(region)).client(  # type: ignore[call-overload]
            service, endpoint_url=endpoint_url, config=config
        )
