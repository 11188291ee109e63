"""count_tokens estimate: deterministic, and within the accuracy documented in translate/tokens.py when
measured against the real prompt_tokens OpenRouter reported for the recorded Claude requests."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from helpers import DATA, OPENROUTER

from anthropic_proxy.translate import tokens
from anthropic_proxy.translate.tokens import estimate_input_tokens


def anthropic_body(openai_body: dict) -> dict:
    """The recorded OpenAI-style request, rewritten as the Anthropic request that would produce it."""
    system = "\n".join(m["content"] for m in openai_body["messages"] if m["role"] == "system")
    messages: list[dict] = []
    for m in openai_body["messages"]:
        if m["role"] == "user":
            messages.append({"role": "user", "content": m["content"]})
        elif m["role"] == "assistant":
            blocks = [{"type": "text", "text": m["content"]}] if m.get("content") else []
            blocks += [
                {
                    "type": "tool_use",
                    "id": c["id"],
                    "name": c["function"]["name"],
                    "input": json.loads(c["function"]["arguments"]),
                }
                for c in m.get("tool_calls") or []
            ]
            messages.append({"role": "assistant", "content": blocks})
        elif m["role"] == "tool":
            result = {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": m["content"]}
            if messages[-1]["role"] == "user" and isinstance(messages[-1]["content"], list):
                messages[-1]["content"].append(result)
            else:
                messages.append({"role": "user", "content": [result]})
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description", ""),
            "input_schema": t["function"]["parameters"],
        }
        for t in openai_body.get("tools") or []
    ]
    return {"system": system, "messages": messages, **({"tools": tools} if tools else {})}


def _prompt_tokens(request_path) -> int | None:
    response = request_path.with_name(request_path.name.replace(".request.json", ".response.json"))
    if response.exists():
        return json.loads(response.read_text())["usage"]["prompt_tokens"]
    stream = request_path.with_name(request_path.name.replace(".request.json", ".response.sse.txt"))
    if not stream.exists():
        return None
    lines = [line for line in stream.read_text().splitlines() if line.startswith("data: {") and '"usage"' in line]
    return json.loads(lines[-1][len("data: ") :])["usage"]["prompt_tokens"]


CLAUDE_SAMPLES = [
    (path, _prompt_tokens(path))
    for path in sorted(OPENROUTER.glob("**/*.request.json"))
    if json.loads(path.read_text())["body"]["model"].startswith("anthropic/") and _prompt_tokens(path)
]


def test_estimate_matches_recorded_claude_token_counts():
    assert len(CLAUDE_SAMPLES) >= 15
    errors = []
    for path, real in CLAUDE_SAMPLES:
        body = json.loads(path.read_text())["body"]
        if body.get("reasoning"):
            continue  # thinking requests carry an extra reasoning prompt the estimate does not model
        errors.append(abs(estimate_input_tokens(anthropic_body(body)) - real) / real)
    mean = sum(errors) / len(errors)
    # The figures documented in translate/tokens.py (mean 2.0 %, worst 6.5 %), with a little slack.
    assert mean <= 0.025 and max(errors) <= 0.07, (mean, max(errors))


@pytest.mark.parametrize("path", sorted((DATA / "claude_code").glob("*.json")), ids=lambda p: p.stem)
def test_estimate_is_deterministic_and_grows_with_content(path):
    body = json.loads(path.read_text())["body"]
    first = estimate_input_tokens(body)
    assert first == estimate_input_tokens(json.loads(path.read_text())["body"])
    bigger = {**body, "messages": [*body["messages"], {"role": "user", "content": "x" * 3500}]}
    assert estimate_input_tokens(bigger) == first + tokens.MESSAGE_OVERHEAD + 1000


def test_images_use_the_png_size():
    header = (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 300, 250) + b"\x08\x02\x00\x00\x00"
    )
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(header).decode()},
    }
    unknown = {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}
    base = estimate_input_tokens({"messages": [{"role": "user", "content": []}]})
    assert estimate_input_tokens({"messages": [{"role": "user", "content": [image]}]}) - base == 100
    assert (
        estimate_input_tokens({"messages": [{"role": "user", "content": [unknown]}]}) - base
        == tokens.IMAGE_TOKENS_DEFAULT
    )
