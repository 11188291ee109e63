"""OpenRouter mode through a real mitmdump running addons/proxy.py, driven by the real `anthropic` SDK, in front
of a fake OpenRouter (tests/fakes/openrouter_upstream.py) that replays real recordings and validates requests
the way OpenAI does.

One proxy in openrouter mode per module (fixture `proxy`, overriding conftest's); tests that change the mode or
the configuration start their own. Each test passes `metadata.user_id = <test_tag>`, which the proxy sends to
OpenRouter as `user`, so it finds its own calls at the fake (`fake_openrouter.by_user(tag)`), and sends the
header `x-test-tag` (the SDK client's default), so it finds its own record (`proxy.wait_record(by_tag(tag))`).

The expected values (text, tool input, reasoning details, usage) are computed here from the recordings
themselves, independently of translate/.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from fakes.anthropic_upstream import FINAL_TEXT, FakeAnthropic
from fakes.harness import DATA_DIR, FAKE_API_KEY, by_tag, first_text, headers_get
from fakes.openrouter_upstream import (
    DEFAULT_KEY,
    ERROR_MESSAGES,
    RETRY_AFTER,
    FakeOpenRouter,
    load_recording,
    recorded_events,
)

from anthropic_proxy.translate.tokens import estimate_input_tokens

WEATHER_TOOL = {
    "name": "weather",
    "description": "Get weather information for a location",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string", "description": "the city"}},
                     "required": ["location"]},
}
WEATHER_QUESTION = [{"role": "user", "content": "What's the weather in Florence, Italy?"}]
TOOL_RESULT = "40 C"
SECRET_MIDDLE = FAKE_API_KEY[10:-4]


# ---- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_openrouter() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter() as fake:
        yield fake


def openrouter_options(fake: FakeOpenRouter, mode: str | None = "openrouter") -> dict[str, str]:
    options = {"openrouter_base_url": fake.base_url}
    if mode:
        options["proxy_mode"] = mode
    return options


@pytest.fixture(scope="module")
def proxy(proxy_factory, fake_openrouter):
    """Overrides conftest's `proxy`: this module's shared proxy is in openrouter mode with a key set."""
    return proxy_factory(options=openrouter_options(fake_openrouter), env={"OPENROUTER_API_KEY": DEFAULT_KEY})


def api_post(proxy, path: str, body: Any) -> httpx.Response:
    return httpx.post(proxy.url + path, json=body, trust_env=False, timeout=10)


# ---- what the recordings say -------------------------------------------------------------------------------
def chunks_of(name: str) -> list[dict[str, Any]]:
    return [e for e in recorded_events(load_recording(name, stream=True)) if isinstance(e, dict)]


def recorded_text(name: str) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks_of(name) if c.get("choices"))


def recorded_tool_calls(name: str) -> list[dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks_of(name):
        for choice in chunk.get("choices") or ():
            for call in (choice.get("delta") or {}).get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                entry["id"] = entry["id"] or call.get("id")
                function = call.get("function") or {}
                entry["name"] = entry["name"] or function.get("name")
                entry["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def recorded_details(name: str) -> list[dict[str, Any]]:
    """The reasoning_details of a recorded stream, fragments of the same (type, index) joined."""
    details: list[dict[str, Any]] = []
    for chunk in chunks_of(name):
        for choice in chunk.get("choices") or ():
            for detail in (choice.get("delta") or {}).get("reasoning_details") or ():
                last = details[-1] if details else None
                if last and (last["type"], last.get("index")) == (detail["type"], detail.get("index")):
                    for key, value in detail.items():
                        if key in ("text", "summary", "data", "signature") and isinstance(value, str):
                            last[key] = (last.get(key) or "") + value
                        elif last.get(key) is None:
                            last[key] = value
                else:
                    details.append(dict(detail))
    return details


def recorded_usage(name: str) -> dict[str, Any]:
    return next(c["usage"] for c in reversed(chunks_of(name)) if c.get("usage"))


def anthropic_usage(usage: dict[str, Any]) -> dict[str, int]:
    details = usage.get("prompt_tokens_details") or {}
    cached, written = details.get("cached_tokens") or 0, details.get("cache_write_tokens") or 0
    return {"input_tokens": usage["prompt_tokens"] - cached - written, "output_tokens": usage["completion_tokens"],
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": written}


def only(items: list[Any], what: str = "item") -> Any:
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}: {items!r}"
    return items[0]


def assert_clean_upstream_request(ex, *, key: str = DEFAULT_KEY, stream: bool) -> None:
    """What reached OpenRouter: its key, its headers, nothing of the client's Anthropic credentials."""
    assert ex.method == "POST" and ex.path == "/api/v1/chat/completions"
    assert ex.header("authorization") == f"Bearer {key}"
    names = ex.header_names()
    assert "x-api-key" not in names
    assert not [n for n in names if n.startswith("anthropic")], names
    assert "x-test-tag" not in names and "x-stainless-lang" not in names, "client headers leaked upstream"
    assert SECRET_MIDDLE not in json.dumps(ex.raw_headers) and SECRET_MIDDLE.encode() not in ex.body
    assert ex.header("http-referer") and ex.header("x-title") == "anthropic-proxy"
    assert ex.header("content-type") == "application/json"
    assert ex.header("accept-encoding") == "identity"
    assert ex.header("accept") == ("text/event-stream" if stream else "application/json")
    assert ex.error is None, f"the fake refused the request: {ex.error}"


def usage_dict(usage: Any) -> dict[str, int]:
    return {k: getattr(usage, k) or 0 for k in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                                                  "cache_creation_input_tokens")}


# ---- non-streaming -----------------------------------------------------------------------------------------
def test_non_stream_text(client, proxy, fake_openrouter, test_tag):
    name = "anthropic/simple.0"
    recorded = json.loads(load_recording(name, stream=False))
    message = client.messages.create(model=f"fake/{name}", max_tokens=100, system="You are a helpful assistant",
                                     messages=[{"role": "user", "content": "Say hi in Portuguese"}],
                                     metadata={"user_id": test_tag})
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == recorded["choices"][0]["message"]["content"]
    assert message.stop_reason == "end_turn"
    assert message.model == f"fake/{name}"
    assert usage_dict(message.usage) == anthropic_usage(recorded["usage"])

    ex = only(fake_openrouter.by_user(test_tag), "upstream call")
    assert_clean_upstream_request(ex, stream=False)
    body = ex.json()
    assert body["model"] == f"fake/{name}"
    assert body["messages"] == [{"role": "system", "content": "You are a helpful assistant"},
                                {"role": "user", "content": "Say hi in Portuguese"}]
    assert body["max_tokens"] == 100 and "stream" not in body

    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success" and record["provider"] == "openrouter"
    assert record["upstreamModel"] == f"fake/{name}"
    assert record["upstreamRequest"] == body
    assert record["upstreamResponse"] == recorded
    assert record["usage"] == {"inputTokens": message.usage.input_tokens,
                               "outputTokens": message.usage.output_tokens,
                               "cacheCreationInputTokens": 0, "cacheReadInputTokens": 0}
    assert record["costUsd"] == pytest.approx(recorded["usage"]["cost"])


def test_non_stream_answer_compressed_anyway_is_decoded(client, proxy, fake_openrouter, test_tag):
    """The proxy asks for identity; an upstream that compresses anyway is still read correctly."""
    name = "glm/simple.0"
    recorded = json.loads(load_recording(name, stream=False))
    message = client.messages.create(model=f"fake/gzip/{name}", max_tokens=100, messages=[
        {"role": "user", "content": "Say hi in Portuguese"}], metadata={"user_id": test_tag})
    assert message.content[-1].text == recorded["choices"][0]["message"]["content"]
    ex = only(fake_openrouter.by_user(test_tag))
    assert ex.response_headers[-1] == ("content-encoding", "gzip") and bytes(ex.sent)[:2] == b"\x1f\x8b"
    record = proxy.wait_record(by_tag(test_tag))
    assert record["upstreamResponse"] == recorded


# ---- streaming ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["anthropic/simple_streaming.0", "kimi/simple_streaming.0",
                                  "openai/simple_streaming.0", "grok/simple_streaming.0"])
def test_stream_text(name, client, proxy, fake_openrouter, test_tag):
    with client.messages.stream(model=f"fake/{name}", max_tokens=4000, messages=[
            {"role": "user", "content": "Say hi in Portuguese"}], metadata={"user_id": test_tag}) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == recorded_text(name)
    assert [b.type for b in message.content if b.type == "text"] == ["text"]
    assert message.stop_reason == "end_turn"
    assert usage_dict(message.usage) == anthropic_usage(recorded_usage(name))
    ex = only(fake_openrouter.by_user(test_tag), "upstream call")
    assert_clean_upstream_request(ex, stream=True)
    assert ex.json()["stream"] is True
    assert bytes(ex.sent) == load_recording(name, stream=True)
    assert len(ex.writes) > 3
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success", record.get("error")


def test_first_byte_is_where_the_stream_timeline_begins(client, proxy, fake_openrouter, test_tag):
    """A stream's ttfbMs is when its first bytes reached the client, the first entry of its timeline (the monitor
    showed "first byte" at the headers, which OpenRouter sends well before its first event)."""
    with client.messages.stream(model="fake/glm/tool_streaming.0", max_tokens=500, messages=WEATHER_QUESTION,
                                tools=[WEATHER_TOOL], metadata={"user_id": test_tag}) as stream:
        stream.get_final_message()
    record = proxy.wait_record(by_tag(test_tag))
    assert record["metrics"]["ttfbMs"] == record["chunks"][0]["tMs"]
    assert record["upstreamChunks"][0]["tMs"] <= record["metrics"]["ttfbMs"] <= record["metrics"]["durationMs"]


def test_stream_is_not_buffered(client, fake_openrouter, test_tag):
    """The first text reaches the SDK while the fake is still holding the rest of the stream."""
    hold_id = f"hold-{test_tag}"
    name = "anthropic/simple_streaming.0"
    with client.messages.stream(model=f"fake/hold/{hold_id}/{name}", max_tokens=100,
                                messages=[{"role": "user", "content": "Say hi"}],
                                metadata={"user_id": test_tag}) as stream:
        events = iter(stream)
        first = first_text(events)
        ex = only(fake_openrouter.by_user(test_tag), "upstream call")
        assert first == chunks_of(name)[0]["choices"][0]["delta"]["content"]
        assert fake_openrouter.is_holding(hold_id) and not ex.completed, "the proxy waited for the whole answer"
        fake_openrouter.release(hold_id)
        rest = "".join(e.text for e in events if e.type == "text")
    assert first + rest == recorded_text(name)
    # (the fake marks its answer complete once its last write returns, which may be after the client read it)
    fake_openrouter.wait_for(lambda done: done is ex and done.completed, timeout=5)


TOOL_STREAMS = ["anthropic/tool_streaming.0", "glm/tool_streaming.0", "gemini/tool_streaming.0",
                "grok/tool_streaming.0", "openai/tool_streaming.0"]


@pytest.mark.parametrize("name", TOOL_STREAMS)
def test_stream_tool_call(name, client, fake_openrouter, test_tag):
    with client.messages.stream(model=f"fake/{name}", max_tokens=4000, messages=WEATHER_QUESTION,
                                tools=[WEATHER_TOOL], metadata={"user_id": test_tag}) as stream:
        message = stream.get_final_message()
    call = only(recorded_tool_calls(name), "recorded tool call")
    tool_uses = [b for b in message.content if b.type == "tool_use"]
    assert len(tool_uses) == 1
    assert tool_uses[0].id == call["id"] and tool_uses[0].name == "weather"
    assert tool_uses[0].input == json.loads(call["arguments"])
    assert isinstance(tool_uses[0].input, dict) and tool_uses[0].input["location"].startswith("Florence")
    assert message.stop_reason == "tool_use"
    ex = only(fake_openrouter.by_user(test_tag), "upstream call")
    assert_clean_upstream_request(ex, stream=True)
    assert ex.json()["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": WEATHER_TOOL["description"], "parameters": WEATHER_TOOL["input_schema"]}}]


# ---- tool round trips and thinking -------------------------------------------------------------------------
ROUND_TRIPS = [
    # (first answer, second answer): the second recording's request is the first's follow-up.
    ("glm/tool_streaming.0", "glm/tool_streaming.1"),  # reasoning.text without signature
    ("gemini/tool_streaming.0", "gemini/tool_streaming.1"),  # reasoning.encrypted tied to the call id
    ("grok/tool_streaming.0", "grok/tool_streaming.1"),  # reasoning.summary deltas + reasoning.encrypted
    ("TestOpenRouterCommonWithAnthropicCache/anthropic/tool_streaming.0",
     "TestOpenRouterCommonWithAnthropicCache/anthropic/tool_streaming.1"),  # no reasoning
]


@pytest.mark.parametrize(("first", "second"), ROUND_TRIPS, ids=[f.split("/")[-2] for f, _ in ROUND_TRIPS])
def test_tool_round_trip_with_reasoning(first, second, client, proxy, fake_openrouter, test_tag):
    common = {"max_tokens": 4000, "tools": [WEATHER_TOOL], "metadata": {"user_id": test_tag},
              "system": "You are a helpful assistant"}
    with client.messages.stream(model=f"fake/{first}", messages=WEATHER_QUESTION, **common) as stream:
        turn1 = stream.get_final_message()
    tool_use = only([b for b in turn1.content if b.type == "tool_use"], "tool_use")
    # Claude Code sends the assistant turn back exactly as it received it (thinking blocks included).
    history = [*WEATHER_QUESTION, {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                                      for b in turn1.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                             "content": TOOL_RESULT}]}]
    with client.messages.stream(model=f"fake/{second}", messages=history, **common) as stream:
        text = "".join(stream.text_stream)
        turn2 = stream.get_final_message()
    assert text == recorded_text(second) and turn2.stop_reason == "end_turn"

    _, ex2 = fake_openrouter.by_user(test_tag)
    assert ex2.error is None, f"the fake (OpenAI rules) refused the follow-up: {ex2.error}"
    messages = ex2.json()["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assistant, tool = messages[2], messages[3]
    call = only(recorded_tool_calls(first))
    assert assistant["tool_calls"] == [{"id": call["id"], "type": "function", "function": {
        "name": "weather", "arguments": json.dumps(json.loads(call["arguments"]))}}]
    assert tool == {"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT}
    expected_details = recorded_details(first)
    if expected_details:
        assert any(b.type in ("thinking", "redacted_thinking") for b in turn1.content)
        assert assistant["reasoning_details"] == expected_details, "reasoning did not go back as received"
    else:
        assert "reasoning_details" not in assistant
    records = proxy.wait_records(by_tag(test_tag), count=2)
    assert [r["status"] for r in records] == ["success", "success"]
    assert records[1]["upstreamRequest"] == ex2.json()


def test_thinking_signature_round_trip(client, fake_openrouter, test_tag):
    """Anthropic reasoning via OpenRouter: the thinking block carries Anthropic's signature unchanged, and the
    next request hands it back as the anthropic-claude-v1 reasoning detail OpenRouter produced."""
    first = "TestOpenRouterThinking/anthropic/thinking.0"
    recorded = json.loads(load_recording(first, stream=False))["choices"][0]["message"]
    common = {"max_tokens": 4000, "tools": [WEATHER_TOOL], "metadata": {"user_id": test_tag},
              "thinking": {"type": "enabled", "budget_tokens": 2000}}
    turn1 = client.messages.create(model=f"fake/{first}", messages=WEATHER_QUESTION, **common)
    assert [b.type for b in turn1.content] == ["thinking", "tool_use"]
    detail = only(recorded["reasoning_details"])
    assert turn1.content[0].thinking == detail["text"]
    assert turn1.content[0].signature == detail["signature"]
    assert turn1.content[1].input == json.loads(recorded["tool_calls"][0]["function"]["arguments"])
    assert turn1.stop_reason == "tool_use"
    ex1 = only(fake_openrouter.by_user(test_tag))
    assert ex1.json()["reasoning"] == {"max_tokens": 2000}

    history = [*WEATHER_QUESTION, {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                                      for b in turn1.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": turn1.content[1].id,
                                             "content": TOOL_RESULT}]}]
    turn2 = client.messages.create(model="fake/TestOpenRouterThinking/anthropic/thinking.1", messages=history,
                                   **common)
    assert turn2.content[-1].type == "text" and turn2.content[-1].text
    ex2 = fake_openrouter.by_user(test_tag)[1]
    assert ex2.error is None, ex2.error
    assistant = ex2.json()["messages"][1]
    assert assistant["reasoning_details"] == recorded["reasoning_details"]


# ---- errors ------------------------------------------------------------------------------------------------
ERROR_CLASSES = {
    400: ("invalid_request_error", anthropic.BadRequestError),
    401: ("authentication_error", anthropic.AuthenticationError),
    402: ("billing_error", anthropic.APIStatusError),
    403: ("permission_error", anthropic.PermissionDeniedError),
    408: ("timeout_error", anthropic.APIStatusError),
    413: ("request_too_large", anthropic.APIStatusError),
    429: ("rate_limit_error", anthropic.RateLimitError),
    500: ("api_error", anthropic.InternalServerError),
    502: ("api_error", anthropic.InternalServerError),
    503: ("overloaded_error", anthropic.InternalServerError),
}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("status", sorted(ERROR_CLASSES))
def test_prestream_errors_mapped(status, stream, client, proxy, fake_openrouter, test_tag):
    error_type, exc_class = ERROR_CLASSES[status]
    with pytest.raises(anthropic.APIStatusError) as caught:
        kwargs = {"model": f"fake/error/{status}", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
                  "metadata": {"user_id": test_tag}}
        if stream:
            with client.messages.stream(**kwargs) as s:
                s.get_final_message()
        else:
            client.messages.create(**kwargs)
    exc = caught.value
    assert isinstance(exc, exc_class), type(exc)
    assert exc.status_code == status
    assert exc.body["type"] == "error"
    assert exc.body["error"]["type"] == error_type
    assert ERROR_MESSAGES[status] in exc.body["error"]["message"]
    assert exc.response.headers.get("content-type", "").startswith("application/json")
    assert exc.response.headers.get("retry-after") == RETRY_AFTER.get(status)
    if status == 502:  # the provider detail OpenRouter hides in metadata reaches the user
        assert "Amazon Bedrock" in exc.body["error"]["message"]
    assert only(fake_openrouter.by_user(test_tag)).status == status
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error" and record["provider"] == "openrouter"
    assert record["error"]["type"] == error_type
    assert record["response"]["status"] == status
    assert record["upstreamResponse"] == json.loads(fake_openrouter.by_user(test_tag)[0].sent)


def test_midstream_error(client, proxy, fake_openrouter, test_tag):
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught, client.messages.stream(
            model="fake/midstream_error", max_tokens=100, messages=[{"role": "user", "content": "x"}],
            metadata={"user_id": test_tag}) as stream:
        for event in stream:
            if event.type == "text":
                received.append(event.text)
    assert "".join(received) == "Half an ans"
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "Provider disconnected unexpectedly" in body["error"]["message"]
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error"
    assert record["error"]["type"] == "api_error"
    assert "Provider disconnected unexpectedly" in record["error"]["message"]
    assert record["chunks"][-1]["event"] == "error"
    assert record["upstreamChunks"][-1]["data"]["error"]["code"] == "server_error"


@pytest.mark.parametrize(("scenario", "message"), [
    ("malformed", "failed to translate"),
    ("truncated", "ended before the model finished"),
])
def test_broken_upstream_stream_becomes_error_event(scenario, message, client, proxy, test_tag):
    """A stream the translator cannot follow ends with an Anthropic error event, never silently."""
    with pytest.raises(anthropic.APIStatusError) as caught, client.messages.stream(
            model=f"fake/{scenario}", max_tokens=100, messages=[{"role": "user", "content": "x"}],
            metadata={"user_id": test_tag}) as stream:
        stream.get_final_message()
    assert caught.value.body["error"]["type"] == "api_error"
    assert message in caught.value.body["error"]["message"]
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "error" and record["chunks"][-1]["event"] == "error"


def test_request_the_fake_rejects_comes_back_as_invalid_request(client, fake_openrouter, test_tag):
    """The fake's OpenAI rules are live: an unknown model id is OpenRouter's 400, mapped for the SDK."""
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="nobody/no-such-model", max_tokens=10,
                               messages=[{"role": "user", "content": "x"}], metadata={"user_id": test_tag})
    assert "not a valid model ID" in caught.value.body["error"]["message"]


def test_missing_key_answers_401_without_upstream_call(start_proxy, fake_openrouter, make_client, test_tag):
    p = start_proxy(options=openrouter_options(fake_openrouter))  # no OPENROUTER_API_KEY anywhere
    client = make_client(base_url=p.url)
    before = len(fake_openrouter.exchanges)
    started = time.monotonic()
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               metadata={"user_id": test_tag})
    assert time.monotonic() - started < 2
    exc = caught.value
    assert exc.status_code == 401
    assert exc.body["error"]["type"] == "authentication_error"
    assert "OPENROUTER_API_KEY" in exc.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError), client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as s:
        s.get_final_message()
    assert len(fake_openrouter.exchanges) == before, "the proxy called OpenRouter without a key"
    record = p.wait_record(by_tag(test_tag))
    assert record["provider"] == "openrouter" and record["status"] == "error"
    assert record["error"]["type"] == "authentication_error"


# ---- count_tokens ------------------------------------------------------------------------------------------
def test_count_tokens_answered_locally(client, proxy, fake_openrouter, sent_requests, test_tag):
    before = len(fake_openrouter.exchanges)
    result = client.messages.count_tokens(model="claude-opus-4-8", system="You are terse.",
                                          messages=WEATHER_QUESTION, tools=[WEATHER_TOOL])
    body = json.loads(only(sent_requests).content)
    assert result.input_tokens == estimate_input_tokens(body) > 0
    assert len(fake_openrouter.exchanges) == before, "count_tokens went upstream"
    record = proxy.wait_record(by_tag(test_tag))
    assert record["provider"] == "openrouter" and record["status"] == "success"
    assert record["request"]["path"].startswith("/v1/messages/count_tokens")
    assert record["usage"]["inputTokens"] == result.input_tokens
    assert record["response"]["body"] == {"input_tokens": result.input_tokens}


# ---- the record --------------------------------------------------------------------------------------------
def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if event is None and not data:  # a comment-only block (keep-alive)
            continue
        out.append((event, json.loads("\n".join(data))))
    return out


def test_record_keeps_both_sides_of_a_stream(proxy, fake_openrouter, test_tag):
    """Original request, translated request, raw upstream chunks, translated chunks, usage and cost."""
    name = "glm/tool_streaming.0"
    body = {"model": "claude-haiku-4-5", "max_tokens": 500, "stream": True, "messages": WEATHER_QUESTION,
            "tools": [WEATHER_TOOL], "metadata": {"user_id": test_tag}}
    headers = {"x-api-key": FAKE_API_KEY, "anthropic-version": "2023-06-01", "x-test-tag": test_tag,
               "anthropic-beta": "interleaved-thinking-2025-05-14"}
    # The haiku family is mapped to this recording for this request only (the default model stays).
    api_post(proxy, "/api/config", {"models": {"haiku": f"fake/{name}"}}).raise_for_status()
    try:
        raw = httpx.post(proxy.url + "/v1/messages", json=body, headers=headers, trust_env=False, timeout=20)
    finally:
        api_post(proxy, "/api/config/reset", {}).raise_for_status()
        api_post(proxy, "/api/config", {"mode": "openrouter"}).raise_for_status()
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    client_events = sse_events(raw.content)
    assert client_events[0][0] == "message_start" and client_events[-1][0] == "message_stop"
    assert client_events[0][1]["message"]["model"] == "claude-haiku-4-5"

    ex = only(fake_openrouter.by_user(test_tag))
    assert_clean_upstream_request(ex, stream=True)
    record = proxy.wait_record(by_tag(test_tag))
    assert record["status"] == "success" and record["provider"] == "openrouter"
    assert record["model"] == "claude-haiku-4-5" and record["upstreamModel"] == f"fake/{name}"
    assert record["stream"] is True
    assert record["request"]["body"] == body  # the client's original request
    assert record["request"]["path"] == "/v1/messages"
    assert headers_get(record["request"]["headers"], "anthropic-beta") == "interleaved-thinking-2025-05-14"
    assert SECRET_MIDDLE not in json.dumps(record)
    assert record["upstreamRequest"] == ex.json()  # the translated one, as OpenRouter got it
    assert [c["data"] for c in record["upstreamChunks"]] == recorded_events(load_recording(name, stream=True))
    assert [(c["event"], c["data"]) for c in record["chunks"]] == client_events  # what the client got
    usage = recorded_usage(name)
    expected = anthropic_usage(usage)
    assert expected["cache_read_input_tokens"] > 0  # this recording has a cache hit: prompt_tokens includes it
    assert record["usage"] == {"inputTokens": expected["input_tokens"], "outputTokens": expected["output_tokens"],
                               "cacheCreationInputTokens": expected["cache_creation_input_tokens"],
                               "cacheReadInputTokens": expected["cache_read_input_tokens"]}
    assert record["costUsd"] == pytest.approx(usage["cost"])
    assert record["stopReason"] == "tool_use"
    assert [b["type"] for b in record["message"]["content"]] == ["thinking", "tool_use"]


def test_family_mapping_and_default_model(start_proxy, fake_openrouter, make_client, test_tag):
    p = start_proxy(options=openrouter_options(fake_openrouter), env={"OPENROUTER_API_KEY": DEFAULT_KEY})
    mapping = {"sonnet": "fake/anthropic/simple.0", "opus": "fake/glm/simple.0", "haiku": "fake/kimi/simple.0",
               "default": "fake/openai/simple.0"}
    assert api_post(p, "/api/config", {"models": mapping}).json()["models"] == mapping
    client = make_client(base_url=p.url)
    cases = {"claude-sonnet-4-5-20250929": "sonnet", "claude-opus-4-8": "opus", "claude-haiku-4-5": "haiku",
             "claude-3-unknown": "default", "fake/grok/simple.0": None}
    for requested, family in cases.items():
        message = client.messages.create(model=requested, max_tokens=50, messages=[{"role": "user", "content": "hi"}],
                                         metadata={"user_id": test_tag})
        assert message.model == requested, "Claude Code must see the model it asked for"
        upstream = mapping[family] if family else requested
        ex = fake_openrouter.by_user(test_tag)[-1]
        assert ex.json()["model"] == upstream
        recorded = json.loads(load_recording(upstream.removeprefix("fake/"), stream=False))
        assert message.content[-1].text == recorded["choices"][0]["message"]["content"]
    records = p.wait_records(by_tag(test_tag), count=len(cases))
    assert [r["upstreamModel"] for r in records] == [mapping[f] if f else m for m, f in cases.items()]


# ---- switching mode live -----------------------------------------------------------------------------------
def test_live_mode_switch(start_proxy, fake_openrouter, fake_anthropic, make_client, test_tag):
    p = start_proxy(options=openrouter_options(fake_openrouter, mode=None), env={"OPENROUTER_API_KEY": DEFAULT_KEY})
    pid = p.proc.pid
    client = make_client(base_url=p.url)
    kwargs = {"max_tokens": 50, "messages": [{"role": "user", "content": "Hello, how are you?"}],
              "metadata": {"user_id": test_tag}}

    def run() -> str:
        with client.messages.stream(model="claude-sonnet-4-5", **kwargs) as s:
            return "".join(s.text_stream)

    assert p.health()["mode"] == "anthropic"
    assert run() == FINAL_TEXT
    assert len(fake_anthropic.tagged(test_tag)) == 1 and not fake_openrouter.by_user(test_tag)

    r = api_post(p, "/api/config", {"mode": "openrouter", "models": {"sonnet": "fake/anthropic/simple_streaming.0"}})
    assert r.status_code == 200 and r.json()["mode"] == "openrouter"
    assert run() == recorded_text("anthropic/simple_streaming.0")
    assert len(fake_anthropic.tagged(test_tag)) == 1 and len(fake_openrouter.by_user(test_tag)) == 1

    assert api_post(p, "/api/config", {"mode": "anthropic"}).json()["mode"] == "anthropic"
    assert run() == FINAL_TEXT
    assert len(fake_anthropic.tagged(test_tag)) == 2 and len(fake_openrouter.by_user(test_tag)) == 1
    # the passthrough got the client's own credentials back
    assert fake_anthropic.tagged(test_tag)[-1].header("authorization") == f"Bearer {FAKE_API_KEY}"

    records = p.wait_records(by_tag(test_tag), count=3)
    assert [r["provider"] for r in records] == ["anthropic", "openrouter", "anthropic"]
    assert [r["status"] for r in records] == ["success"] * 3
    assert p.proc.pid == pid and p.proc.poll() is None, "switching restarted the proxy"


def test_config_change_does_not_affect_a_stream_in_flight(start_proxy, fake_openrouter, make_client, test_tag):
    p = start_proxy(options=openrouter_options(fake_openrouter), env={"OPENROUTER_API_KEY": DEFAULT_KEY})
    client = make_client(base_url=p.url)
    hold_id = f"hold-{test_tag}"
    name = "kimi/simple_streaming.0"
    api_post(p, "/api/config", {"models": {"opus": f"fake/hold/{hold_id}/{name}"}}).raise_for_status()
    result: dict[str, Any] = {}

    def stream_in_background() -> None:
        try:
            with client.messages.stream(model="claude-opus-4-8", max_tokens=100, metadata={"user_id": test_tag},
                                        messages=[{"role": "user", "content": "hi"}]) as s:
                result["text"] = "".join(s.text_stream)
        except Exception as exc:  # reported by the assertions below
            result["error"] = exc

    thread = threading.Thread(target=stream_in_background)
    thread.start()
    try:
        fake_openrouter.wait_holding(hold_id)
        # Everything changes while the answer is on its way: mode, mapping, headers.
        r = api_post(p, "/api/config", {"mode": "anthropic", "models": {"opus": "fake/glm/simple.0"},
                                        "headers": {"X-Title": "changed"}})
        assert r.status_code == 200, r.text
    finally:
        fake_openrouter.release(hold_id)
        thread.join(20)
    assert "error" not in result, result.get("error")
    assert result["text"] == recorded_text(name)
    record = p.wait_record(by_tag(test_tag))
    assert record["status"] == "success" and record["provider"] == "openrouter"
    assert record["upstreamModel"] == f"fake/hold/{hold_id}/{name}"
    assert only(fake_openrouter.by_user(test_tag)).header("x-title") == "anthropic-proxy"


def test_anthropic_stream_in_flight_survives_switch_to_openrouter(start_proxy, fake_openrouter, make_client,
                                                                  test_tag):
    with FakeAnthropic() as upstream:
        p = start_proxy(upstream=upstream.url, options=openrouter_options(fake_openrouter, mode=None),
                        env={"OPENROUTER_API_KEY": DEFAULT_KEY})
        client = make_client(base_url=p.url)
        hold_id = f"hold-{test_tag}"
        result: dict[str, Any] = {}

        def stream_in_background() -> None:
            try:
                with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                            messages=[{"role": "user", "content": "hi"}],
                                            extra_headers={"x-fake-scenario": "hold", "x-fake-hold-id": hold_id}) as s:
                    result["text"] = "".join(s.text_stream)
            except Exception as exc:
                result["error"] = exc

        thread = threading.Thread(target=stream_in_background)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while hold_id not in upstream._holding and time.monotonic() < deadline:
                time.sleep(0.005)
            assert api_post(p, "/api/config", {"mode": "openrouter"}).json()["mode"] == "openrouter"
        finally:
            upstream.release(hold_id)
            thread.join(20)
        assert "error" not in result, result.get("error")
        assert result["text"] == FINAL_TEXT
        record = p.wait_record(by_tag(test_tag))
        assert record["provider"] == "anthropic" and record["status"] == "success"


# ---- real Claude Code traffic ------------------------------------------------------------------------------
CLAUDE_CODE_FIXTURES = sorted((DATA_DIR / "claude_code").glob("claude_code_request_*.json"))


@pytest.fixture(scope="module")
def claude_code_proxy(proxy_factory, fake_openrouter):
    """Every Claude family mapped to one streamed recording, so real Claude Code requests get an answer."""
    p = proxy_factory(options=openrouter_options(fake_openrouter), env={"OPENROUTER_API_KEY": DEFAULT_KEY})
    target = "fake/anthropic/simple_streaming.0"
    api_post(p, "/api/config", {"models": dict.fromkeys(("sonnet", "opus", "haiku", "default"), target)})
    return p


@pytest.mark.parametrize("fixture", CLAUDE_CODE_FIXTURES, ids=lambda f: f.stem.removeprefix("claude_code_"))
def test_claude_code_requests_pass_openai_validation(fixture, claude_code_proxy, fake_openrouter, test_tag):
    """Captured Claude Code requests (system-role messages, tool results, signed thinking, structured output)
    translate into requests the fake accepts under OpenAI's rules, and the answer is a complete stream."""
    captured = json.loads(fixture.read_text())
    body = {**captured["body"], "metadata": {"user_id": test_tag}}
    headers = {k: v for k, v in captured["headers"].items()
               if k.lower() not in ("host", "content-length", "connection", "accept-encoding")}
    headers.update({"x-api-key": FAKE_API_KEY, "x-test-tag": test_tag})
    headers.pop("authorization", None)
    r = httpx.post(f"{claude_code_proxy.url}{captured['path']}", params=captured["query"], json=body,
                   headers=headers, trust_env=False, timeout=20)
    assert r.status_code == 200, r.text[:1000]
    record = claude_code_proxy.wait_record(by_tag(test_tag))
    assert record["provider"] == "openrouter" and record["status"] == "success", record.get("error")
    if captured["path"].endswith("count_tokens"):
        assert r.json()["input_tokens"] == estimate_input_tokens(body)
        assert not fake_openrouter.by_user(test_tag)
        return
    ex = only(fake_openrouter.by_user(test_tag))
    assert_clean_upstream_request(ex, stream=True)
    events = sse_events(r.content)
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    assert events[0][1]["message"]["model"] == body["model"]
    sent = ex.json()
    assert not any("x-anthropic-billing-header" in json.dumps(m) for m in sent["messages"])
    for message in body["messages"]:  # signed thinking from Anthropic goes back as anthropic-claude-v1 details
        for block in message["content"] if isinstance(message["content"], list) else ():
            if block.get("type") == "thinking" and block.get("signature"):
                details = [d for m in sent["messages"] for d in m.get("reasoning_details") or ()]
                assert {"type": "reasoning.text", "text": block["thinking"], "signature": block["signature"],
                        "format": "anthropic-claude-v1", "index": 0} in details


# ---- the fake itself ---------------------------------------------------------------------------------------
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
REJECTED = {
    "tool message without a preceding tool call": {"messages": [
        {"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
    "tool message not right after its call": {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [CALL]},
        {"role": "user", "content": "and?"}, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
    "tool call without its answer": {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [CALL]}], "tools": TOOLS},
    "tool answer with the wrong id": {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_2", "content": "x"}], "tools": TOOLS},
    "invalid tool_choice": {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                            "tool_choice": "any"},
    "tool_choice naming an unknown tool": {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                                           "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    "tool_choice without tools": {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"},
    "missing model": {"model": None, "messages": [{"role": "user", "content": "hi"}]},
    "empty user content": {"messages": [{"role": "user", "content": ""}]},
    "empty user content parts": {"messages": [{"role": "user", "content": []}]},
    "messages not a list": {"messages": {"role": "user", "content": "hi"}},
    "tool name too long": {"messages": [{"role": "user", "content": "hi"}],
                           "tools": [{"type": "function", "function": {"name": "x" * 65}}]},
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_fake_openrouter_rejects_what_openai_rejects(case, fake_openrouter):
    body = {"model": "fake/anthropic/simple.0", **REJECTED[case]}
    if body["model"] is None:
        del body["model"]
    r = httpx.post(fake_openrouter.base_url + "/chat/completions", json=body, trust_env=False,
                   headers={"authorization": f"Bearer {DEFAULT_KEY}"})
    assert r.status_code == 400, (case, r.text)
    assert r.json()["error"]["code"] == 400 and r.json()["error"]["message"]


def test_fake_openrouter_accepts_a_valid_tool_turn(fake_openrouter):
    body = {"model": "fake/anthropic/simple.0", "tools": TOOLS, "tool_choice": "auto", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "x"}]}
    r = httpx.post(fake_openrouter.base_url + "/chat/completions", json=body, trust_env=False,
                   headers={"authorization": f"Bearer {DEFAULT_KEY}"})
    assert r.status_code == 200, r.text
    r = httpx.post(fake_openrouter.base_url + "/chat/completions", json=body, trust_env=False,
                   headers={"authorization": "Bearer sk-or-v1-wrong"})
    assert r.status_code == 401
