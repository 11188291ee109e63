"""OpenRouter's own endpoints the web app uses: the model list (cached) and the key check."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.translate.models import FAMILIES

logger = logging.getLogger("anthropic_proxy.openrouter")

MODELS_CACHE_FILE = "openrouter-models.json"
CACHE_SECONDS = 3600
RETRY_SECONDS = 60


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


def _claude_family_version(model_id: str) -> tuple[str, tuple[int, ...]] | None:
    """("opus", (4, 8)) for "anthropic/claude-opus-4.8" (and the older "anthropic/claude-3.5-sonnet" naming); None
    for other vendors' models and for variants such as ":thinking". A date ("-20240620") is not part of a version."""
    vendor, _, name = model_id.partition("/")
    if vendor != "anthropic" or ":" in name:
        return None
    parts = re.split(r"[-.]", name)
    family = next((part for part in parts if part in FAMILIES), None)
    if family is None:
        return None
    return family, tuple(int(part) for part in parts if part.isdigit() and len(part) <= 3)


def newest_by_family(model_ids: Iterable[str]) -> dict[str, str]:
    """The newest Claude model of each family among OpenRouter's ids (the highest version; of equal versions, the
    shortest id, i.e. the undated alias), and as "default" (every other model name) the newest sonnet."""
    best: dict[str, tuple[tuple[tuple[int, ...], int], str]] = {}
    for model_id in model_ids:
        if (parsed := _claude_family_version(model_id)) is None:
            continue
        family, version = parsed
        rank = (version, -len(model_id))
        if family not in best or rank > best[family][0]:
            best[family] = (rank, model_id)
    newest = {family: model_id for family, (_, model_id) in best.items()}
    if "sonnet" in newest:
        newest["default"] = newest["sonnet"]
    return newest


class ModelCatalog:
    """OpenRouter's model list: fetched at most hourly, kept on disk, served stale when OpenRouter is down.
    `newest` is the newest Claude model of each family in it: what an unpinned family maps to."""

    def __init__(self, state_dir: Path) -> None:
        self._file = state_dir / MODELS_CACHE_FILE
        self._lock = asyncio.Lock()
        self._models: list[dict[str, Any]] = []
        self._fetched_at: float | None = None
        self._attempted_at = 0.0  # of the last background refresh (`refresh_soon`)
        self._refresh: asyncio.Task[Any] | None = None
        self.newest: dict[str, str] = {}
        if self._file.is_file():
            try:
                cached = json.loads(self._file.read_text(encoding="utf-8"))
                self._set(cached["data"], cached["fetchedAt"])
            except (ValueError, KeyError, TypeError, OSError):
                logger.warning("ignoring unreadable model cache %s", self._file)

    def _set(self, models: list[dict[str, Any]], fetched_at: float) -> None:
        self.newest = newest_by_family(str(m["id"]) for m in models)
        self._models, self._fetched_at = models, fetched_at

    def refresh_soon(self, base_url: str) -> None:
        """Fetch the list in the background when the copy is older than CACHE_SECONDS (after a failed attempt, not
        again for RETRY_SECONDS), so that the family defaults follow what OpenRouter lists. Never waits."""
        now = time.time()
        if (self._refresh is not None and not self._refresh.done()) or now - self._attempted_at < RETRY_SECONDS:
            return
        if self._fetched_at is not None and now - self._fetched_at < CACHE_SECONDS:
            return
        self._attempted_at = now
        self._refresh = asyncio.get_running_loop().create_task(self.models(base_url))

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
        self._set(sorted(models, key=lambda m: m["id"]), time.time())
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
