"""The Claude Code CLI through a route to a keyless OpenAI-compatible server: a hello, then a turn with a tool.

Needs the `claude` binary (`npm install @anthropic-ai/claude-code`): on PATH or at $ANTHROPIC_PROXY_TEST_CLAUDE;
without it the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes.harness import FAKE_API_KEY, claude_executable
from fakes.openai_compatible import LOCAL_TEXT, TOOL_ARGUMENT, FakeOpenAICompatible

CLAUDE = claude_executable()
pytestmark = pytest.mark.skipif(not CLAUDE, reason="Claude Code is not installed (npm i -g @anthropic-ai/claude-code, "
                                "or ANTHROPIC_PROXY_TEST_CLAUDE=/path/to/claude)")


@pytest.fixture(scope="module")
def local() -> Iterator[FakeOpenAICompatible]:
    with FakeOpenAICompatible() as fake:
        yield fake


def run_claude(proxy, workdir, prompt: str, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "OPENROUTER_"))}
    env.update(HOME=str(workdir), ANTHROPIC_BASE_URL=proxy.url, ANTHROPIC_API_KEY=FAKE_API_KEY,
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1", NO_PROXY="127.0.0.1")
    return subprocess.run([CLAUDE, "-p", prompt, "--model", "claude-sonnet-4-5", *extra], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


def test_claude_code_hello_and_tool_through_a_route_to_an_openai_compatible_server(
        start_proxy, local, tmp_path, fake_anthropic):
    proxy = start_proxy()
    r = httpx.post(proxy.url + "/api/config", trust_env=False, json={
        "providers": {"local": {"type": "openai", "baseUrl": local.base_url}},
        "routes": [{"when": {}, "provider": "local", "model": "local-coder"}]})
    assert r.status_code == 200, r.text
    before_anthropic = len(fake_anthropic.exchanges)

    hello = run_claude(proxy, tmp_path, "hello")
    assert hello.returncode == 0, hello.stderr + hello.stdout
    assert LOCAL_TEXT in hello.stdout

    tool = run_claude(proxy, tmp_path, "Summarise the README please", "--allowedTools", "Read")
    assert tool.returncode == 0, tool.stderr + tool.stdout
    assert LOCAL_TEXT in tool.stdout
    calls = [ex.json() for ex in local.exchanges if ex.path == "/v1/chat/completions"]
    assert {c["model"] for c in calls} == {"local-coder"}
    # Claude Code ran the tool the local model asked for, and sent its result back in the next call
    results = [m for c in calls for m in c["messages"] if m.get("role") == "tool" and m.get("tool_call_id")]
    hostname = Path(TOOL_ARGUMENT).read_text().strip()
    assert any(hostname in json.dumps(m["content"]) for m in results), json.dumps(calls[-1]["messages"])[:2000]
    assert len(fake_anthropic.exchanges) == before_anthropic  # nothing went to Anthropic
    records = proxy.list_records(limit=200)["data"]
    assert records and {r["provider"] for r in records} == {"local"}
