"""The monitor and config pages in a real browser (Debian's Chromium via Playwright) against a real
mitmdump running the addon, with requests made by the anthropic SDK through the proxy.

Set WEBUI_SCREENSHOTS=1 to also refresh docs/screenshots/ (monitor.png, monitor-detail.png, config.png).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

from fakes.anthropic_upstream import FINAL_TEXT
from fakes.harness import REPO_ROOT
from fakes.openrouter_upstream import FakeOpenRouter
from playwright.sync_api import Page, expect

from .conftest import open_monitor
from .test_api import send, unique_model, wait_final

SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & "quotes"'


def rows(page: Page):
    return page.get_by_test_id("request-row")


def test_monitor_loads_without_console_errors(page, proxy):
    model = unique_model()
    send(proxy, model, "before the page opened")
    wait_final(proxy, model, 1)
    open_monitor(page, proxy)
    total = proxy.get("/api/monitor/stats").json()["total"]
    expect(page.get_by_test_id("stat-total")).to_have_text(f"{total:,}")
    expect(page.get_by_test_id("stat-cost")).not_to_have_text("—")
    expect(rows(page).first).to_be_visible()
    for testid in ("filter-status", "filter-model", "filter-provider", "filter-time", "search", "export", "analyze"):
        expect(page.get_by_test_id(testid)).to_be_visible()
    assert page.locator("#chart-requests rect").count() > 0  # the charts are drawn
    page.wait_for_timeout(300)
    assert page.console.errors == []


def test_request_appears_live_then_turns_into_its_result(page, proxy, fake_anthropic):
    open_monitor(page, proxy)
    model = unique_model()
    hold = uuid.uuid4().hex
    sender = threading.Thread(target=send, args=(proxy, model, "a live one"), daemon=True,
                              kwargs={"stream": True, "scenario": "hold", "headers": {"x-fake-hold-id": hold}})
    sender.start()
    try:
        fake_anthropic.wait_holding(hold)
        record = proxy.wait_record(lambda r: r.get("model") == model, final=False)
        row = page.locator(f'[data-testid="request-row"][data-id="{record["id"]}"]')
        expect(row).to_be_visible()  # no reload: it came over the event stream
        expect(row).to_have_attribute("data-status", "pending")
        expect(row).to_contain_text("live")
        row.click()
        expect(page.get_by_test_id("detail")).to_contain_text(model)
    finally:
        fake_anthropic.release(hold)
    sender.join(15)
    expect(row).to_have_attribute("data-status", "success")
    detail = page.get_by_test_id("detail")
    expect(detail).to_contain_text("Stream timeline")
    expect(detail).to_contain_text("message_stop")
    expect(detail).to_contain_text("a live one")
    assert page.console.errors == []


def test_detail_shows_answer_usage_and_masked_headers(page, proxy):
    model = unique_model()
    send(proxy, model, "show me the detail")
    wait_final(proxy, model, 1)
    record = proxy.wait_record(lambda r: r.get("model") == model)
    open_monitor(page, proxy)
    page.locator(f'[data-testid="request-row"][data-id="{record["id"]}"]').click()
    detail = page.get_by_test_id("detail")
    expect(detail).to_contain_text(FINAL_TEXT)
    expect(detail).to_contain_text("Output tokens")
    expect(detail).to_contain_text("29")
    detail.get_by_text("headers (secrets masked)").click()
    expect(detail).to_contain_text("sk-ant-api...Z9AA")  # the key, masked
    assert "FAKEKEYsecretMIDDLE" not in detail.inner_text()


def test_filters_and_search_change_the_rows(page, proxy):
    model_a, model_b = unique_model(), unique_model()
    word = f"quokka{uuid.uuid4().hex[:6]}"
    send(proxy, model_a, f"first {word}")
    send(proxy, model_a, "second")
    send(proxy, model_a, "fails", scenario="overloaded")
    send(proxy, model_b, "other")
    wait_final(proxy, model_a, 3)
    wait_final(proxy, model_b, 1)
    open_monitor(page, proxy)
    page.get_by_test_id("filter-model").select_option(model_a)
    expect(rows(page)).to_have_count(3)
    expect(page.get_by_test_id("stat-total")).to_have_text("3")
    assert set(rows(page).locator("td.model").all_inner_texts()) == {model_a}
    page.get_by_test_id("filter-status").select_option("error")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-status", "error")
    page.get_by_test_id("filter-status").select_option("")
    page.get_by_test_id("search").fill(word)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text(word)
    page.get_by_test_id("filter-time").select_option("1h")
    expect(rows(page)).to_have_count(1)
    page.get_by_test_id("search").fill("")
    page.get_by_test_id("filter-model").select_option(model_b)
    expect(rows(page)).to_have_count(1)
    expect(page.get_by_test_id("filter-provider")).to_have_value("")
    page.get_by_test_id("filter-provider").select_option("openrouter")
    expect(rows(page)).to_have_count(0)
    assert page.console.errors == []


def test_hostile_prompt_renders_as_text(page, proxy):
    model = f"claude-<b>bold</b>-{uuid.uuid4().hex[:6]}"
    send(proxy, model, HOSTILE)
    record = proxy.wait_record(lambda r: r.get("model") == model)
    open_monitor(page, proxy)
    row = page.locator(f'[data-testid="request-row"][data-id="{record["id"]}"]')
    expect(row.locator("td.preview")).to_have_text(HOSTILE)
    expect(row.locator("td.model")).to_have_text(model)
    row.click()
    detail = page.get_by_test_id("detail")
    expect(detail.locator("h2")).to_have_text(model)
    expect(detail).to_contain_text(HOSTILE)
    assert page.locator("img[src=x], b, main script").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_export_button_downloads_a_file(page, proxy):
    model = unique_model()
    send(proxy, model, "to export")
    send(proxy, model, "to export too", stream=True)
    wait_final(proxy, model, 2)
    open_monitor(page, proxy, f"?model={model}")
    expect(rows(page)).to_have_count(2)
    with page.expect_download() as info:
        page.get_by_test_id("export").click()
    download = info.value
    assert download.suggested_filename.endswith(".json")
    assert [r["model"] for r in json.loads(Path(download.path()).read_text())] == [model, model]
    assert len(page.context.pages) == 1  # a download, not a new tab
    assert page.url.endswith(f"/monitor?model={model}")


def test_analyze_opens_a_summary(page, proxy):
    model = unique_model()
    send(proxy, model, "to analyze")
    wait_final(proxy, model, 1)
    open_monitor(page, proxy, f"?model={model}")
    page.get_by_test_id("analyze").click()
    dialog = page.get_by_test_id("analyze-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Request types")
    expect(dialog).to_contain_text("100.0%")


def test_config_page_switches_the_mode_and_shows_toasts(page, start_proxy, fake_anthropic):
    p = start_proxy(options={"openrouter_base_url": f"{fake_anthropic.url}/api/v1"})
    page.goto(f"{p.url}/config")
    anthropic_btn, openrouter_btn = page.get_by_test_id("mode-anthropic"), page.get_by_test_id("mode-openrouter")
    expect(anthropic_btn).to_have_attribute("aria-pressed", "true")
    for testid in ("map-sonnet", "map-opus", "map-haiku", "save", "reset", "test-key"):
        expect(page.get_by_test_id(testid)).to_be_visible()
    openrouter_btn.click()
    # no OPENROUTER_API_KEY in the test environment: the page asks first, and says so after the switch
    expect(page.get_by_test_id("confirm")).to_contain_text("OPENROUTER_API_KEY is not set")
    page.get_by_test_id("confirm-yes").click()
    toast = page.get_by_test_id("toast")
    expect(toast).to_contain_text("Mode switched to openrouter. OpenRouter mode, but OPENROUTER_API_KEY is not set")
    expect(toast).to_have_attribute("data-kind", "warning")
    expect(page.get_by_test_id("config-warnings")).to_contain_text("every call is refused (401)")
    expect(openrouter_btn).to_have_attribute("aria-pressed", "true")
    assert p.get("/api/config").json()["mode"] == "openrouter"
    assert p.health()["mode"] == "openrouter"

    page.get_by_test_id("map-haiku").fill("not a valid model id")
    page.get_by_test_id("save").click()
    expect(toast).to_contain_text("Saving failed")
    expect(toast).to_have_attribute("data-kind", "error")
    page.get_by_test_id("map-haiku").fill("some/haiku-model")
    page.get_by_test_id("save").click()
    expect(toast).to_have_text("Model mapping saved")
    assert p.get("/api/config").json()["models"]["haiku"] == "some/haiku-model"

    page.get_by_test_id("reset").click()
    page.get_by_test_id("confirm-yes").click()
    expect(toast).to_have_text("Configuration reset to the defaults")
    expect(anthropic_btn).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("config-warnings")).to_be_hidden()
    assert p.get("/api/config").json()["mode"] == "anthropic"
    page.get_by_test_id("test-key").click()
    expect(toast).to_have_attribute("data-kind", "error")  # no OPENROUTER_API_KEY in the test environment
    # the browser logs the refused save (HTTP 400) itself; nothing else may show up
    assert page.console.errors == [
        "error: Failed to load resource: the server responded with a status of 400 (Bad Request)"]


def test_config_page_says_what_pins_the_mode_and_what_each_family_maps_to(page, start_proxy):
    with FakeOpenRouter() as fake:
        p = start_proxy(options={"openrouter_base_url": fake.base_url, "proxy_mode": "openrouter"},
                        env={"OPENROUTER_API_KEY": "sk-or-v1-" + "0" * 64})
        deadline = time.monotonic() + 10  # the proxy reads OpenRouter's model list in the background
        while p.get("/api/config").json()["modelMap"]["opus"]["source"] == "fallback":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        open_monitor(page, p)
        model_map = page.get_by_test_id("model-map")
        expect(model_map).to_have_text("sonnet → anthropic/claude-sonnet-5opus → anthropic/claude-opus-4.8"
                                       "haiku → anthropic/claude-haiku-4.5other → anthropic/claude-sonnet-5")
        assert "newest of the family" in model_map.locator('[data-family="opus"]').get_attribute("title")

        page.goto(f"{p.url}/config")
        pinned = page.get_by_test_id("mode-pinned")
        expect(pinned).to_have_text("Pinned to openrouter by --set proxy_mode: a switch here lasts only until the "
                                    "proxy restarts.")
        # the families follow OpenRouter's list (the fake's newest opus is 4.8); the field is empty, not pinned
        expect(page.get_by_test_id("map-opus")).to_have_attribute("placeholder", "anthropic/claude-opus-4.8")
        expect(page.get_by_test_id("map-opus")).to_have_value("")
        expect(page.get_by_test_id("map-source-opus")).to_have_text(
            "→ anthropic/claude-opus-4.8: the newest opus in OpenRouter's model list")
        page.get_by_test_id("map-opus").fill("anthropic/claude-opus-4.5")
        page.get_by_test_id("save").click()
        expect(page.get_by_test_id("map-source-opus")).to_contain_text("anthropic/claude-opus-4.5: pinned here")
        assert p.get("/api/config").json()["modelMap"]["opus"] == {"id": "anthropic/claude-opus-4.5",
                                                                   "source": "pinned"}
        page.get_by_test_id("mode-anthropic").click()
        expect(page.get_by_test_id("confirm")).to_contain_text("--set proxy_mode pins the mode to openrouter")
        page.get_by_test_id("confirm-no").click()
        assert p.get("/api/config").json()["mode"] == "openrouter"  # nothing changed
        page.get_by_test_id("mode-anthropic").click()
        page.get_by_test_id("confirm-yes").click()
        expect(page.get_by_test_id("toast")).to_contain_text("only until the proxy restarts")
        expect(page.get_by_test_id("config-warnings")).to_contain_text("--set proxy_mode sets it back to openrouter")
        assert page.console.errors == []


def test_screenshots_of_both_pages(page, proxy, tmp_path):
    """Screenshots of a populated monitor, a detail view and the config page: written to a temporary folder,
    or to docs/screenshots/ (the README's pictures) when WEBUI_SCREENSHOTS=1."""
    folder = SCREENSHOTS if os.environ.get("WEBUI_SCREENSHOTS") else tmp_path
    for i, (model, scenario) in enumerate([("claude-sonnet-4-5", None), ("claude-haiku-4-5", "stream_tool"),
                                           ("claude-opus-4-1", "rate_limit"), ("claude-sonnet-4-5", None)]):
        send(proxy, model, f"Refactor the parser, step {i}", stream=True, scenario=scenario)
    folder.mkdir(parents=True, exist_ok=True)
    open_monitor(page, proxy)
    page.wait_for_timeout(500)
    page.screenshot(path=folder / "monitor.png")
    rows(page).nth(2).click()
    expect(page.get_by_test_id("detail")).to_be_visible()
    page.wait_for_timeout(500)
    page.screenshot(path=folder / "monitor-detail.png")
    page.goto(f"{proxy.url}/config")
    expect(page.get_by_test_id("map-source-sonnet")).not_to_have_text("")
    page.wait_for_timeout(800)
    page.screenshot(path=folder / "config.png")
    for name in ("monitor.png", "monitor-detail.png", "config.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_import_button_uploads_a_file_and_costs_share_one_rule_per_column(page, proxy, tmp_path):
    """Import: the file picker uploads an export (multipart). The imported records' costs, $0.0123 and $0.000078,
    show with the same decimals in the list's cost column (it showed $0.01 next to $0.000078)."""
    model = unique_model()
    send(proxy, model, "to copy")
    wait_final(proxy, model, 1)
    [line] = proxy.get("/api/monitor/export", model=model, format="ndjson").text.splitlines()
    copies, copied_model = [], unique_model()
    for cost in (0.0123, 0.000078):
        record = json.loads(line)
        record.update(id=uuid.uuid4().hex, model=copied_model, costUsd=cost)
        copies.append(json.dumps(record))
    upload = tmp_path / "records.ndjson"
    upload.write_text("\n".join(copies) + "\n")

    open_monitor(page, proxy)
    page.get_by_test_id("import-file").set_input_files(upload)
    expect(page.get_by_test_id("toast")).to_have_text("Imported 2 of 2 records from records.ndjson")
    page.get_by_test_id("filter-model").select_option(copied_model)
    expect(rows(page)).to_have_count(2)
    assert sorted(rows(page).locator("td.cost").all_inner_texts()) == ["$0.000078", "$0.012300"]
    page.get_by_test_id("import-file").set_input_files(upload)  # the same file again: nothing new
    expect(page.get_by_test_id("toast")).to_contain_text("Imported 0 of 2 records from records.ndjson (2 were")
    assert page.console.errors == []


def test_detail_closes_when_the_search_leaves_its_record_out(page, proxy):
    model = unique_model()
    word = f"wombat{uuid.uuid4().hex[:6]}"
    send(proxy, model, "the first one")
    send(proxy, model, f"the second one, {word}")
    first = proxy.wait_records(lambda r: r.get("model") == model, count=2, timeout=15)[0]
    open_monitor(page, proxy, f"?model={model}")
    page.locator(f'[data-testid="request-row"][data-id="{first["id"]}"]').click()
    detail = page.get_by_test_id("detail")
    expect(detail).to_contain_text("the first one")
    page.get_by_test_id("search").fill(word)
    expect(rows(page)).to_have_count(1)
    expect(detail).to_be_hidden()
    page.get_by_test_id("search").fill("")
    expect(rows(page)).to_have_count(2)
    rows(page).first.click()  # a record still in the list keeps its detail open when the filters change
    expect(detail).to_be_visible()
    page.get_by_test_id("filter-time").select_option("1h")
    page.wait_for_timeout(300)
    expect(detail).to_be_visible()


def test_request_list_is_above_the_fold_at_1440x900_and_the_overview_folds(browser, proxy):
    """With 20 sessions on record (the sessions table shows 20), the list's first rows are on a 1440x900 screen;
    the charts and sessions fold away, and the page remembers that."""
    for i in range(21):
        send(proxy, "claude-sonnet-4-5", f"session {i}", headers={"x-claude-code-session-id": f"fold-{uuid.uuid4()}"})
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        page = context.new_page()
        open_monitor(page, proxy)
        expect(page.get_by_test_id("session-row")).to_have_count(20)
        expect(rows(page).first).to_be_in_viewport(ratio=1)  # (live updates re-render the rows: not a snapshot)
        expect(page.locator("#chart-requests")).to_be_visible()
        # (the rate-limit panel above the list comes with its own fetch: measured before it shows, the list would
        # move down by its height while the overview folds)
        expect(page.get_by_test_id("ratelimits")).to_be_visible()
        list_top = "document.querySelector('table.requests').getBoundingClientRect().top"
        top = page.evaluate(list_top)

        toggle = page.get_by_test_id("toggle-overview")
        toggle.click()
        expect(page.locator("#chart-requests")).to_be_hidden()
        expect(page.get_by_test_id("sessions-table")).to_be_hidden()
        assert page.evaluate(list_top) < top - 300
        page.reload()
        expect(page.get_by_test_id("toggle-overview")).to_have_attribute("aria-expanded", "false")
        expect(page.locator("#chart-requests")).to_be_hidden()
        page.get_by_test_id("toggle-overview").click()
        expect(page.locator("#chart-requests")).to_be_visible()
        page.reload()
        expect(page.locator("#chart-requests")).to_be_visible()
    finally:
        context.close()
