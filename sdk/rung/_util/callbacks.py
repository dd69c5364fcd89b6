"""Token callback URLs (``Token.url``): how one is made and how its secret is checked.

A token's URL carries a secret of its own: 256 random bits drawn when the token is
created. The token's checkpoint (the run's record of ``create_token``, read again on
every replay) keeps the secret, so ``token.url`` is the same on every attempt; the
token item keeps only its SHA-256, so whoever can read token items (the callback
function) cannot make a URL. The URL expires with the token: the callback refuses a
token past its deadline, and completes one only while it is open (a conditional
write), so a URL works once. Why this and not an HMAC under a stack key:
docs/http.md, "Token callback URLs".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

#: The path of a token's URL below the callback base: ``<base>/tokens/<id>/<secret>``.
URL_PATH = "/tokens/{token_id}/{secret}"


def new_secret() -> str:
    """A fresh URL secret: 256 random bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """What the token item stores of its URL's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Whether ``secret`` is the one whose hash the token stores (constant time)."""
    if not stored_hash or not secret or len(secret) > 128:
        return False
    return hmac.compare_digest(secret_hash(secret), stored_hash)


def token_url(base: str | None, token_id: str, secret: str | None) -> str | None:
    """The token's callback URL below ``base`` (the callback function's URL), or None
    without a base or a secret (a token created before URLs existed)."""
    if not base or not secret:
        return None
    return base.rstrip("/") + URL_PATH.format(token_id=token_id, secret=secret)


def without_secret(checkpoint_json: str | None) -> str | None:
    """A token checkpoint's JSON with its URL secret left out, for what is shown or
    sent elsewhere (traces): only the run's own replay reads the secret."""
    if checkpoint_json is None:
        return None
    data = json.loads(checkpoint_json)
    if isinstance(data, dict) and "url_secret" in data:
        data = {k: v for k, v in data.items() if k != "url_secret"}
        return json.dumps(data)
    return checkpoint_json
