"""Routes, fallbacks, cool-downs and the provider entries' validation (pure: no proxy)."""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from anthropic_proxy.providers.entries import Target
from anthropic_proxy.providers.failover import CoolDowns, attempt_error, retry_after_seconds
from anthropic_proxy.providers.proxy_config import ConfigError, ConfigStore, ProxyConfig
from anthropic_proxy.providers.route import ClientRequest, Route
from anthropic_proxy.providers.targets import CallFacts, Dispatch, match_route, openai_dialect, select_targets

PROVIDERS = {"local": {"type": "openai", "baseUrl": "http://127.0.0.1:11434/v1"},
             "tp": {"type": "anthropic", "baseUrl": "https://tp.example/anthropic", "apiKeyEnv": "TP_KEY"}}


def config(**routing) -> ProxyConfig:
    return ProxyConfig.model_validate({"providers": PROVIDERS, **routing})


def facts(body: dict | None = None, headers: list[tuple[str, str]] | None = None) -> CallFacts:
    return CallFacts({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], **(body or {})},
                     headers or [])


@pytest.mark.parametrize("when,call,expected", [
    ({"model": "claude-haiku-*"}, facts({"model": "claude-haiku-4-5"}), True),
    ({"model": "claude-haiku-*"}, facts(), False),
    ({"family": "sonnet"}, facts(), True),
    ({"family": "opus"}, facts(), False),
    ({"thinking": True}, facts({"thinking": {"type": "enabled", "budget_tokens": 1024}}), True),
    ({"thinking": True}, facts({"thinking": {"type": "disabled"}}), False),
    ({"images": True}, facts({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}), True),
    ({"images": True}, facts(), False),
    ({"tool": "web_search*"}, facts({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}), True),
    ({"tool": "Bash"}, facts({"tools": [{"name": "Read", "input_schema": {}}]}), False),
    ({"header": {"name": "X-Purpose", "value": "bg*"}}, facts(headers=[("x-purpose", "bg-title")]), True),
    ({"header": {"name": "x-purpose"}}, facts(), False),
    ({"minInputTokens": 1000}, facts({"messages": [{"role": "user", "content": "w " * 3000}]}), True),
    ({"minInputTokens": 1000}, facts(), False),
    ({"family": "sonnet", "thinking": True}, facts(), False),  # every condition must hold
    ({}, facts(), True),
])
def test_when(when, call, expected):
    found = match_route(config(routes=[{"when": when, "provider": "local"}]).routes, call)
    assert (found is not None) is expected


def test_the_first_matching_route_wins_and_fallbacks_follow_in_order():
    cfg = config(routes=[{"when": {"family": "opus"}, "provider": "tp"},
                         {"when": {"family": "sonnet"}, "provider": "local", "model": "qwen3"},
                         {"when": {}, "provider": "tp"}],
                 fallbacks={"local:qwen3": ["tp:big", "openrouter"], "local": ["anthropic"]})
    dispatch = Dispatch(cfg, "https://api.anthropic.com", "https://openrouter.ai/api/v1", lambda name: "")
    selection = select_targets(cfg, facts(), resolve_model=lambda t: dispatch.model_for(t, "claude-sonnet-4-5"))
    assert selection.match == {"index": 1, "when": {"family": "sonnet"}}
    # provider:model key wins over the provider's; openrouter's model comes from the family mapping
    assert selection.targets == [Target("local", "qwen3"), Target("tp", "big"),
                                 Target("openrouter", "anthropic/claude-sonnet-4.5")]
    cooling = {Target("local", "qwen3")}
    selection = select_targets(cfg, facts(), cooling=lambda t: t in cooling,
                               resolve_model=lambda t: dispatch.model_for(t, "claude-sonnet-4-5"))
    assert selection.targets[0] == Target("tp", "big")
    cooling = set(selection.targets) | {Target("local", "qwen3")}  # all cooling: try them anyway
    selection = select_targets(cfg, facts(), cooling=lambda t: t in cooling,
                               resolve_model=lambda t: dispatch.model_for(t, "claude-sonnet-4-5"))
    assert len(selection.targets) == 3


def test_no_route_means_the_modes_provider():
    cfg = config(mode="openrouter")
    dispatch = Dispatch(cfg, "https://api.anthropic.com", "https://openrouter.ai/api/v1", lambda name: "")
    selection = select_targets(cfg, facts(), resolve_model=lambda t: dispatch.model_for(t, "claude-haiku-4-5"))
    assert selection.match is None and selection.targets == [Target("openrouter", "anthropic/claude-haiku-4.5")]


def test_a_third_party_gets_its_key_and_no_client_credentials():
    cfg = config()
    dispatch = Dispatch(cfg, "https://api.anthropic.com", "https://openrouter.ai/api/v1",
                        lambda name: "tp-secret" if name == "TP_KEY" else "")
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    client = ClientRequest("POST", "/v1/messages?beta=true", [
        ("Host", "127.0.0.1:8082"), ("x-api-key", "sk-ant-client"), ("Authorization", "Bearer sk-ant-client"),
        ("anthropic-beta", "x"), ("anthropic-version", "2023-06-01"), ("content-length", "9"),
    ], json.dumps(body).encode())
    route = Route(client=client)
    call = dispatch.prepare(route, Target("tp", "deepseek-chat"), body)
    assert call.url == "https://tp.example/anthropic/v1/messages?beta=true"
    names = [k.lower() for k, _ in call.headers]
    assert "sk-ant-client" not in json.dumps(call.headers) and "anthropic-beta" not in names and "host" not in names
    assert ("x-api-key", "tp-secret") in call.headers and ("anthropic-version", "2023-06-01") in call.headers
    assert json.loads(call.content)["model"] == "deepseek-chat"
    assert route.provider == "tp" and route.upstream_model == "deepseek-chat" and route.translated is None


def test_openai_dialect_for_servers_other_than_openrouter():
    body = {"model": "m", "stream": True, "usage": {"include": True}, "reasoning": {"max_tokens": 20000}}
    openai_dialect(body)
    assert body == {"model": "m", "stream": True, "stream_options": {"include_usage": True},
                    "reasoning_effort": "high"}


@pytest.mark.parametrize("patch,says", [
    ({"providers": {"x": {"type": "openai", "baseUrl": "http://h", "apiKeyEnv": "sk-proj-abcDEF123"}}}, "NAME"),
    ({"providers": {"x": {"type": "openai", "baseUrl": "http://h", "apiKeyEnv": "AIzaSyD0123456789abcdefGHIJK"}}},
     "NAME"),
    ({"providers": {"x": {"type": "openai", "baseUrl": "ftp://h"}}}, "baseUrl"),
    ({"providers": {"x": {"type": "openai", "baseUrl": "http://h", "headers": {"Authorization": "k"}}}},
     "apiKeyEnv"),
    ({"providers": {"openrouter": {"type": "openai", "baseUrl": "http://h"}}}, "built in"),
    ({"routes": [{"when": {"tool": "web_[search"}, "provider": "anthropic"}]}, "bad glob"),
    ({"routes": [{"when": {"family": "gpt"}, "provider": "anthropic"}]}, "family"),
    ({"routes": [{"provider": "nowhere"}]}, "unknown provider"),
    ({"fallbacks": {"anthropic": []}}, "at least one"),
    ({"fallbacks": {"anthropic": ["openrouter:has space"]}}, "model id"),
])
def test_invalid_updates_are_refused_and_nothing_is_saved(tmp_path, patch, says):
    store = ConfigStore(tmp_path)
    with pytest.raises(ConfigError) as caught:
        store.update(patch)
    assert says in str(caught.value)
    assert "abcDEF123" not in str(caught.value) and "0123456789abcdef" not in str(caught.value)
    assert not (tmp_path / "config.json").exists() and store.current == ProxyConfig()


def test_an_existing_config_file_keeps_working(tmp_path):
    old = {"mode": "openrouter", "models": {"sonnet": "x/s", "opus": "x/o", "haiku": "x/h", "default": "x/d"},
           "headers": {"X-Title": "mine"}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    store = ConfigStore(tmp_path)
    assert store.current.mode == "openrouter" and store.current.models.haiku == "x/h"
    assert store.current.routes == [] and store.current.providers == {} and store.current.fallbacks == {}
    store.update({"models": {"haiku": "x/h2"}})
    saved = json.loads((tmp_path / "config.json").read_text())
    # written as before (no empty providers, routes, fallbacks), with the version that says its families are chosen
    assert saved == {"version": 2, **old, "models": {**old["models"], "haiku": "x/h2"}}
    store.update({"routes": [{"when": {"family": "haiku"}, "provider": "anthropic"}]})
    assert ConfigStore(tmp_path).current.routes[0].when.family == "haiku"


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"Retry-After-Ms": "1500", "retry-after": "9"}) == 1.5
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 < retry_after_seconds({"retry-after": later}) <= 60
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_cool_downs_end_by_themselves():
    cooldowns = CoolDowns()
    target = Target("anthropic", "claude-sonnet-4-5")
    cooldowns.start(target, 529, 0.05)
    assert cooldowns.cooling(target) and cooldowns.view()[0]["target"] == "anthropic:claude-sonnet-4-5"
    time.sleep(0.06)
    assert not cooldowns.cooling(target) and cooldowns.view() == []


def test_a_failed_attempts_error_body_is_read_even_compressed():
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()
    assert attempt_error(529, gzip.compress(body), "gzip") == f"HTTP 529: {body.decode()}"
    assert attempt_error(529, body, "") == f"HTTP 529: {body.decode()}"
    assert attempt_error(503, b"", "") == "HTTP 503"
