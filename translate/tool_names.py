"""Tool names longer than OpenAI's 64-character limit, shortened reversibly.

MCP tools reach Claude Code as `mcp__<server>__<tool>` and easily pass 64 characters, which Anthropic
accepts and OpenAI-style APIs reject. The short form keeps a readable prefix plus a hash of the full name,
so it is stable across turns (history and tool definitions shorten the same way) and collisions are
practically impossible; the proxy maps it back before Claude Code sees it.
"""

from __future__ import annotations

import hashlib

OPENAI_TOOL_NAME_LIMIT = 64
_HASH_LENGTH = 8


def shorten_tool_name(name: str) -> str:
    if len(name) <= OPENAI_TOOL_NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{name[: OPENAI_TOOL_NAME_LIMIT - _HASH_LENGTH - 1]}_{digest}"


def original_tool_name(name: str, tool_names: dict[str, str]) -> str:
    return tool_names.get(name, name)
