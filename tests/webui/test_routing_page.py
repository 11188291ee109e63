"""The config page's providers, routes and fallbacks editor, and the monitor's attempts, in a real browser
(Debian's Chromium via Playwright) against a real mitmdump with fake upstreams."""

from __future__ import annotations

import anthropic
from fakes.harness import FAKE_API_KEY
from fakes.openai_compatible import LOCAL_TEXT, FakeOpenAICompatible
from playwright.sync_api import expect

from .conftest import open_monitor


def test_providers_routes_and_fallbacks_are_edited_tested_and_used(page, start_proxy, fake_anthropic):
    with FakeOpenAICompatible() as local:
        p = start_proxy()
        page.goto(f"{p.url}/config")
        toast = page.get_by_test_id("toast")
        expect(page.get_by_test_id("providers")).to_contain_text("built in")

        page.get_by_test_id("add-provider").click()
        row = page.get_by_test_id("provider-row").last
        row.get_by_test_id("provider-name").fill("local")
        row.get_by_test_id("provider-url").fill(local.base_url)
        row.get_by_test_id("provider-test-model").fill("qwen3")
        row.get_by_test_id("provider-test").click()  # one real call, before anything is saved
        expect(toast).to_contain_text("local answered qwen3")
        expect(toast).to_have_attribute("data-kind", "success")
        assert local.find(lambda ex: ex.json()["max_tokens"] == 1)

        page.get_by_test_id("add-route").click()
        page.get_by_test_id("add-route").click()
        first, second = page.get_by_test_id("route-row").all()
        first.get_by_test_id("route-thinking").select_option("true")
        second.get_by_test_id("route-family").select_option("haiku")
        second.get_by_test_id("route-provider").select_option("local")
        second.get_by_test_id("route-target-model").fill("qwen3")
        second.get_by_test_id("route-up").click()  # reorder: the haiku route first
        page.get_by_test_id("add-fallback").click()
        page.get_by_test_id("fallback-source").fill("anthropic")
        page.get_by_test_id("fallback-targets").fill("local:qwen3")

        # a key pasted where its variable's name belongs: refused, nothing saved
        row.get_by_test_id("provider-key-env").fill("sk-proj-" + "pastedSecret0123456789")
        page.get_by_test_id("save-routing").click()
        expect(toast).to_contain_text("Not saved")
        expect(toast).to_contain_text("NAME of the environment variable")
        assert p.get("/api/config").json()["providers"] == {}
        row.get_by_test_id("provider-key-env").fill("")
        page.get_by_test_id("save-routing").click()
        expect(toast).to_have_text("Providers, routes and fallbacks saved")
        saved = p.get("/api/config").json()
        assert saved["providers"]["local"]["baseUrl"] == local.base_url
        assert saved["routes"] == [{"when": {"family": "haiku"}, "provider": "local", "model": "qwen3"},
                                   {"when": {"thinking": True}, "provider": "anthropic"}]
        assert saved["fallbacks"] == {"anthropic": ["local:qwen3"]}

        # the saved routes apply to the next call, and a failover shows its attempts in the monitor
        client = anthropic.Anthropic(base_url=p.url, api_key=FAKE_API_KEY, max_retries=0,
                                     http_client=anthropic.DefaultHttpxClient(trust_env=False))
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=20,
                                         messages=[{"role": "user", "content": "hi"}],
                                         extra_headers={"x-fake-scenario": "overloaded"})
        assert message.content[0].text == LOCAL_TEXT
        record = p.wait_record(lambda r: r.get("provider") == "local")
        open_monitor(page, p)
        page.locator(f'[data-testid="request-row"][data-id="{record["id"]}"]').click()
        attempts = page.get_by_test_id("attempts")
        expect(attempts).to_contain_text("529")
        expect(attempts).to_contain_text("qwen3")
        page.get_by_test_id("filter-provider").select_option("local")
        expect(page.get_by_test_id("request-row")).to_have_count(1)
        errors = [e for e in page.console.errors if "400" not in e]  # the refused save is logged by the browser
        assert errors == []
