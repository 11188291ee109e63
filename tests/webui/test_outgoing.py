"""Every answer of the web app on its way out: keys masked (whole JSON answers, errors that quote the request, a
failing handler's reason and its log line), and a failing handler answers an Anthropic-shaped 500, not a bare one."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from anthropic_proxy.webui.outgoing import masked_answers

KEY = "sk-ant-api03-" + "secretMIDDLE" * 4 + "-end9"


def test_answers_leave_masked_and_failures_say_why(caplog) -> None:
    async def bad(_: web.Request) -> web.Response:
        raise web.HTTPBadRequest(text=f'{{"error": "got {KEY}"}}', content_type="application/json")

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"model": f"claude-{KEY}"})

    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError(f"the store at {KEY} broke")

    async def run() -> list[tuple[int, str, str]]:
        app = web.Application(middlewares=[masked_answers])
        for path, handler in (("/bad", bad), ("/ok", ok), ("/boom", boom)):
            app.router.add_get(path, handler)
        async with TestClient(TestServer(app)) as client:
            answers = []
            for path in ("/bad", "/ok", "/boom"):
                response = await client.get(path)
                answers.append((response.status, response.content_type, await response.text()))
            return answers

    with caplog.at_level(logging.ERROR, logger="anthropic_proxy.webui"):
        answers = asyncio.run(run())
    assert [(status, kind) for status, kind, _ in answers] == [(400, "application/json"), (200, "application/json"),
                                                               (500, "application/json")]
    assert all("secretMIDDLE" not in text and "sk-ant-api...end9" in text for _, _, text in answers)
    assert '"type": "api_error"' in answers[2][2] and "the store at" in answers[2][2]
    assert "RuntimeError" in caplog.text and "secretMIDDLE" not in caplog.text
