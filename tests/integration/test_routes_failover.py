"""Providers, routes and failover through a real mitmdump running addons/proxy.py, driven by the real `anthropic`
SDK, in front of four fakes: Anthropic, OpenRouter, a keyless OpenAI-compatible server (a local model server) and
an Anthropic-compatible third party that accepts only its own key.

One proxy for the module (anthropic mode); its routes, providers and fallbacks are set through POST /api/config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from fakes.anthropic_third_party import THIRD_PARTY_KEY, FakeAnthropicThirdParty
from fakes.anthropic_upstream import FINAL_TEXT
from fakes.harness import FAKE_API_KEY, STREAM_BREAK_ERRORS, UNREACHABLE_PORT, by_tag
from fakes.openai_compatible import LOCAL_REASONING, LOCAL_TEXT, FakeOpenAICompatible
from fakes.openrouter_upstream import DEFAULT_KEY, FakeOpenRouter

SECRET_MIDDLE = FAKE_API_KEY[10:-4]
HI = [{"role": "user", "content": "hi"}]
FALLBACK = "openrouter:anthropic/claude-haiku-4.5"


@pytest.fixture(scope="module")
def fake_openrouter() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter() as fake:
        yield fake


@pytest.fixture(scope="module")
def local() -> Iterator[FakeOpenAICompatible]:
    with FakeOpenAICompatible() as fake:
        yield fake


@pytest.fixture(scope="module")
def third_party() -> Iterator[FakeAnthropicThirdParty]:
    with FakeAnthropicThirdParty() as fake:
        yield fake


def routing(local: FakeOpenAICompatible, third_party: FakeAnthropicThirdParty) -> dict[str, Any]:
    return {
        "providers": {
            "local": {"type": "openai", "baseUrl": local.base_url},
            "thirdparty": {"type": "anthropic", "baseUrl": third_party.url, "apiKeyEnv": "THIRD_PARTY_KEY"},
            "down": {"type": "anthropic", "baseUrl": f"http://127.0.0.1:{UNREACHABLE_PORT}"},
        },
        "routes": [
            {"when": {"header": {"name": "x-route", "value": "third*"}}, "provider": "thirdparty", "model": "tp-1"},
            {"when": {"header": {"name": "x-route", "value": "down"}}, "provider": "down"},
            {"when": {"family": "haiku"}, "provider": "local", "model": "qwen3-local"},
            {"when": {"thinking": True}, "provider": "local", "model": "reasoner"},
            {"when": {"minInputTokens": 2000}, "provider": "local", "model": "long-context"},
        ],
        "fallbacks": {"anthropic": [FALLBACK, "local:last-resort"], "down": ["local:after-down"]},
    }


@pytest.fixture(scope="module")
def proxy(proxy_factory, fake_openrouter, local, third_party):
    """Overrides conftest's `proxy`: anthropic mode, with the module's providers, routes and fallbacks."""
    p = proxy_factory(options={"openrouter_base_url": fake_openrouter.base_url},
                      env={"OPENROUTER_API_KEY": DEFAULT_KEY, "THIRD_PARTY_KEY": THIRD_PARTY_KEY})
    r = httpx.post(p.url + "/api/config", json=routing(local, third_party), trust_env=False, timeout=10)
    assert r.status_code == 200, r.text
    return p


def attempts_of(record: dict[str, Any]) -> list[tuple[str, str | None, int | None]]:
    return [(a["provider"], a["model"], a["status"]) for a in record["attempts"]]


def no_client_credentials(ex) -> None:
    assert SECRET_MIDDLE not in json.dumps(ex.raw_headers), "the client's key reached a third party"
    assert SECRET_MIDDLE.encode() not in ex.body


# ---- routes --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_haiku_goes_to_the_keyless_local_server(client, proxy, local, fake_anthropic, test_tag, stream):
    kwargs = dict(model="claude-haiku-4-5", max_tokens=50, messages=HI, metadata={"user_id": test_tag})
    if stream:
        with client.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.content[0].text == LOCAL_TEXT and message.model == "claude-haiku-4-5"
    assert message.usage.output_tokens == 7  # OpenAI usage arrived: asked with stream_options.include_usage
    ex = local.by_user(test_tag)[-1]
    body = ex.json()
    assert body["model"] == "qwen3-local" and "usage" not in body
    assert ex.header("authorization") is None  # keyless: no key of anyone's
    no_client_credentials(ex)
    assert not fake_anthropic.tagged(test_tag)
    record = proxy.wait_record(by_tag(test_tag))
    assert record["provider"] == "local" and record["upstreamModel"] == "qwen3-local"
    assert record["model"] == "claude-haiku-4-5" and record["status"] == "success"
    assert record["route"] == {"index": 2, "when": {"family": "haiku"}}
    assert attempts_of(record) == [("local", "qwen3-local", 200)]


def test_thinking_request_routed_and_reasoning_content_becomes_thinking(client, proxy, local, test_tag):
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=3000, messages=HI,
                                     thinking={"type": "enabled", "budget_tokens": 2048},
                                     metadata={"user_id": test_tag})
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == LOCAL_REASONING
    body = local.by_user(test_tag)[-1].json()
    assert body["model"] == "reasoner" and body["reasoning_effort"] == "low" and "reasoning" not in body
    record = proxy.wait_record(by_tag(test_tag))
    assert record["route"]["index"] == 3 and record["provider"] == "local"


def test_long_request_routed_by_min_input_tokens(client, proxy, local, fake_anthropic, test_tag):
    long_text = "word " * 3000  # about 4300 tokens by the local estimate
    client.messages.create(model="claude-sonnet-4-5", max_tokens=20, metadata={"user_id": test_tag},
                           messages=[{"role": "user", "content": long_text}])
    assert local.by_user(test_tag)[-1].json()["model"] == "long-context"
    client.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=HI)  # short: not routed
    assert len(fake_anthropic.tagged(test_tag)) == 1
    records = proxy.wait_records(by_tag(test_tag), count=2)
    assert [r["provider"] for r in records] == ["local", "anthropic"]
    assert records[0]["route"]["when"] == {"minInputTokens": 2000}
    assert records[1]["route"] is None and attempts_of(records[1]) == [("anthropic", "claude-sonnet-4-5", 200)]


def test_third_party_gets_its_key_never_the_clients(client, proxy, third_party, test_tag):
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=HI,
                                     extra_headers={"x-route": "third-party",
                                                    "anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert message.content[0].text == FINAL_TEXT
    ex = third_party.tagged(test_tag)[-1]
    assert ex.header("x-api-key") == THIRD_PARTY_KEY and ex.header("anthropic-beta") is None
    assert ex.json()["model"] == "tp-1"
    no_client_credentials(ex)
    record = proxy.wait_record(by_tag(test_tag))
    assert record["provider"] == "thirdparty" and record["upstreamModel"] == "tp-1"
    # the key the third party got is never in the record either
    assert THIRD_PARTY_KEY[8:-4] not in json.dumps(record)


# ---- failover ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario,status", [("overloaded", 529), ("rate_limit", 429)])
@pytest.mark.parametrize("stream", [False, True])
def test_overloaded_or_rate_limited_anthropic_answered_by_the_fallback(
        make_client, proxy, fake_anthropic, fake_openrouter, test_tag, scenario, status, stream):
    client = make_client()
    kwargs = dict(model="claude-sonnet-4-5", max_tokens=50, messages=HI, metadata={"user_id": test_tag},
                  extra_headers={"x-fake-scenario": scenario, "x-fake-retry-after": "0"})
    if stream:
        with client.messages.stream(**kwargs) as s:
            assert s.response.status_code == 200  # the client never sees the 529/429
            assert s.response.headers["content-type"].startswith("text/event-stream")
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.type == "message" and message.content[0].type == "text" and message.content[0].text
    assert [ex.scenario for ex in fake_anthropic.tagged(test_tag)] == [scenario]
    openrouter_call = fake_openrouter.by_user(test_tag)[-1]
    assert openrouter_call.json()["model"] == "anthropic/claude-haiku-4.5"
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success" and record["response"]["status"] == 200
    assert record["provider"] == "openrouter" and record["upstreamModel"] == "anthropic/claude-haiku-4.5"
    assert attempts_of(record) == [("anthropic", "claude-sonnet-4-5", status),
                                   ("openrouter", "anthropic/claude-haiku-4.5", 200)]
    first = record["attempts"][0]
    assert str(status) in first["error"] and first["durationMs"] >= 0
    assert record["costUsd"] is not None  # priced as what answered (OpenRouter's reported cost)


def test_retry_after_puts_the_target_in_a_cool_down(make_client, proxy, fake_anthropic, fake_openrouter, test_tag):
    client = make_client()
    model = "claude-opus-4-1"  # a model of its own: the cool-down is per target (provider and model)
    headers = {"x-fake-scenario": "rate_limit", "x-fake-retry-after": "30"}
    for _ in range(2):
        message = client.messages.create(model=model, max_tokens=20, messages=HI, metadata={"user_id": test_tag},
                                         extra_headers=headers)
        assert message.content[0].text
    assert len(fake_anthropic.tagged(test_tag)) == 1, "the second call went to the cooling target"
    assert len(fake_openrouter.by_user(test_tag)) == 2
    first, second = proxy.wait_records(by_tag(test_tag), count=2)
    assert attempts_of(first)[0] == ("anthropic", model, 429)
    assert attempts_of(second) == [("openrouter", "anthropic/claude-haiku-4.5", 200)]
    cooling = {c["target"]: c for c in proxy.health()["coolDowns"]}
    assert 20 < cooling[f"anthropic:{model}"]["remainingS"] <= 30 and cooling[f"anthropic:{model}"]["status"] == 429
    view = httpx.get(proxy.url + "/api/config", trust_env=False).json()
    assert f"anthropic:{model}" in [c["target"] for c in view["coolDowns"]]
    # /metrics counts the try given up and the cool-down (a call is counted once the store's writer has read it)
    tried = ("anthropic_proxy_failovers_total", (("model", model), ("provider", "anthropic"), ("status", "429")))
    deadline = time.monotonic() + 10
    while (found := metric_samples(proxy)).get(tried) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found.get(tried) == 1 and found[("anthropic_proxy_cooldowns", ())] >= 1


def metric_samples(proxy) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(proxy.url + "/metrics", trust_env=False).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_failure_mid_stream_is_not_retried(client, proxy, fake_anthropic, fake_openrouter, test_tag):
    with pytest.raises(Exception) as caught, client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=20, messages=HI, metadata={"user_id": test_tag},
            extra_headers={"x-fake-scenario": "cut"}) as s:
        for _ in s:
            pass
    assert isinstance(caught.value, STREAM_BREAK_ERRORS)
    assert [ex.scenario for ex in fake_anthropic.tagged(test_tag)] == ["cut"]
    assert not fake_openrouter.by_user(test_tag)
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error" and attempts_of(record) == [("anthropic", "claude-sonnet-4-5", 200)]


def test_a_client_error_is_not_retried(client, proxy, fake_anthropic, fake_openrouter, test_tag):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=HI, metadata={"user_id": test_tag},
                               extra_headers={"x-fake-scenario": "not_found"})
    assert len(fake_anthropic.tagged(test_tag)) == 1 and not fake_openrouter.by_user(test_tag)
    record = proxy.wait_record(by_tag(test_tag))
    assert attempts_of(record) == [("anthropic", "claude-sonnet-4-5", 404)]


def test_an_unreachable_provider_fails_over(client, proxy, local, test_tag):
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=HI,
                                     metadata={"user_id": test_tag}, extra_headers={"x-route": "down"})
    assert message.content[0].text == LOCAL_TEXT
    assert local.by_user(test_tag)[-1].json()["model"] == "after-down"
    record = proxy.wait_record(by_tag(test_tag))
    (down, down_model, down_status), after = attempts_of(record)
    assert (down, down_model, down_status) == ("down", "claude-sonnet-4-5", None)
    assert record["attempts"][0]["error"] and after == ("local", "after-down", 200)
    assert record["provider"] == "local" and record["route"]["index"] == 1


def test_invalid_config_is_refused_whole(proxy, local, third_party):
    before = httpx.get(proxy.url + "/api/config", trust_env=False).json()
    good = routing(local, third_party)
    pasted_key = "sk-ant-api03-" + "pastedKeyValue0123456789"
    for bad, says in [
        ({**good, "routes": [{"provider": "nowhere"}]}, "unknown provider 'nowhere'"),
        ({**good, "routes": [{"when": {"model": "claude-[opus"}, "provider": "local"}]}, "bad glob"),
        ({**good, "providers": {**good["providers"], "x": {"type": "openai", "baseUrl": "http://h",
                                                           "apiKeyEnv": pasted_key}}}, "NAME"),
        ({"mode": "openrouter", "fallbacks": {"anthropic": ["ghost:model"]}}, "unknown provider 'ghost'"),
    ]:
        r = httpx.post(proxy.url + "/api/config", json=bad, trust_env=False)
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
        assert pasted_key[10:] not in r.text
    after = httpx.get(proxy.url + "/api/config", trust_env=False).json()
    assert after["mode"] == before["mode"] == "anthropic" and after["routes"] == before["routes"]
    assert pasted_key[10:] not in (proxy.state_dir / "config.json").read_text()


def test_the_monitor_filters_by_provider(client, proxy, test_tag):
    client.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HI)
    record = proxy.wait_record(by_tag(test_tag))
    listed = proxy.list_records(provider="local", limit=200)["data"]
    assert record["id"] in [r["id"] for r in listed] and {r["provider"] for r in listed} == {"local"}


def test_a_translated_streams_record_counts_what_the_client_got(proxy, test_tag):
    body = {"model": "claude-haiku-4-5", "max_tokens": 20, "stream": True, "messages": HI}
    received = b""
    with httpx.stream("POST", proxy.url + "/v1/messages", json=body, trust_env=False, timeout=20,
                      headers={"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01",
                               "x-test-tag": test_tag}) as response:
        for data in response.iter_raw():
            received += data
    record = proxy.wait_record(by_tag(test_tag))
    events = received.count(b"\n\nevent: ") + 1
    assert record["metrics"]["responseBytes"] == len(received)
    assert record["metrics"]["chunkCount"] == events == len(record["chunks"])
    assert record["message"]["stop_reason"] == "end_turn" and record["usage"]["outputTokens"] == 7


def test_the_test_button_makes_one_real_call_with_the_providers_key(proxy, third_party, local):
    def test(body: dict) -> httpx.Response:
        return httpx.post(proxy.url + "/api/config/test-provider", json=body, trust_env=False, timeout=20)

    before = len(third_party.exchanges)
    r = test({"provider": "thirdparty", "model": "tp-1"})
    assert r.status_code == 200 and r.json()["ok"] is True and r.json()["status"] == 200, r.text
    ex = third_party.exchanges[before]
    assert ex.header("x-api-key") == THIRD_PARTY_KEY and ex.json()["max_tokens"] == 1
    assert THIRD_PARTY_KEY[8:-4] not in r.text
    failed = test({"provider": "local", "model": "fake-error/503"}).json()
    assert failed["ok"] is False and failed["status"] == 503 and "503" in failed["message"]
    assert test({"provider": "down", "model": "m"}).json()["ok"] is False  # nothing listens there
    assert test({"provider": "anthropic", "model": "m"}).status_code == 400  # the client's key: nothing to test
    assert test({"provider": "nowhere", "model": "m"}).status_code == 400
