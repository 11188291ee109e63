"""The `anthropic-proxy` launcher as a user runs it: its arguments win over mitm_config.yaml, its start-up line
says where calls go, the terminal shows one line per API call, the CLI's export behaves in a pipe, and
`bin/setup-venv` (under `bin/run`) installs only when pyproject.toml changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import anthropic
import httpx
from fakes.harness import FAKE_API_KEY, REPO_ROOT, UNREACHABLE_PORT, ProxyProcess, child_env

LAUNCHER = Path(sys.executable).with_name("anthropic-proxy")
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
# POST /v1/messages 200 · claude-sonnet-4-5 · anthropic · end_turn · in 12 / out 34 tok (cache read 5, write 3)
#   · $0.000123 · 0.01 s
CALL_LINE = re.compile(r"\] POST /v1/messages 200 · claude-sonnet-4-5 · anthropic · end_turn · in \d+ / out \d+ tok"
                       r"( \(cache read \d+, write \d+\))? · \$\d+\.\d+ · \d+\.\d\d s\n")


def run_cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LAUNCHER), *args], capture_output=True, text=True, timeout=60,
                          env=env or child_env(Path(os.environ.get("HOME", "/tmp"))), **kwargs)


class Launched(ProxyProcess):
    """A proxy started through the launcher (mode, script and mitm_config.yaml come from it), not mitmdump."""

    def command(self) -> list[str]:
        return [str(LAUNCHER), "--set", f"listen_port={self.port}", "--set", f"state_dir={self.state_dir}",
                "--set", f"confdir={self.confdir}", "--set", f"anthropic_upstream={self.upstream}",
                "--set", f"openrouter_base_url=http://127.0.0.1:{UNREACHABLE_PORT}/api/v1", *self.extra_args]


def test_the_users_arguments_win_over_mitm_config_yaml(tmp_path):
    command = run_cli("--print-command", "--set", "listen_port=19082", "--set=termlog_verbosity=warn",
                      "--set", "anthropic_upstream=http://127.0.0.1:19090", "--set", "flow_detail=1").stdout.split()
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert [s for s in sets if s.startswith("listen_port=")] == ["listen_port=19082"]
    assert "termlog_verbosity=info" not in sets and "--set=termlog_verbosity=warn" in command
    assert [s for s in sets if s.startswith("flow_detail=")] == ["flow_detail=1"]
    assert "keep_host_header=true" in sets, "the options the user leaves alone still come from the yaml"
    assert command[command.index("--mode") + 1] == "reverse:http://127.0.0.1:19090", \
        "mitmproxy's reverse target (printed at start-up, shown in mitmweb) is the configured upstream"
    prefixed = run_cli("--print-command", "--set", "anthropic_upstream=http://127.0.0.1:19090/base").stdout.split()
    assert prefixed[prefixed.index("--mode") + 1] == "reverse:http://127.0.0.1:19090", "mitmproxy takes no path there"
    env = child_env(tmp_path, {"PORT": "9999"})
    for args in (["-p", "9123"], ["--port", "9123"], ["--set", "listen_port=9123"]):
        sets = run_cli("--print-command", *args, env=env).stdout.split()
        assert "listen_port=9123" in sets and "listen_port=9999" not in sets, args
    sets = run_cli("--print-command", "--host", "0.0.0.0", env=env).stdout.split()
    assert "listen_host=0.0.0.0" in sets and "listen_host=127.0.0.1" not in sets


def test_launcher_start_line_and_one_terminal_line_per_call(tmp_path, fake_anthropic):
    proxy = Launched(workdir=tmp_path, upstream=fake_anthropic.url)
    proxy.start()  # before the fix: "mitmdump: Received multiple values for listen_port"
    try:
        client = anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0)
        with httpx.stream("GET", proxy.url + "/api/monitor/stream", timeout=20, trust_env=False) as live:
            next(live.iter_lines())  # subscribed: this call's end is taken in the proxy, as it happens
            client.messages.create(**BODY)
        with client.messages.stream(**BODY) as stream:  # watched by nobody: its outcome is read by the writer
            stream.get_final_message()
        records = proxy.wait_records(lambda r: True, count=2)
        assert {r["status"] for r in records} == {"success"}
        proxy.get("/monitor")
        deadline = time.monotonic() + 10
        while len(CALL_LINE.findall(proxy.logs())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proxy.stop()
    logs = proxy.logs()
    assert len(CALL_LINE.findall(logs)) == 2, logs
    assert f"anthropic mode, API calls to http://127.0.0.1:{proxy.port}/v1/messages are passed through to " \
           f"{fake_anthropic.url}; monitor: http://127.0.0.1:{proxy.port}/monitor" in logs
    assert f"reverse proxy to {fake_anthropic.url}" in logs and "api.anthropic.com" not in logs
    assert "content missing" not in logs, "mitmproxy's own flow lines are off"
    assert "GET " not in logs and "/api/monitor" not in logs, "nothing of the web app's own traffic"
    assert "client connect" not in logs and "Streaming response" not in logs, "nor of connections"


def test_export_into_a_closed_pipe_and_from_no_store(tmp_path):
    state = tmp_path / "state"
    missing = tmp_path / "does" / "not" / "exist"
    result = run_cli("export", "--state-dir", str(missing))
    assert result.returncode != 0 and f"no record store in {missing}" in result.stderr
    assert not missing.exists(), "export must not create a store"
    # A store with enough records that the output outlives `head`'s appetite.
    prompt = "x" * 2000
    rows = [{"id": f"rec{i}", "timestamp": f"2026-01-01T00:00:{i % 60:02d}Z", "status": "success",
             "request": {"method": "POST", "path": "/v1/messages", "headers": {},
                         "body": {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": prompt}]}}}
            for i in range(300)]
    (tmp_path / "records.ndjson").write_text("".join(json.dumps(row) + "\n" for row in rows))
    imported = run_cli("import", str(tmp_path / "records.ndjson"), "--state-dir", str(state))
    assert imported.returncode == 0 and "300 imported" in imported.stdout, imported.stderr
    piped = subprocess.run(f"'{LAUNCHER}' export --format csv --state-dir '{state}' | head -n 2", shell=True,
                           capture_output=True, text=True, timeout=60, env=child_env(tmp_path))
    assert len(piped.stdout.splitlines()) == 2 and piped.stdout.startswith("id,")
    assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, piped.stderr


def test_help_lists_the_commands_and_the_port():
    text = run_cli("--help").stdout
    # (argparse writes "-p PORT, --port PORT" on 3.12 and "-p, --port PORT" on 3.13)
    for words in ("export", "import", "addon-path", "-p", "--port PORT", "--set NAME=VALUE"):
        assert words in text, words


def test_setup_venv_installs_only_when_pyproject_changes(tmp_path):
    """bin/run runs bin/setup-venv at every start: pip must run only when the install is out of date."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "pip-calls"
    # The venv's python: the test's own interpreter, except that pip only notes that it was called.
    (venv / "bin" / "python").write_text(
        f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ]; then echo "$*" >> "{calls}"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n')
    (venv / "bin" / "python").chmod(0o755)

    def setup(extras: str) -> list[str]:
        before = calls.read_text().splitlines() if calls.exists() else []
        subprocess.run([str(REPO_ROOT / "bin" / "setup-venv"), str(venv), extras], check=True, timeout=60)
        return (calls.read_text().splitlines() if calls.exists() else [])[len(before):]

    assert any("install" in call and "-e" in call for call in setup("test")), "a new venv gets the project"
    assert setup("test") == [], "nothing changed: no pip"
    assert setup("") == [], "bin/run after bin/test: the project is there"
    assert any(f"-e {REPO_ROOT}[postgres]" in call for call in setup("postgres")), "other extras: install them"
    assert setup("test") == [] and setup("postgres") == []


def test_addon_path_is_the_script_to_load():
    result = run_cli("addon-path")
    assert result.returncode == 0
    assert Path(result.stdout.strip()) == (REPO_ROOT / "addons" / "proxy.py").resolve()


def test_a_wheel_installed_outside_the_checkout_records_a_call(tmp_path, fake_anthropic):
    """pip install (not editable) of the built wheel into a fresh venv: the launcher finds its addon script and
    mitm_config.yaml inside the package. The new venv borrows the test venv's dependencies (a path entry, not
    its .pth files, so the checkout's editable install stays out) instead of downloading them."""
    src = tmp_path / "src"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for folder in set(pyproject["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(REPO_ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "wheels"), str(src)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert "Warning" not in built.stdout + built.stderr, "packaging warnings (license, undeclared packages)"
    wheel = next((tmp_path / "wheels").glob("anthropic_proxy-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "--disable-pip-version-check", str(wheel)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # mitmdump as pip would have installed it with mitmproxy
    (venv / "bin" / "mitmdump").write_text(f"#!{python}\nimport sys\nfrom mitmproxy.tools.main import mitmdump\n"
                                           "sys.exit(mitmdump())\n")
    (venv / "bin" / "mitmdump").chmod(0o755)
    launcher = venv / "bin" / "anthropic-proxy"
    env = child_env(tmp_path)
    addon = subprocess.run([str(launcher), "addon-path"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert Path(addon.stdout.strip()) == Path(site) / "anthropic_proxy" / "addons" / "proxy.py", addon.stderr

    class FromWheel(Launched):
        def command(self) -> list[str]:
            return [str(launcher), *super().command()[1:]]

    proxy = FromWheel(workdir=tmp_path / "run", upstream=fake_anthropic.url)
    proxy.start()  # before: "run it from an editable install of the repository"
    try:
        anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0).messages.create(**BODY)
        assert proxy.wait_record(lambda r: True)["status"] == "success"
        assert proxy.get("/monitor").status_code == 200, "the pages ship in the wheel"
        assert "Cost by model" in proxy.get("/api/monitor/analyze").text, "the analysis page's template ships too"
    finally:
        proxy.stop()
    assert f"Loading script {Path(site) / 'anthropic_proxy' / 'addons' / 'proxy.py'}" in proxy.logs()
    # No code of the checkout ran (the test venv's own packages may live inside the checkout, so look at its folders).
    for folder in ("anthropic_proxy", "addons", "translate", "webui"):
        assert f"{REPO_ROOT / folder}/" not in proxy.logs(), folder
