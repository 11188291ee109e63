"""OpenRouter's own endpoints the web app uses: the model list (cached) and the key check."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from .masking import mask_text

logger = logging.getLogger("anthropic_proxy.openrouter")

MODELS_CACHE_FILE = "openrouter-models.json"
CACHE_SECONDS = 3600


def _price(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _model_entry(model: dict[str, Any]) -> dict[str, Any]:
    pricing = model.get("pricing") or {}
    return {
        "id": model.get("id"),
        "name": model.get("name") or model.get("id"),
        "contextLength": model.get("context_length"),
        # OpenRouter quotes USD per token; people read prices per million tokens.
        "pricing": {"prompt": _price(pricing.get("prompt")), "completion": _price(pricing.get("completion")),
                    "cacheRead": _price(pricing.get("input_cache_read")),
                    "cacheWrite": _price(pricing.get("input_cache_write"))},
    }


class ModelCatalog:
    """OpenRouter's model list: fetched at most hourly, kept on disk, served stale when OpenRouter is down."""

    def __init__(self, state_dir: Path) -> None:
        self._file = state_dir / MODELS_CACHE_FILE
        self._lock = asyncio.Lock()
        self._models: list[dict[str, Any]] = []
        self._fetched_at: float | None = None
        if self._file.is_file():
            try:
                cached = json.loads(self._file.read_text(encoding="utf-8"))
                self._models, self._fetched_at = cached["data"], cached["fetchedAt"]
            except (ValueError, KeyError, OSError):
                logger.warning("ignoring unreadable model cache %s", self._file)

    def price_of(self, model_id: str) -> dict[str, Any] | None:
        return next((m["pricing"] for m in self._models if m["id"] == model_id), None)

    async def models(self, base_url: str, *, refresh: bool = False) -> dict[str, Any]:
        async with self._lock:
            error = None
            fresh = self._fetched_at is not None and time.time() - self._fetched_at < CACHE_SECONDS
            if refresh or not fresh:
                try:
                    await self._fetch(base_url)
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    error = f"OpenRouter's model list could not be fetched: {mask_text(str(exc)) or type(exc).__name__}"
                    logger.warning(error)
            fetched = self._fetched_at
            return {
                "data": self._models,
                "stale": error is not None,
                "fetchedAt": datetime.fromtimestamp(fetched, UTC).isoformat() if fetched else None,
                "error": error,
            }

    async def _fetch(self, base_url: str) -> None:
        async with httpx.AsyncClient(timeout=15) as client:
            response = await client.get(f"{base_url}/models")
            response.raise_for_status()
            models = [_model_entry(m) for m in response.json()["data"] if isinstance(m, dict) and m.get("id")]
        self._models, self._fetched_at = sorted(models, key=lambda m: m["id"]), time.time()
        self._file.parent.mkdir(parents=True, exist_ok=True)
        self._file.write_text(json.dumps({"data": self._models, "fetchedAt": self._fetched_at}), encoding="utf-8")


async def check_key(base_url: str, key: str) -> dict[str, Any]:
    """Ask OpenRouter whether the key works (its /key endpoint), rather than trusting its prefix."""
    if not key:
        return {"ok": False, "message": "OPENROUTER_API_KEY is not set: put it in the environment or .env, "
                "then reload the configuration"}
    try:
        async with httpx.AsyncClient(timeout=15) as client:
            response = await client.get(f"{base_url}/key", headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        return {"ok": False, "message": f"OpenRouter could not be reached: {mask_text(str(exc)) or type(exc).__name__}"}
    if response.status_code == 200:
        data = (response.json() or {}).get("data") or {}
        label = data.get("label") or "unnamed key"
        limit = data.get("limit")
        usage = data.get("usage")
        details = f", used ${usage:.4f}" if isinstance(usage, int | float) else ""
        details += f" of ${limit:.2f}" if isinstance(limit, int | float) else ""
        return {"ok": True, "message": f"OpenRouter accepted the key ({mask_text(label)}{details})"}
    try:
        reason = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        reason = response.text[:200]
    return {"ok": False, "message": f"OpenRouter refused the key (HTTP {response.status_code}): {mask_text(reason)}"}
