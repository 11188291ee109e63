"""The launcher's capture options, run for real: `anthropic-proxy --forward/--local` refusing bad settings with one
line, and `anthropic-proxy claude` starting (or reusing) the proxy around a Claude Code stand-in.

The stand-in is a small script named `claude` on PATH: it records its arguments and environment, makes one API call
the way Claude Code would in that environment (ANTHROPIC_BASE_URL, or HTTPS_PROXY), and exits with a chosen code.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes.harness import FAKE_API_KEY, by_tag, child_env, free_port

from anthropic_proxy.record.model import Record
from anthropic_proxy.store import RecordFilter, Store

LAUNCHER = str(Path(sys.executable).with_name("anthropic-proxy"))

FAKE_CLAUDE = """#!{python}
import json, os, sys
import httpx

forward = os.environ.get("HTTPS_PROXY")
base = os.environ.get("ANTHROPIC_BASE_URL") or os.environ["FAKE_CLAUDE_TARGET"]
answer = httpx.post(base + "/v1/messages", proxy=forward, trust_env=False, timeout=20,
                    headers={{"x-api-key": os.environ["FAKE_CLAUDE_KEY"], "x-test-tag": os.environ["FAKE_CLAUDE_TAG"]}},
                    json={{"model": "claude-sonnet-4-5-20250929", "max_tokens": 8,
                           "messages": [{{"role": "user", "content": "hi"}}]}})
names = ("ANTHROPIC_BASE_URL", "HTTPS_PROXY", "NODE_EXTRA_CA_CERTS")
with open(os.environ["FAKE_CLAUDE_OUT"], "w") as out:
    json.dump({{"args": sys.argv[1:], "env": {{n: os.environ.get(n) for n in names}}, "status": answer.status_code}},
              out)
sys.exit(int(os.environ.get("FAKE_CLAUDE_EXIT", "0")))
"""


def launcher_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    claude = bin_dir / "claude"
    claude.write_text(FAKE_CLAUDE.format(python=sys.executable))
    claude.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return child_env(tmp_path / "home", {"PATH": path, "ANTHROPIC_PROXY_HOME": str(tmp_path / "state"),
                                         "FAKE_CLAUDE_OUT": str(tmp_path / "claude.json"),
                                         "FAKE_CLAUDE_KEY": FAKE_API_KEY, **extra})


def launch(tmp_path: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAUNCHER, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL)


def stored(tmp_path: Path, tag: str) -> list[Record]:
    """The records the proxy (stopped by now) left in its store, with this tag."""
    store = Store(tmp_path / "state", close_orphans=False)
    try:
        return [r for r in store.iter_records(RecordFilter()) if r.request.headers.get("x-test-tag") == tag]
    finally:
        store.close()


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def busy_port() -> Any:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("case", ["forward port in use", "reverse port in use", "bad capture host", "CA not writable"])
def test_bad_settings_are_one_line_and_start_nothing(tmp_path, busy_port, case):
    port, forward = free_port(), free_port()
    args, env = ["--forward", str(forward)], launcher_env(tmp_path, PORT=str(port))
    if case == "forward port in use":
        args, forward = ["--forward", str(busy_port)], busy_port
        expected = f"port {busy_port} on 127.0.0.1 (the forward"
    elif case == "reverse port in use":
        env["PORT"], port, expected = str(busy_port), busy_port, f"port {busy_port} on 127.0.0.1 (the reverse proxy"
    elif case == "bad capture host":
        args += ["--set", "capture_hosts=https://api.anthropic.com/"]
        expected = "capture_hosts takes bare host names such as api.anthropic.com: 'https://api.anthropic.com/'"
    else:
        (tmp_path / "a-file").write_text("")
        args += ["--set", f"confdir={tmp_path / 'a-file' / 'mitmproxy'}"]
        expected = "mitmproxy cannot write its CA certificate to"
    result = launch(tmp_path, args, env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"anthropic-proxy: {expected}"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert all(port_is_free(p) for p in {port, forward} - {busy_port}), "nothing was left listening"


def test_claude_runs_through_a_proxy_started_for_it(tmp_path, fake_anthropic, test_tag):
    port = free_port()
    env = launcher_env(tmp_path, PORT=str(port), ANTHROPIC_UPSTREAM_URL=fake_anthropic.url, FAKE_CLAUDE_TAG=test_tag,
                       FAKE_CLAUDE_EXIT="7", ANTHROPIC_BASE_URL="https://elsewhere.invalid")
    result = launch(tmp_path, ["claude", "-p", "two words", "--model", "opus"], env)
    assert result.returncode == 7, result.stderr
    seen = json.loads((tmp_path / "claude.json").read_text())
    assert seen["args"] == ["-p", "two words", "--model", "opus"]
    assert seen["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}" and seen["env"]["HTTPS_PROXY"] is None
    assert seen["status"] == 200 and len(fake_anthropic.tagged(test_tag)) == 1
    assert port_is_free(port), "the proxy started for the session is stopped with it"
    (record,) = stored(tmp_path, test_tag)
    assert record.status == "success"


def test_claude_with_forward_capture_keeps_the_official_base_url(tmp_path, fake_anthropic, test_tag):
    port, forward = free_port(), free_port()
    env = launcher_env(tmp_path, PORT=str(port), ANTHROPIC_UPSTREAM_URL=fake_anthropic.url, FAKE_CLAUDE_TAG=test_tag,
                       CAPTURE_HOSTS=f"{fake_anthropic.host},api.anthropic.com", FAKE_CLAUDE_TARGET=fake_anthropic.url,
                       ANTHROPIC_BASE_URL="https://elsewhere.invalid")
    result = launch(tmp_path, ["claude", "--forward", str(forward), "--", "--forward"], env)
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "claude.json").read_text())
    assert seen["args"] == ["--forward"], "after --, everything is Claude Code's"
    ca = Path(seen["env"]["NODE_EXTRA_CA_CERTS"])
    assert seen["env"]["ANTHROPIC_BASE_URL"] is None and seen["env"]["HTTPS_PROXY"] == f"http://127.0.0.1:{forward}"
    assert ca == tmp_path / "home" / ".mitmproxy" / "mitmproxy-ca-cert.pem" and ca.is_file()
    assert seen["status"] == 200
    assert port_is_free(port) and port_is_free(forward)
    (record,) = stored(tmp_path, test_tag)
    assert record.status == "success"


def test_claude_reuses_the_running_proxy(tmp_path, proxy, test_tag):
    env = launcher_env(tmp_path, PORT=str(proxy.port), FAKE_CLAUDE_TAG=test_tag)
    result = launch(tmp_path, ["claude"], env)
    assert result.returncode == 0, result.stderr
    assert proxy.wait_record(by_tag(test_tag))["status"] == "success"
    assert proxy.proc is not None and proxy.proc.poll() is None, "a proxy it did not start is left running"
