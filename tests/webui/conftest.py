"""Browser fixtures for the web pages' tests: Debian's Chromium driven by Playwright (never a downloaded
browser), one browser per module, a fresh context per test with console errors collected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.harness import ProxyProcess
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is required: apt-get install -y chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


class Console:
    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")


@pytest.fixture
def page(browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    p = context.new_page()
    p.set_default_timeout(10_000)
    p.console = Console(p)  # type: ignore[attr-defined]
    yield p
    context.close()


def open_monitor(page: Page, proxy: ProxyProcess, query: str = "") -> None:
    page.goto(f"{proxy.url}/monitor{query}")
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-state", "live")
