"""Tasks for the HTTP API tests on `rung dev` (tests/integration/test_dev_http.py)."""

from __future__ import annotations

from typing import Any

import pydantic

import rung

app = rung.App("httptest")


class Order(pydantic.BaseModel):
    order_id: str
    total: int = 0


@app.task(id="order")
def order(ctx: rung.Context, payload: Order) -> str:
    return f"order {payload.order_id} of {payload.total}"


@app.task(id="anything")
def anything(ctx: rung.Context, payload: Any) -> Any:
    return payload


@app.task(id="webhook", retry=rung.RetryPolicy(max_attempts=1))
def webhook(ctx: rung.Context, payload: dict[str, float]) -> dict[str, Any]:
    """Waits for a token, showing its id and URL in the run's metadata; returns the
    answer and the URL as read again after the wait (a replay of the body)."""
    token = ctx.create_token(
        "hook",
        timeout=payload.get("timeout", 300),
        heartbeat_timeout=payload.get("heartbeat"),
    )
    ctx.metadata.update(token_id=token.id, token_url=token.url)
    answer = ctx.wait_for_token(token)
    return {"answer": answer, "url_again": token.url}
