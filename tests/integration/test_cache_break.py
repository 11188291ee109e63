"""Cache breaks through a real mitmdump, the anthropic SDK and the fake Anthropic upstream: sessions whose third call
changes the tool list, the system prompt or an early message, or comes after the (shortened) cache lifetime,
each get the right `at` / `index`; a stable session gets none; the statistics sum them by `at`."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import pytest
from fakes.harness import ProxyProcess

EPHEMERAL = {"type": "ephemeral"}
TOOLS = [
    {"name": "Bash", "description": "Run a shell command.",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}},
    {"name": "Read", "description": "Read a file.",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}},
]
SYSTEM = [{"type": "text", "text": "You are a careful engineer."},
          {"type": "text", "text": "Answer briefly.", "cache_control": EPHEMERAL}]


def _prompt(turn: int) -> dict[str, Any]:
    """Turn `turn`'s prompt: the conversation so far, the breakpoint on its newest message."""
    messages: list[dict[str, Any]] = []
    for n in range(turn + 1):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"question {n}"}]})
        if n < turn:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": f"answer {n}"}]})
    messages[-1]["content"][-1]["cache_control"] = EPHEMERAL
    return {"tools": copy.deepcopy(TOOLS), "system": copy.deepcopy(SYSTEM), "messages": messages}


def _change(kind: str, prompt: dict[str, Any]) -> None:
    if kind == "tools":
        prompt["tools"].append({"name": "Write", "description": "Write a file.",
                                "input_schema": {"type": "object", "properties": {}}})
    elif kind == "system":
        prompt["system"][1]["text"] = "Answer in detail."
    elif kind == "messages":
        prompt["messages"][1]["content"][0]["text"] = "a different answer"


CASES = {  # kind -> (at, index, detail)
    "stable": None,
    "tools": ("tools", 2, "tool `Write` added"),
    "system": ("system", 1, "system block 1 changed"),
    "messages": ("messages", 1, "message 1 edited (assistant)"),
    "ttl": ("ttl", None, None),
}


@pytest.fixture(scope="module")
def proxy(proxy_factory) -> ProxyProcess:
    return proxy_factory(env={"ANTHROPIC_PROXY_CACHE_TTL_SCALE": "0.01"})  # the 5-minute cache lives 3 s


def _run_session(client, kind: str) -> str:
    session = str(uuid.uuid4())
    for turn in range(3):
        prompt = _prompt(turn)
        if turn == 2:
            _change(kind, prompt)
            if kind == "ttl":
                time.sleep(3.3)
        client.messages.create(model="claude-sonnet-4-5", max_tokens=32, **prompt,
                               extra_headers={"x-claude-code-session-id": session})
    return session


def test_third_calls_are_explained(proxy, client):
    sessions = {kind: _run_session(client, kind) for kind in CASES}
    for kind, expected in CASES.items():
        listed = proxy.list_records(session=sessions[kind], limit=10)["data"]
        assert [r["status"] for r in listed] == ["success"] * 3
        first, second, third = reversed(listed)
        assert first["cacheBreak"] is None and second["cacheBreak"] is None, kind
        found = third["cacheBreak"]
        if expected is None:
            assert found is None
            continue
        at, index, detail = expected
        assert (found["previousId"], found["at"], found["index"]) == (second["id"], at, index), kind
        if detail:
            assert found["detail"] == detail
        assert found["uncachedTokens"] > 0 and found["extraCostUsd"] > 0
        assert proxy.get_record(third["id"])["cacheBreak"] == found  # the detail view shows it too
    stats = proxy.get("/api/monitor/stats").json()["cacheBreaks"]
    assert {e["at"]: e["count"] for e in stats["byAt"]} == {"tools": 1, "system": 1, "messages": 1, "ttl": 1}
    assert stats["count"] == 4 and stats["extraCostUsd"] > 0
