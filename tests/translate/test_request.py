"""Anthropic request -> OpenRouter request, on the real Claude Code requests and targeted histories."""

from __future__ import annotations

import copy
import json

import pytest
from helpers import DATA

from anthropic_proxy.translate.history import MISSING_RESULT
from anthropic_proxy.translate.request import BILLING_LINE_PREFIX, RequestTranslationError, translate_request
from anthropic_proxy.translate.tool_names import OPENAI_TOOL_NAME_LIMIT

CLAUDE_CODE = sorted((DATA / "claude_code").glob("*.json"))
ANTHROPIC = "anthropic/claude-sonnet-4.5"
OTHER = "z-ai/glm-5-turbo"


def claude_code(name: str) -> dict:
    return json.loads((DATA / "claude_code" / name).read_text())["body"]


def roles(body: dict) -> list[str]:
    return [m["role"] for m in body["messages"]]


@pytest.mark.parametrize("path", CLAUDE_CODE, ids=lambda p: p.stem)
@pytest.mark.parametrize("upstream", [ANTHROPIC, OTHER])
def test_claude_code_requests_translate(path, upstream):
    body = json.loads(path.read_text())["body"]
    result = translate_request(copy.deepcopy(body), upstream_model=upstream)
    out = result.body
    assert out["model"] == upstream and result.requested_model == body["model"]
    assert result.stream == bool(body.get("stream"))
    dumped = json.dumps(out)
    assert BILLING_LINE_PREFIX not in dumped
    assert ("cache_control" in dumped) == (upstream == ANTHROPIC and "cache_control" in json.dumps(body))
    # Every tool call answered right after its assistant message.
    messages = out["messages"]
    for i, message in enumerate(messages):
        for j, call in enumerate(message.get("tool_calls") or []):
            assert messages[i + 1 + j] == {**messages[i + 1 + j], "role": "tool", "tool_call_id": call["id"]}
    assert [t["function"]["name"] for t in out.get("tools", [])] == [t["name"] for t in body.get("tools", [])]
    for tool, original in zip(out.get("tools", []), body.get("tools", []), strict=True):
        assert tool["function"]["parameters"] == original["input_schema"]
    # role: system entries inside messages stay system messages, in place.
    assert roles(out).count("system") == 1 + sum(m["role"] == "system" for m in body["messages"]) - (
        0 if body.get("system") else 1
    )
    if "metadata" in body:
        assert out["user"] == body["metadata"]["user_id"]
    assert out["usage"] == {"include": True}


def test_billing_line_is_removed_and_cache_control_kept():
    body = claude_code("claude_code_request_02_tool_result_turn.json")
    out = translate_request(body, upstream_model=ANTHROPIC).body
    system = out["messages"][0]
    assert system["role"] == "system"
    assert [p["text"] for p in system["content"]] == [b["text"].strip("\n") for b in body["system"][1:]]
    assert all(p["cache_control"] == {"type": "ephemeral"} for p in system["content"])
    tool = out["messages"][-1]
    assert tool == {
        "role": "tool",
        "tool_call_id": "toolu_019YipeVRexbhDJ0rAm3fYRq",
        "content": [{"type": "text", "text": "fake-tool-ok", "cache_control": {"type": "ephemeral"}}],
    }
    plain = translate_request(body, upstream_model=OTHER)
    assert plain.body["messages"][-1]["content"] == "fake-tool-ok"
    assert any("cache_control" in reason for reason in plain.dropped)


def test_billing_line_inside_a_string_system_is_removed():
    body = {
        "model": "claude-opus-4-8",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "system": f"{BILLING_LINE_PREFIX} cc_version=1.2.3.abc;\nYou are helpful.",
    }
    out = translate_request(body, upstream_model=OTHER).body
    assert out["messages"][0] == {"role": "system", "content": "You are helpful."}


def test_system_text_without_a_billing_line_loses_only_its_outer_newlines():
    body = {"model": "claude-opus-4-8", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
            "system": [{"type": "text", "text": f"\n\nYou are helpful.\n  {BILLING_LINE_PREFIX} not a line start\n"},
                       {"type": "text", "text": f"Be brief.\n{BILLING_LINE_PREFIX} cc_version=1;\n"}]}
    result = translate_request(body, upstream_model=OTHER)
    assert result.body["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": f"You are helpful.\n  {BILLING_LINE_PREFIX} not a line start"},
        {"type": "text", "text": "Be brief."}]}
    assert sum("billing line" in reason for reason in result.dropped) == 1


def test_esc_without_tool_result_gets_a_placeholder():
    body = claude_code("claude_code_request_02_tool_result_turn.json")
    body["messages"][-1]["content"] = [{"type": "text", "text": "never mind, do something else"}]
    result = translate_request(body, upstream_model=OTHER)
    messages = result.body["messages"]
    assert roles(result.body)[-3:] == ["assistant", "tool", "user"]
    assert messages[-2] == {
        "role": "tool",
        "tool_call_id": "toolu_019YipeVRexbhDJ0rAm3fYRq",
        "content": MISSING_RESULT,
    }
    assert messages[-1]["content"] == "never mind, do something else"
    assert any("placeholder" in reason for reason in result.dropped)


def _tool_use(call_id: str, name: str = "Read") -> dict:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {"file_path": f"/{call_id}"}}


def test_results_follow_the_calls_in_call_order_and_user_text_comes_after():
    png = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "read both"},
            {"role": "assistant", "content": [{"type": "text", "text": ""}, _tool_use("a"), _tool_use("b")]},
            {"role": "system", "content": "a reminder between the call and its results"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "here you go"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "b",
                        "content": [{"type": "text", "text": "B"}, png],
                    },
                    {"type": "tool_result", "tool_use_id": "a", "content": "boom", "is_error": True},
                ],
            },
        ],
    }
    messages = translate_request(body, upstream_model=OTHER).body["messages"]
    assert roles({"messages": messages}) == ["user", "assistant", "tool", "tool", "system", "user"]
    assert "content" not in messages[1]  # tool-call-only turn: no empty text content
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["a", "b"]
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"file_path": "/a"}
    assert messages[2] == {"role": "tool", "tool_call_id": "a", "content": "Error: boom"}
    assert messages[3] == {"role": "tool", "tool_call_id": "b", "content": "B"}
    user = messages[5]["content"]
    assert user[0]["text"] == "[Images returned by tool call b]"
    assert user[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert user[2] == {"type": "text", "text": "here you go"}


def test_orphan_tool_result_becomes_user_text():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "ghost", "content": "late"}]}],
    }
    result = translate_request(body, upstream_model=OTHER)
    assert result.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "[Result of tool call ghost]"},
                {"type": "text", "text": "late"},
            ],
        }
    ]
    assert not any(m["role"] == "tool" for m in result.body["messages"])


def test_documents_images_and_unknown_blocks():
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "title": "spec.pdf",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "plain doc"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                    {"type": "mystery_block", "x": 1},
                    {"type": "text", "text": ""},
                ],
            }
        ],
        "some_future_field": {"a": 1},
    }
    result = translate_request(body, upstream_model=OTHER)
    assert result.body["messages"][0]["content"] == [
        {
            "type": "file",
            "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
        },
        {"type": "text", "text": "plain doc"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    assert any("mystery_block" in r for r in result.dropped)
    assert any("some_future_field" in r for r in result.dropped)


def test_long_tool_names_are_shortened_reversibly():
    long_name = "mcp__some_really_long_server_name__and_an_even_longer_tool_name_for_testing"
    assert len(long_name) > OPENAI_TOOL_NAME_LIMIT
    body = {
        "model": "m",
        "tools": [{"name": long_name, "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": long_name},
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [_tool_use("x", long_name)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "ok"}]},
        ],
    }
    result = translate_request(body, upstream_model=OTHER)
    short = result.body["tools"][0]["function"]["name"]
    assert len(short) <= OPENAI_TOOL_NAME_LIMIT and result.tool_names == {short: long_name}
    assert result.body["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert result.body["tool_choice"] == {"type": "function", "function": {"name": short}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
    ],
)
def test_tool_choice(choice, expected):
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
        "tool_choice": {**choice, "disable_parallel_tool_use": True},
    }
    out = translate_request(body, upstream_model=OTHER).body
    assert out["tool_choice"] == expected and out["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("thinking", "output_config", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 31999}, None, {"max_tokens": 31999}),
        ({"type": "adaptive"}, {"effort": "low"}, {"effort": "low"}),
        ({"type": "adaptive"}, {"effort": "max"}, {"effort": "high"}),
        ({"type": "adaptive"}, None, {"enabled": True}),
        ({"type": "disabled"}, None, None),
    ],
)
def test_thinking_to_reasoning(thinking, output_config, expected):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "thinking": thinking}
    if output_config:
        body["output_config"] = output_config
    assert translate_request(body, upstream_model=OTHER).body.get("reasoning") == expected


def test_sampling_parameters_are_passed_unchanged():
    body = {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 200000,
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 5,
        "stream": True,
        "metadata": {"user_id": "u-1"},
    }
    result = translate_request(body, upstream_model=OTHER)
    assert {k: result.body[k] for k in ("max_tokens", "stop", "temperature", "top_p", "top_k", "user", "stream")} == {
        "max_tokens": 200000,
        "stop": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 5,
        "user": "u-1",
        "stream": True,
    }
    assert result.stream and result.dropped == []


@pytest.mark.parametrize(
    "body",
    [
        [],
        "x",
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": [{"role": "user", "content": "x"}], "tools": "no"},
    ],
)
def test_untranslatable_requests_raise(body):
    with pytest.raises(RequestTranslationError):
        translate_request(body, upstream_model=OTHER)


def test_thinking_only_assistant_turn_is_left_out():
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": ""}]},
            {"role": "user", "content": "y"},
        ],
    }
    assert roles(translate_request(body, upstream_model=OTHER).body) == ["user", "user"]
