"""Which thinking blocks passthrough drops from a history: the ones this proxy made from OpenRouter reasoning."""

from __future__ import annotations

from typing import Any

import pytest

from anthropic_proxy.translate.reasoning import SIGNATURE_PREFIX, strip_openrouter_reasoning

OURS = f"{SIGNATURE_PREFIX}e30="


def test_only_the_blocks_with_our_signature_go():
    kept = [{"type": "thinking", "thinking": "b", "signature": "EqQBCkYIARgCKkB"},  # Anthropic's own
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy"}, {"type": "text", "text": OURS}]
    body = {"messages": [{"role": "assistant", "content": [
        {"type": "thinking", "thinking": "a", "signature": OURS}, {"type": "redacted_thinking", "data": OURS},
        *kept]}]}
    assert strip_openrouter_reasoning(body) == 2
    assert body["messages"][0]["content"] == kept


@pytest.mark.parametrize("messages", [5, None, "text", {"role": "user"}, [5, None, {"content": 7}, {"content": [1]}]])
def test_a_body_of_odd_shape_is_left_as_it_is(messages: Any):
    body = {"messages": messages}
    assert strip_openrouter_reasoning(body) == 0
    assert body == {"messages": messages}
