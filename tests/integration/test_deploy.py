"""deploy/: the Dockerfile, compose file, systemd unit, supervisor and PM2 files must match the project.

No container engine or init system runs here, so: the files are parsed and checked against the repository
(paths, the launcher, ports, the store's volume, the health check), `systemd-analyze verify` checks the unit
when it is installed, and the container's command and health check are run for real outside a container
with the same environment the image sets.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import anthropic
import pytest
from fakes.harness import FAKE_API_KEY, REPO_ROOT, child_env, free_port
from ruamel.yaml import YAML

DEPLOY = REPO_ROOT / "deploy"
INSTALL_DIR = "/opt/anthropic-proxy"  # a venv the package is pip-installed into: no checkout needed there
LAUNCH = f"{INSTALL_DIR}/bin/anthropic-proxy --set confdir=/var/lib/anthropic-proxy/mitmproxy"
HEALTHCHECK = ["python", "-m", "anthropic_proxy.healthcheck"]


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def compose() -> dict:
    return YAML(typ="safe").load((DEPLOY / "docker-compose.yml").read_text())


def test_dockerfile_installs_the_package_and_runs_the_launcher():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    copied = [source for instruction, args in dockerfile() if instruction == "COPY" for source in args.split()[:-1]]
    for source in copied:
        assert (REPO_ROOT / source).exists(), source
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs <= set(copied), "every folder of the installed package is copied"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for source in copied:
        assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is kept out of the build context"
    instructions = dict(dockerfile())
    assert "anthropic-proxy" in pyproject["project"]["scripts"]
    assert instructions["CMD"].startswith('["anthropic-proxy"')
    runs = [args for i, args in dockerfile() if i == "RUN"]
    assert any('pip install "/src[postgres,otel]" && rm -rf /src' in args for args in runs), "plain install"
    assert not any("-e " in args for args in runs)
    env = docker_env()
    assert env["HOST"] == "0.0.0.0" and env["ANTHROPIC_PROXY_HOME"] == "/data"
    assert instructions["VOLUME"] == '["/data"]' and instructions["EXPOSE"] == env["PORT"]
    assert instructions["HEALTHCHECK"].endswith('CMD ["python", "-m", "anthropic_proxy.healthcheck", "--quiet"]')


def test_compose_keeps_the_store_on_a_volume_and_checks_health():
    service = compose()["services"]["anthropic-proxy"]
    env = docker_env()
    assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    volume, target = service["volumes"][0].split(":")
    assert volume in compose()["volumes"] and target == service["environment"]["ANTHROPIC_PROXY_HOME"] == "/data"
    host_ip, host_port, container_port = service["ports"][0].split(":")
    assert host_ip == "127.0.0.1"
    assert host_port == container_port == service["environment"]["PORT"] == env["PORT"], \
        "same port outside and inside: the web app checks the Host header"
    assert service["healthcheck"]["test"][1:4] == HEALTHCHECK
    assert service["env_file"][0] == {"path": "../.env", "required": False}
    assert service["restart"] == "unless-stopped"


def test_service_managers_run_the_same_command():
    unit = (DEPLOY / "systemd" / "anthropic-proxy.service").read_text()
    supervisor = (DEPLOY / "supervisor" / "anthropic-proxy.conf").read_text()
    pm2 = (DEPLOY / "pm2" / "ecosystem.config.js").read_text()
    assert f"ExecStart={LAUNCH}\n" in unit
    assert f"command={LAUNCH}\n" in supervisor
    assert f'script: "{INSTALL_DIR}/bin/anthropic-proxy"' in pm2
    assert 'args: ["--set", "confdir=/var/lib/anthropic-proxy/mitmproxy"]' in pm2
    for text in (unit, supervisor, pm2):
        assert "ANTHROPIC_PROXY_HOME" in text and "/var/lib/anthropic-proxy" in text
        # only the venv's own programs: nothing of a checkout
        assert set(re.findall(rf"{INSTALL_DIR}/([\w./-]+)", text)) <= {"bin/anthropic-proxy", "bin/python", "bin/pip"}
    assert f"ExecStartPost={INSTALL_DIR}/bin/python -m anthropic_proxy.healthcheck --wait" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path):
    venv = Path(sys.executable).parent.parent
    text = (DEPLOY / "systemd" / "anthropic-proxy.service").read_text()
    unit = tmp_path / "anthropic-proxy.service"
    unit.write_text(text.replace(INSTALL_DIR, str(venv)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_pm2_file_loads():
    script = f"const c = require({str(DEPLOY / 'pm2' / 'ecosystem.config.js')!r}); console.log(c.apps[0].interpreter)"
    result = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "none", result.stderr


# ---- the container's command and health check, run for real (outside a container) --------------------------------
def healthcheck(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *HEALTHCHECK[1:], *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PORT": str(port)})


def test_container_command_and_health_check(tmp_path, fake_anthropic):
    port = free_port()
    env = {**docker_env(), "PORT": str(port), "ANTHROPIC_PROXY_HOME": str(tmp_path / "data"),
           "HOME": str(tmp_path / "data"), "ANTHROPIC_UPSTREAM_URL": fake_anthropic.url}
    command = shlex.split(dict(dockerfile())["CMD"].strip("[]").replace(",", " "))
    assert command[0] == "anthropic-proxy"
    command = [str(Path(sys.executable).with_name("anthropic-proxy")), *command[1:]]
    command[-1] = command[-1].replace("/data", str(tmp_path / "data"))
    assert healthcheck(port).returncode == 1, "nothing listens yet"
    with open(tmp_path / "proxy.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env=child_env(tmp_path / "data", env))
    try:
        waited = healthcheck(port, "--wait", "20")
        assert waited.returncode == 0, (waited.stderr, (tmp_path / "proxy.log").read_text())
        assert waited.stdout.startswith("ok: mode anthropic")
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=FAKE_API_KEY, max_retries=0)
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        assert healthcheck(port, "--quiet").stdout == ""
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, "SIGTERM ends mitmdump cleanly"
    log = (tmp_path / "proxy.log").read_text()
    assert f"listening at 0.0.0.0:{port}" in log or f"*:{port}" in log, log[-2000:]
    assert (tmp_path / "data" / "records.sqlite3").exists() and (tmp_path / "data" / "mitmproxy").is_dir()
    failed = healthcheck(port)
    assert failed.returncode == 1 and "Connection refused" in failed.stderr
