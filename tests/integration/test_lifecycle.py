"""Start-up and hot reload: the launcher's command, and a script reload that keeps exchanges in flight."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import anthropic
from fakes.harness import ADDON_SCRIPT, FAKE_API_KEY, ProxyProcess

from anthropic_proxy import cli

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def test_launcher_passes_mode_script_and_documented_options(monkeypatch):
    monkeypatch.setattr(cli.environment, "get", lambda name, default="": {"PORT": "9123"}.get(name, default))
    command = cli.build_command("mitmdump", ["--set", "proxy_mode=openrouter"])
    assert Path(command[0]).parent == Path(sys.executable).parent
    assert command[1:3] == ["--mode", "reverse:https://api.anthropic.com"]
    assert command[3:5] == ["-s", str(ADDON_SCRIPT.resolve())]
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    yaml_options = cli.mitm_options()
    assert "listen_port=9123" in sets and "connection_strategy=lazy" in sets and "keep_host_header=true" in sets
    assert set(yaml_options) >= {"listen_host", "connection_strategy", "keep_host_header", "flow_detail"}
    assert sets[-1] == "proxy_mode=openrouter", "the user's arguments come last, so they win"


def test_script_reload_keeps_in_flight_stream_and_store(tmp_path, fake_anthropic):
    script = tmp_path / "proxy.py"
    shutil.copy(ADDON_SCRIPT, script)
    proxy = ProxyProcess(workdir=tmp_path / "run", upstream=fake_anthropic.url)
    proxy.addon_script = script
    proxy.start()
    try:
        client = anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0,
                                     default_headers={"x-fake-scenario": "hold", "x-fake-hold-id": "reload"})
        result: dict = {}

        def consume() -> None:
            with client.messages.stream(**BODY) as stream:
                result["message"] = stream.get_final_message()

        worker = threading.Thread(target=consume)
        worker.start()
        fake_anthropic.wait_holding("reload")
        stat = script.stat()
        os.utime(script, (stat.st_atime, stat.st_mtime + 5))  # mitmproxy reloads a script whose mtime changed
        deadline = time.monotonic() + 10
        while proxy.logs().count("Loading script") < 2:
            assert time.monotonic() < deadline, proxy.logs()
            time.sleep(0.1)
        fake_anthropic.release("reload")
        worker.join(timeout=15)
        assert result["message"].stop_reason == "end_turn"
        record = proxy.wait_record(lambda r: True)
        assert record["status"] == "success" and record["message"]["content"][0]["text"]
        # and the reloaded addons serve new calls, recorded in the same store
        anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0).messages.create(**BODY)
        assert len(proxy.wait_records(lambda r: True, count=2)) == 2
        assert "Traceback" not in proxy.logs()
    finally:
        proxy.close()
