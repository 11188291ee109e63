"""What a request was for: its request type (`classify`), and whether it is a new prompt (`is_user_turn`,
`turn_key`), read from the record's request body and answer. The analysis report (analysis.py) groups by both.

Request types (`classify`), deterministic, first rule that matches wins:

 1. `token count`      the call is `/v1/messages/count_tokens`.
 2. Keywords in the latest user text (the last user message that holds text a person typed, skipping
    `<system-reminder>` blocks and tool results, so a tool loop keeps the intent of the prompt that began it):
    `debugging`        error, bug, fix, traceback, exception, stack trace, crash, fail..., broken, not working, debug
    `testing`          test(s), testing, pytest, unit test, coverage
    `refactoring`      refactor, clean up, restructure, rename, simplify, reorganize, deduplicate
    `code review`      review, audit, critique
    `documentation`    docs, documentation, document, readme, docstring, changelog, comment(s)
    `explanation`      explain, why, how does/do/is/are/can/should, what is/are/does/do, what's, walk me through
 3. Tools, from the tool calls in the answer and in the conversation's latest assistant turn:
    `testing`          Bash running a test command (pytest, npm test, go test, cargo test, jest, ...)
    `code generation`  Edit / Write / MultiEdit / NotebookEdit on a source file (by extension)
    `file operations`  those tools on any other file, or Bash moving / copying / deleting / creating files
    `analysis`         Read, Glob, Grep, LS, NotebookRead, WebFetch, WebSearch, Task / Agent (exploration)
    `shell commands`   any other Bash call
    `tool use`         any other tool (MCP servers, custom tools)
 4. `code generation`  the latest user text asks to implement / add / create / write / build / generate / make.
 5. `conversation`     text only; `other` when the request has no readable body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from anthropic_proxy.record.model import Record, text_preview
from anthropic_proxy.record.pricing import counts_tokens

REQUEST_TYPES = ("debugging", "testing", "refactoring", "code review", "documentation", "explanation",
                 "code generation", "file operations", "analysis", "shell commands", "tool use", "conversation",
                 "token count", "other")

_KEYWORD_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(pattern, re.IGNORECASE)) for
                                                                name, pattern in (
    ("debugging", r"\b(errors?|bugs?|buggy|fix(es|ed|ing)?|traceback|exceptions?|stack ?traces?|crash(es|ed|ing)?|"
                  r"fail(s|ed|ing|ure|ures)?|broken|not working|doesn'?t work|does not work|debug\w*)\b"),
    ("testing", r"\b(tests?|testing|pytest|unit ?tests?|coverage)\b"),
    ("refactoring", r"\b(refactor\w*|clean ?up|restructur\w*|renam\w*|simplif\w*|reorgani[sz]\w*|dedup\w*)\b"),
    ("code review", r"\b(review\w*|audit\w*|critique)\b"),
    ("documentation", r"\b(docs?|documentation|document|readme|docstrings?|changelog|comments?)\b"),
    ("explanation", r"\b(explain\w*|why|how (does|do|is|are|can|should)|what (is|are|does|do)|what's|"
                    r"walk me through)\b"),
))
_GENERATE = re.compile(r"\b(implement\w*|add|create|write|build|generate|make|scaffold)\b", re.IGNORECASE)
_TEST_COMMAND = re.compile(
    r"\b(pytest|py\.test|unittest|tox|nox|jest|vitest|mocha|rspec|phpunit|ctest)\b"
    r"|\b(npm|pnpm|yarn|bun)\s+(run\s+)?test\b"
    r"|\b(go|cargo|mvn|gradle|gradlew|dotnet|mix|swift|make|deno|zig)\s+test\b|\bbin/test\b")
_FILE_COMMAND = re.compile(r"(^|[;&|]\s*)(mv|cp|rm|mkdir|rmdir|touch|chmod|chown|ln|tar|zip|unzip|rsync)\b")
_EDIT_TOOLS = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit", "str_replace_based_edit_tool",
                         "str_replace_editor"})
_READ_TOOLS = frozenset({"Read", "Glob", "Grep", "LS", "NotebookRead", "WebFetch", "WebSearch", "Task", "Agent",
                         "web_search", "web_fetch", "ToolSearch"})
_SHELL_TOOLS = frozenset({"Bash", "bash", "BashOutput"})
_CODE_EXTENSIONS = frozenset((
    "py", "pyi", "ipynb", "js", "jsx", "ts", "tsx", "mjs", "cjs", "go", "rs", "java", "kt", "kts", "scala", "c", "h",
    "cc", "cpp", "cxx", "hpp", "hh", "cs", "fs", "rb", "php", "swift", "m", "mm", "lua", "pl", "r", "jl", "sh",
    "bash", "zsh", "fish", "ps1", "sql", "vue", "svelte", "dart", "ex", "exs", "erl", "hs", "ml", "clj", "groovy",
    "tf", "zig", "nim", "sol", "css", "scss", "sass", "less", "html", "htm"))


# ---- reading a record --------------------------------------------------------------------------------------
def _messages(record: Record) -> list[Any]:
    body = record.request.body
    messages = body.get("messages") if isinstance(body, dict) else None
    return messages if isinstance(messages, list) else []


def _tool_calls(content: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(content, list):
        return
    for block in content:
        if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
            name = block.get("name")
            if isinstance(name, str) and name:
                tool_input = block.get("input")
                yield name, tool_input if isinstance(tool_input, dict) else {}


def answer_tool_calls(record: Record) -> list[tuple[str, dict[str, Any]]]:
    """The tools the model called in its answer."""
    return list(_tool_calls(record.message.get("content") if isinstance(record.message, dict) else None))


def recent_tool_calls(record: Record) -> list[tuple[str, dict[str, Any]]]:
    """The tools called in the conversation's latest assistant turn (what the request carries results of)."""
    for message in reversed(_messages(record)):
        if isinstance(message, dict) and message.get("role") == "assistant":
            return list(_tool_calls(message.get("content")))
    return []


def latest_user_text(record: Record, limit: int = 4000) -> str:
    return text_preview(record, limit)


def _is_count_tokens(record: Record) -> bool:
    return counts_tokens(record.request.path)


def is_user_turn(record: Record) -> bool:
    """Whether the request's latest user message holds text a person typed (not only tool results)."""
    if _is_count_tokens(record):
        return False
    for message in reversed(_messages(record)):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return bool(content.strip())
        if isinstance(content, list):
            return any(isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
                       and b["text"].strip() and not b["text"].startswith("<system-reminder>") for b in content)
        return False
    return False


def turn_key(record: Record) -> str | None:
    """What identifies the user prompt a request answers (None when the request is not a new prompt)."""
    return latest_user_text(record, 2000) if is_user_turn(record) else None


def _file_path(tool_input: dict[str, Any]) -> str:
    value = tool_input.get("file_path") or tool_input.get("notebook_path") or tool_input.get("path") or ""
    return value if isinstance(value, str) else ""


def _is_code_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[-1].lower() in _CODE_EXTENSIONS


def classify(record: Record) -> str:
    """The request type (see the module docstring for the rules)."""
    if _is_count_tokens(record):
        return "token count"
    if not isinstance(record.request.body, dict):
        return "other"
    text = latest_user_text(record)
    for name, pattern in _KEYWORD_RULES:
        if pattern.search(text):
            return name
    calls = answer_tool_calls(record) + recent_tool_calls(record)
    names = {name for name, _ in calls}
    commands = [str(tool_input.get("command") or "") for name, tool_input in calls if name in _SHELL_TOOLS]
    if any(_TEST_COMMAND.search(command) for command in commands):
        return "testing"
    edits = [_file_path(tool_input) for name, tool_input in calls if name in _EDIT_TOOLS]
    if any(_is_code_file(path) for path in edits):
        return "code generation"
    if edits or any(_FILE_COMMAND.search(command) for command in commands):
        return "file operations"
    if names & _READ_TOOLS:
        return "analysis"
    if names & _SHELL_TOOLS:
        return "shell commands"
    if names:
        return "tool use"
    if _GENERATE.search(text):
        return "code generation"
    return "conversation"
