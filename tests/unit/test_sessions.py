"""Which region and credentials rung's AWS clients use (rung._aws.sessions)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from rung._aws import sessions

CONFIG = """
[profile eu]
region = eu-west-1
aws_access_key_id = AKIAEXAMPLEEU
aws_secret_access_key = secret

[profile plain]
aws_access_key_id = AKIAEXAMPLEPLAIN
aws_secret_access_key = secret
"""


@pytest.fixture
def aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text(CONFIG)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sessions, "_sessions", {})
    monkeypatch.setattr(sessions, "_profile_regions", {})
    monkeypatch.setattr(sessions, "_profile", None)


def region_and_key(client: object) -> tuple[str, str]:
    meta = client.meta  # type: ignore[attr-defined]
    key = client._request_signer._credentials.access_key  # type: ignore[attr-defined]
    return meta.region_name, key


def test_a_profiles_region_and_credentials_are_used(
    aws_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "eu")
    assert region_and_key(sessions.client("dynamodb")) == ("eu-west-1", "AKIAEXAMPLEEU")
    # An explicit region, or the environment's, still wins over the profile's.
    assert sessions.client("sqs", region="us-west-2").meta.region_name == "us-west-2"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert sessions.client("sqs").meta.region_name == "ap-south-1"


def test_a_profile_without_a_region_gets_the_default(
    aws_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "plain")
    assert region_and_key(sessions.client("dynamodb")) == ("us-east-1", "AKIAEXAMPLEPLAIN")


def test_a_session_of_your_own_makes_the_clients(aws_config: None) -> None:
    mine = boto3.session.Session(
        aws_access_key_id="AKIAMINE", aws_secret_access_key="s", region_name="eu-central-1"
    )
    assert region_and_key(sessions.client("dynamodb", session=mine)) == (
        "eu-central-1",
        "AKIAMINE",
    )
    with pytest.raises(TypeError, match="session must be a boto3.Session, got str"):
        sessions.client("dynamodb", session="default")


def test_a_profile_chosen_by_rung_wins_over_the_environments_keys(
    aws_config: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `aws --profile`: the profile's credentials, not AWS_ACCESS_KEY_ID's.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert region_and_key(sessions.client("dynamodb")) == ("us-east-1", "AKIAFROMENV")
    sessions.use_profile("eu")
    assert region_and_key(sessions.client("dynamodb")) == ("eu-west-1", "AKIAEXAMPLEEU")
