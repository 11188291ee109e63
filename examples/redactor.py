"""Redactor: strip secrets from prompts before they leave the machine (and before they are recorded).

    mitmdump -s examples/redactor.py -s addons/proxy.py          # load it BEFORE the proxy

Load order matters: addons run in the order they are loaded, and the proxy's Router translates the body
(openrouter mode) and the Recorder keeps a copy of it in their `request` hooks. Loaded first, this script's
`request` hook changes the body before both, so neither OpenRouter, Anthropic nor the record store ever
sees the secret. (`requestheaders` cannot do this: the body has not arrived yet.) Loaded after the proxy it
logs an error, which stops mitmproxy at start-up (after a later hot reload it only switches itself off).

What is replaced, in the text the model reads (`system`, message text, tool results, tool inputs, documents'
text), each by `[REDACTED:<kind>]`: Anthropic, OpenAI and OpenRouter API keys, AWS access key ids and secret
keys, GitHub and Slack tokens, private key blocks, `Authorization: Bearer` values, and optionally e-mail
addresses (`--set redact_emails=true`). More patterns: `--set redact_patterns='regex1' --set
redact_patterns='regex2'` (a Sequence option; each match becomes `[REDACTED:custom]`).

Never touched: thinking and redacted_thinking blocks. Anthropic verifies their signatures, so changing one
byte of a thinking block makes the next request fail; they are the model's own output anyway.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader, traverse

logger = logging.getLogger("anthropic_proxy.examples.redactor")

REDACTED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("private-key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
                               re.DOTALL)),
    ("anthropic-key", re.compile(r"\bsk-ant-[A-Za-z0-9_\-]{20,}")),
    ("openrouter-key", re.compile(r"\bsk-or-v1-[A-Za-z0-9]{20,}")),
    ("openai-key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{32,}")),
    ("aws-access-key-id", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}\b")),
    ("aws-secret-access-key", re.compile(
        r"(?i)(?<=aws_secret_access_key)(\s*[=:]\s*[\"']?)[A-Za-z0-9/+=]{40}\b")),
    ("github-token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})")),
    ("slack-token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("bearer-token", re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._~+/\-]{20,}=*")),
]
EMAIL = ("email", re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"))
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


class Redactor:
    def __init__(self) -> None:
        self.patterns = list(PATTERNS)
        self.enabled = True

    def load(self, loader: Loader) -> None:
        loader.add_option("redact_emails", bool, False, "Also redact e-mail addresses in prompts.")
        loader.add_option("redact_patterns", Sequence[str], [],
                          "Extra regular expressions to redact from prompts (each match -> [REDACTED:custom]).")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"redact_emails", "redact_patterns"}:
            return
        patterns = list(PATTERNS)
        if ctx.options.redact_emails:
            patterns.append(EMAIL)
        for source in ctx.options.redact_patterns:
            try:
                patterns.append(("custom", re.compile(source)))
            except re.error as exc:
                raise exceptions.OptionsError(f"redact_patterns: {source!r} is not a valid regex: {exc}") from None
        self.patterns = patterns

    def running(self) -> None:
        if not loaded_before_proxy(self):
            self.enabled = False
            logger.error("redactor: load it BEFORE addons/proxy.py (mitmdump -s examples/redactor.py -s "
                         "addons/proxy.py); loaded after it, secrets would already be recorded. Redaction is off.")

    def request(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if (not self.enabled or flow.response or request.method != "POST"
                or request.path.split("?", 1)[0] not in REDACTED_PATHS):
            return
        try:
            body = json.loads(request.content or b"")
        except (ValueError, UnicodeDecodeError):
            return  # not JSON: the API will refuse it anyway
        if not isinstance(body, dict):
            return
        counts: dict[str, int] = {}
        self.redact_body(body, counts)
        if counts:
            request.content = json.dumps(body, ensure_ascii=False).encode()
            flow.metadata["redactor.counts"] = counts
            logger.info("redactor: %s in %s", ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())),
                        request.path)

    # --- the body ------------------------------------------------------------------------------------

    def redact_body(self, body: dict[str, Any], counts: dict[str, int]) -> None:
        if "system" in body:
            body["system"] = self.redact_content(body["system"], counts)
        for message in body.get("messages") or []:
            if isinstance(message, dict) and "content" in message:
                message["content"] = self.redact_content(message["content"], counts)

    def redact_content(self, content: Any, counts: dict[str, int]) -> Any:
        if isinstance(content, str):
            return self.redact_text(content, counts)
        if isinstance(content, list):
            return [self.redact_block(block, counts) for block in content]
        return content

    def redact_block(self, block: Any, counts: dict[str, int]) -> Any:
        if not isinstance(block, dict) or block.get("type") in _SKIPPED_BLOCKS:
            return block
        if isinstance(block.get("text"), str):
            block["text"] = self.redact_text(block["text"], counts)
        if "content" in block:  # tool_result, search results, documents with content blocks
            block["content"] = self.redact_content(block["content"], counts)
        if block.get("type") == "tool_use" and "input" in block:
            block["input"] = self.redact_json(block["input"], counts)
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
            source["data"] = self.redact_text(source["data"], counts)
        return block

    def redact_json(self, value: Any, counts: dict[str, int]) -> Any:
        if isinstance(value, str):
            return self.redact_text(value, counts)
        if isinstance(value, list):
            return [self.redact_json(v, counts) for v in value]
        if isinstance(value, dict):
            return {k: self.redact_json(v, counts) for k, v in value.items()}
        return value

    def redact_text(self, text: str, counts: dict[str, int]) -> str:
        for kind, pattern in self.patterns:
            text, n = pattern.subn(_replacement(kind, pattern), text)
            if n:
                counts[kind] = counts.get(kind, 0) + n
        return text


def _replacement(kind: str, pattern: re.Pattern[str]) -> Any:
    if pattern.groups:  # keep the separator the pattern captured (`aws_secret_access_key = `)
        return lambda m: m.group(1) + f"[REDACTED:{kind}]"
    return f"[REDACTED:{kind}]"


def loaded_before_proxy(addon: object) -> bool:
    """Whether `addon` runs before the proxy's Router (hooks run in load order)."""
    order = [type(a).__name__ for a in traverse(ctx.master.addons.chain) if a is addon or type(a).__name__ == "Router"]
    return not order or order[0] != "Router"


addons = [Redactor()]
