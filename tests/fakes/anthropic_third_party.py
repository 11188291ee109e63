"""A third party that speaks the Anthropic Messages API with its own keys (as DeepSeek, Kimi, GLM, MiniMax do).

It answers like `FakeAnthropic` (same scenarios), but only to its own key (`x-api-key` or `Authorization:
Bearer`): anything else gets 401 `authentication_error`, and an Anthropic key gets 401 too. Like some of
them, it refuses requests that carry an `anthropic-beta` header it does not know (400).
"""

from __future__ import annotations

from aiohttp import web

from .anthropic_upstream import Exchange, FakeAnthropic, _error

THIRD_PARTY_KEY = "tp-" + "thirdPartyKey" + "0123456789abcdef" * 2


class FakeAnthropicThirdParty(FakeAnthropic):
    name = "fake Anthropic-compatible third party"

    def __init__(self, host: str = "127.0.0.1", key: str = THIRD_PARTY_KEY) -> None:
        super().__init__(host)
        self.key = key

    def _scenario(self, request: web.Request, ex: Exchange) -> str:
        bearer = (ex.header("authorization") or "").removeprefix("Bearer ")
        if ex.header("x-api-key") not in (None, self.key) or (ex.header("x-api-key") is None and bearer != self.key):
            return "unauthorized"
        if ex.header("anthropic-beta"):
            return "unknown_beta"
        return super()._scenario(request, ex)

    async def _scenario_unauthorized(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        return self._json(ex, 401, _error("authentication_error", "invalid x-api-key"))

    async def _scenario_unknown_beta(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        return self._json(ex, 400, _error("invalid_request_error", f"unsupported beta: {ex.header('anthropic-beta')}"))
