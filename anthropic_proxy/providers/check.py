"""The config page's "test" button: one real, tiny call to a provider (max_tokens 1), with its own key."""

from __future__ import annotations

import time
from typing import Any

import httpx

from anthropic_proxy.providers.entries import Provider
from anthropic_proxy.record.masking import mask_text

TEST_PROMPT = [{"role": "user", "content": "Reply with the word ok."}]


async def try_provider(provider: Provider, model: str, key: str) -> dict[str, Any]:
    """{"ok", "status", "message", "durationMs"}: whether `provider` answers `model` with its key."""
    if provider.api_key_env and not key:
        return {"ok": False, "status": None, "durationMs": None,
                "message": f"{provider.api_key_env} is not set: put it in the environment or .env, then reload"}
    headers = dict(provider.headers)
    if provider.type == "anthropic":
        url = f"{provider.base_url}/v1/messages"
        headers["anthropic-version"] = "2023-06-01"
        if key:
            headers["x-api-key"] = key
            headers["authorization"] = f"Bearer {key}"
    else:
        url = f"{provider.base_url}/chat/completions"
        if key:
            headers["authorization"] = f"Bearer {key}"
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=provider.timeout or 30, trust_env=False) as client:
            response = await client.post(url, headers=headers,
                                         json={"model": model, "max_tokens": 1, "messages": TEST_PROMPT})
    except httpx.HTTPError as exc:
        return {"ok": False, "status": None, "durationMs": _ms(started),
                "message": f"{provider.name} could not be reached at {url}: "
                           f"{mask_text(str(exc)) or type(exc).__name__}"}
    ok = 200 <= response.status_code < 300
    if ok:
        message = f"{provider.name} answered {model} (HTTP {response.status_code})"
    else:
        message = f"{provider.name} refused (HTTP {response.status_code}): {mask_text(_reason(response))}"
    return {"ok": ok, "status": response.status_code, "durationMs": _ms(started), "message": message}


def _reason(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error.get("message") if isinstance(error, dict) else error)[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:300]


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
