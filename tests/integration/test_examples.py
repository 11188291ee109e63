"""The example addons in examples/, each loaded into a real mitmdump beside addons/proxy.py, in front of the
fake Anthropic (and a fake OpenRouter), exactly as the docs tell users to run them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from fakes.harness import ADDON_SCRIPT, FAKE_API_KEY, REPO_ROOT, ProxyProcess, by_tag
from fakes.openrouter_upstream import DEFAULT_KEY, FakeOpenRouter

EXAMPLES = REPO_ROOT / "examples"
# A model the price table knows, so records get a cost.
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def launch(tmp_path) -> Iterator:
    started: list[ProxyProcess] = []

    def start(upstream: str, *, before: tuple[str, ...] = (), after: tuple[str, ...] = (),
              options: dict | None = None, env: dict | None = None, wait_ready: bool = True) -> ProxyProcess:
        """mitmdump -s <before...> -s addons/proxy.py -s <after...>: scripts load, and run, in this order."""
        scripts = [*(EXAMPLES / name for name in before), ADDON_SCRIPT, *(EXAMPLES / name for name in after)]
        p = ProxyProcess(workdir=tmp_path / f"run{len(started)}", upstream=upstream, options=options, env=env)
        p.addon_script = scripts[0]
        p.extra_args = [arg for script in scripts[1:] for arg in ("-s", str(script))]
        started.append(p)
        return p.start(wait_ready=wait_ready)

    yield start
    for p in started:
        p.close()


def client_for(proxy: ProxyProcess, tag: str, *, max_retries: int = 0, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=max_retries, timeout=20,
                               default_headers={"x-test-tag": tag, **headers})


def wait_for_exit(proxy: ProxyProcess, timeout: float = 15) -> int:
    assert proxy.proc is not None
    return proxy.proc.wait(timeout)


# ---- budget guard -------------------------------------------------------------------------------------------------
def wait_refused(client: anthropic.Anthropic, timeout: float = 10) -> anthropic.BadRequestError:
    """count_tokens until the guard refuses (its spend grows in a background hook once a record ends)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.messages.count_tokens(model=BODY["model"], messages=BODY["messages"])
        except anthropic.BadRequestError as exc:
            return exc
        assert time.monotonic() < deadline, "the budget guard never refused"
        time.sleep(0.05)


def test_budget_guard_refuses_once_the_limit_is_reached(launch, fake_anthropic, test_tag):
    proxy = launch(fake_anthropic.url, after=("budget_guard.py",), options={"budget_daily_usd": "0.000001"})
    attempts: list[httpx.Request] = []
    http_client = anthropic.DefaultHttpxClient(trust_env=False, event_hooks={"request": [attempts.append]})
    client = anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=3, http_client=http_client,
                                 default_headers={"x-test-tag": test_tag})
    client.messages.create(**BODY)  # under the limit: passes, and costs something
    first = proxy.wait_record(by_tag(test_tag))
    assert first["status"] == "success" and first["costUsd"] > 0.000001, first.get("costNote")
    refused = wait_refused(client)
    assert refused.status_code == 400 and refused.response.headers["x-should-retry"] == "false"
    error = refused.body["error"] if isinstance(refused.body, dict) and "error" in refused.body else refused.body
    assert error["type"] == "invalid_request_error"
    assert "budget guard: today's spend $" in error["message"] and "daily limit $0.00" in error["message"]
    attempts.clear()
    upstream_calls = len(fake_anthropic.tagged(test_tag))
    with pytest.raises(anthropic.BadRequestError, match="budget_daily_usd"):
        client.messages.create(**BODY)
    assert len(attempts) == 1, "the SDK (max_retries=3) does not retry the refusal"
    assert len(fake_anthropic.tagged(test_tag)) == upstream_calls, "a refused call never reaches the upstream"
    records = proxy.wait_records(by_tag(test_tag), count=3)
    assert records[-1]["status"] == "error" and records[-1]["error"]["type"] == "invalid_request_error"
    assert not records[-1].get("costUsd")


def test_budget_guard_counts_today_from_the_store(launch, fake_anthropic, test_tag):
    proxy = launch(fake_anthropic.url)
    client_for(proxy, test_tag).messages.create(**BODY)
    cost = proxy.wait_record(by_tag(test_tag))["costUsd"]
    assert cost > 0
    proxy.extra_args += ["-s", str(EXAMPLES / "budget_guard.py"), "--set", f"budget_daily_usd={cost / 2:.10f}"]
    proxy.restart()
    with pytest.raises(anthropic.BadRequestError, match="budget guard"):
        client_for(proxy, test_tag).messages.create(**BODY)
    assert "budget guard: $" in proxy.logs() and "spent today" in proxy.logs()


def test_budget_guard_zero_refuses_everything_and_needs_a_limit(launch, fake_anthropic, test_tag):
    proxy = launch(fake_anthropic.url, after=("budget_guard.py",), options={"budget_daily_usd": "0"})
    with pytest.raises(anthropic.BadRequestError):
        client_for(proxy, test_tag).messages.create(**BODY)
    assert fake_anthropic.tagged(test_tag) == []
    assert proxy.get("/health").status_code == 200, "the web app is not guarded"
    unset = launch(fake_anthropic.url, after=("budget_guard.py",), wait_ready=False)
    assert wait_for_exit(unset) != 0
    assert "budget_daily_usd must be an amount in USD such as 5 or 12.50 (got '')" in unset.logs()


def test_budget_guard_also_works_loaded_first(launch, fake_anthropic, test_tag):
    proxy = launch(fake_anthropic.url, before=("budget_guard.py",), options={"budget_daily_usd": "0"})
    with pytest.raises(anthropic.BadRequestError, match="budget guard"):
        client_for(proxy, test_tag).messages.create(**BODY)
    assert proxy.wait_record(by_tag(test_tag))["status"] == "error"


# ---- redactor ------------------------------------------------------------------------------------------------------
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ANTHROPIC_KEY = "sk-ant-api03-" + "abcDEF123_" * 8
GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5" * 4
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQUJD\n-----END OPENSSH PRIVATE KEY-----"
SECRETS = [AWS_KEY_ID, AWS_SECRET, ANTHROPIC_KEY, GITHUB_TOKEN, "b3BlbnNzaC1rZXktdjEAAAAA"]
THINKING = {"type": "thinking", "thinking": f"the user pasted {AWS_KEY_ID}; I must not repeat it",
            "signature": "EqQBCkYIARgCKkBsig=="}


def leaky_body(tag: str) -> dict:
    return {
        "model": BODY["model"], "max_tokens": 64, "metadata": {"user_id": tag},
        "system": [{"type": "text", "text": f"deploy with {ANTHROPIC_KEY}"}],
        "messages": [
            {"role": "user", "content": f"my creds: aws_access_key_id={AWS_KEY_ID}\n"
                                        f"aws_secret_access_key = {AWS_SECRET}\nmail me at dev@example.com"},
            {"role": "assistant", "content": [
                THINKING,
                {"type": "tool_use", "id": "toolu_1", "name": "bash",
                 "input": {"command": f"export GH={GITHUB_TOKEN}"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": PRIVATE_KEY}]},
                {"type": "text", "text": "what now?"},
            ]},
        ],
    }


def test_redactor_strips_secrets_before_upstream_and_store(launch, fake_anthropic, test_tag):
    proxy = launch(fake_anthropic.url, before=("redactor.py",), options={"redact_emails": True})
    client_for(proxy, test_tag).messages.create(**leaky_body(test_tag))
    sent = fake_anthropic.wait_for(lambda ex: ex.header("x-test-tag") == test_tag)
    text = sent.body.decode()
    for secret in [*SECRETS, "dev@example.com"]:
        assert secret not in text.replace(THINKING["thinking"], ""), secret
    body = sent.json()
    assert body["system"][0]["text"] == "deploy with [REDACTED:anthropic-key]"
    assert body["messages"][0]["content"] == ("my creds: aws_access_key_id=[REDACTED:aws-access-key-id]\n"
                                              "aws_secret_access_key = [REDACTED:aws-secret-access-key]\n"
                                              "mail me at [REDACTED:email]")
    assert body["messages"][1]["content"][0] == THINKING, "thinking blocks are signed: never changed"
    assert body["messages"][1]["content"][1]["input"] == {"command": "export GH=[REDACTED:github-token]"}
    assert body["messages"][2]["content"][0]["content"][0]["text"] == "[REDACTED:private-key]"
    # The record keeps the redacted body too: the secret never reaches the store.
    record = proxy.wait_record(by_tag(test_tag))
    stored = json.dumps(record["request"]["body"])
    assert AWS_SECRET not in stored and GITHUB_TOKEN not in stored and "[REDACTED:aws-secret-access-key]" in stored
    assert "redactor: " in proxy.logs()


def test_redactor_in_openrouter_mode_redacts_before_translation(launch, test_tag):
    with FakeOpenRouter() as fake:
        proxy = launch("https://api.anthropic.com", before=("redactor.py",),
                       options={"proxy_mode": "openrouter", "openrouter_base_url": fake.base_url},
                       env={"OPENROUTER_API_KEY": DEFAULT_KEY})
        body = {**leaky_body(test_tag), "model": "claude-haiku-4-5"}  # a model the fake has recordings of
        body["messages"] = [body["messages"][0]]
        client_for(proxy, test_tag).messages.create(**body)
        (sent,) = fake.by_user(test_tag)
        assert AWS_SECRET not in sent.body.decode() and "[REDACTED:aws-secret-access-key]" in sent.body.decode()


@pytest.mark.parametrize("example", ["redactor.py", "model_override.py"])
def test_loaded_after_the_proxy_refuses_to_start(launch, fake_anthropic, example):
    proxy = launch(fake_anthropic.url, after=(example,), wait_ready=False)
    assert wait_for_exit(proxy) != 0, "an error logged at start-up stops mitmproxy"
    assert f"{example.removesuffix('.py')}: load it BEFORE addons/proxy.py" in proxy.logs()


# ---- model override -------------------------------------------------------------------------------------------------
def test_model_override_header_rewrites_the_model(launch, fake_anthropic, test_tag):
    proxy = launch(fake_anthropic.url, before=("model_override.py",))
    client = client_for(proxy, test_tag, **{"x-anthropic-proxy-model": "claude-haiku-4-5"})
    client.messages.create(**BODY)
    sent = fake_anthropic.wait_for(lambda ex: ex.header("x-test-tag") == test_tag)
    assert sent.json()["model"] == "claude-haiku-4-5"
    assert sent.header("x-anthropic-proxy-model") is None, "the header never goes upstream"
    record = proxy.wait_record(by_tag(test_tag))
    assert record["model"] == "claude-haiku-4-5"
    # Without the header nothing changes; a bad value is refused before anything is sent.
    client_for(proxy, test_tag + "-plain").messages.create(**BODY)
    assert fake_anthropic.wait_for(lambda ex: ex.header("x-test-tag") == test_tag + "-plain").json() == BODY
    with pytest.raises(anthropic.BadRequestError, match="is not a model id"):
        client_for(proxy, test_tag + "-bad", **{"x-anthropic-proxy-model": "two words"}).messages.create(**BODY)
    assert fake_anthropic.tagged(test_tag + "-bad") == []


def test_model_override_applies_the_openrouter_mapping(launch, test_tag):
    with FakeOpenRouter() as fake:
        proxy = launch("https://api.anthropic.com", before=("model_override.py",),
                       options={"proxy_mode": "openrouter", "openrouter_base_url": fake.base_url},
                       env={"OPENROUTER_API_KEY": DEFAULT_KEY})
        client = client_for(proxy, test_tag, **{"x-anthropic-proxy-model": "claude-haiku-4-5"})
        client.messages.create(**{**BODY, "metadata": {"user_id": test_tag}})
        (sent,) = fake.by_user(test_tag)
        record = proxy.wait_record(by_tag(test_tag))
        assert record["model"] == "claude-haiku-4-5"
        assert sent.json()["model"] == record["upstreamModel"] and "haiku" in record["upstreamModel"]
        assert "x-anthropic-proxy-model" not in {k.lower() for k, _ in sent.raw_headers}


def test_examples_are_documented():
    docs = (REPO_ROOT / "docs" / "extending.md").read_text()
    for example in sorted(Path(EXAMPLES).glob("*.py")):
        assert f"examples/{example.name}" in docs, example.name
