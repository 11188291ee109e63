"""`anthropic-proxy claude [--forward [[HOST:]PORT]] [--] [ARGS...]`: Claude Code through the proxy.

Uses the proxy already answering on the configured address (HOST/PORT, mitm_config.yaml), or starts one for the
session (its log in the state dir) and stops it when Claude Code exits. Claude Code gets the environment of the
chosen capture: `ANTHROPIC_BASE_URL` pointing at the reverse proxy, or with `--forward` the official base URL
through `HTTPS_PROXY` with mitmproxy's CA in `NODE_EXTRA_CA_CERTS`. Its arguments and exit code pass through.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from anthropic_proxy.cli import DEFAULT_FORWARD, _state_dir, build_command, forward_address, mitm_options, preflight
from anthropic_proxy.preflight import CA_FILE, LaunchError, confdir

START_TIMEOUT = 30.0
_FORWARD_VALUE = re.compile(r"^(\S+:)?\d+$")
_UNSPECIFIED = {"", "0.0.0.0", "::", "*"}


def split_arguments(argv: list[str]) -> tuple[tuple[str, int] | None, list[str]]:
    """Our leading `--forward [[HOST:]PORT]` (or `--forward=...`), an optional `--`, then Claude Code's arguments."""
    forward = None
    rest = list(argv)
    if rest and (rest[0] == "--forward" or rest[0].startswith("--forward=")):
        value = rest.pop(0).partition("=")[2]
        if not value and rest and _FORWARD_VALUE.match(rest[0]):
            value = rest.pop(0)
        forward = forward_address(value) if value else DEFAULT_FORWARD
    if rest and rest[0] == "--":
        rest.pop(0)
    return forward, rest


def claude_environment(base: Mapping[str, str], reverse_url: str, forward_url: str | None,
                       ca_file: Path) -> dict[str, str]:
    env = dict(base)
    if forward_url is None:
        env["ANTHROPIC_BASE_URL"] = reverse_url
        return env
    env.pop("ANTHROPIC_BASE_URL", None)  # the point of forward capture: Claude Code talks to its official host
    env.pop("https_proxy", None)
    env["HTTPS_PROXY"] = forward_url
    env["NODE_EXTRA_CA_CERTS"] = str(ca_file)
    return env


def _url(host: str, port: int, scheme: str = "http") -> str:
    host = "127.0.0.1" if host in _UNSPECIFIED else host
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _is_our_proxy(url: str) -> bool:
    try:
        answer = httpx.get(f"{url}/health", timeout=2, trust_env=False)
        info = answer.json()
    except (httpx.HTTPError, ValueError):
        return False
    return answer.status_code == 200 and isinstance(info, dict) and {"mode", "version"} <= info.keys()


def _accepts_connections(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1" if host in _UNSPECIFIED else host,
                                                                 port), timeout=2):
        return True
    return False


@contextlib.contextmanager
def _proxy_for_session(url: str, forward: tuple[str, int] | None) -> Iterator[None]:
    """The proxy for this session: the one answering at `url`, or one started now and stopped at the end."""
    if _is_our_proxy(url):
        if forward is not None and not _accepts_connections(*forward):
            raise LaunchError(f"the proxy at {url} has no forward listener on {forward[0]}:{forward[1]}: stop it, or "
                              "start it with anthropic-proxy --forward")
        yield
        return
    command = build_command("mitmdump", [], forward=forward)
    preflight(command, forward=forward)
    log_path = _state_dir(None) / "claude-proxy.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        # Its own session: the Ctrl-C that Claude Code uses to interrupt a turn must not stop the proxy.
        proxy = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _is_our_proxy(url):
            if proxy.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise LaunchError(f"the proxy did not start (its log, {log_path}: {' | '.join(tail)})")
            time.sleep(0.1)
        yield
    finally:
        proxy.terminate()
        try:
            proxy.wait(15)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def run_claude(argv: list[str]) -> int:
    """Run Claude Code through the proxy; its exit code (128 + N when a signal N ended it)."""
    forward, claude_args = split_arguments(argv)
    executable = shutil.which("claude")
    try:
        if executable is None:
            raise LaunchError("claude not found on PATH: install Claude Code "
                              "(npm install -g @anthropic-ai/claude-code)")
        options = mitm_options()
        url = _url(str(options["listen_host"]), int(options["listen_port"]))
        with _proxy_for_session(url, forward):
            forward_url = _url(*forward) if forward is not None else None
            ca_file = confdir([]) / CA_FILE
            # This process's environment, not .env's (its secrets are the proxy's).
            env = claude_environment(os.environ, url, forward_url, ca_file)
            claude = subprocess.Popen([executable, *claude_args], env=env)
            # Ctrl-C is Claude Code's to handle (it interrupts a turn); a SIGTERM or SIGHUP for us goes on to it, and
            # the proxy is stopped once it has exited.
            handlers = {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: lambda signum, _: claude.send_signal(signum),
                        signal.SIGHUP: lambda signum, _: claude.send_signal(signum)}
            previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
            try:
                code = claude.wait()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
    except LaunchError as exc:
        raise SystemExit(f"anthropic-proxy: {exc}") from None
    return 128 - code if code < 0 else code

