"""Test harness: a mitmdump child running addons/proxy.py and helpers to read its record API.

Importable from test modules as `fakes.harness` (tests/ is on sys.path, see tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anthropic
import httpx

try:  # the SDK's own HTTP library (anthropic >= 2 ships the httpx fork `httpx2`)
    import httpx2 as sdk_httpx
except ImportError:  # pragma: no cover
    sdk_httpx = httpx

# What the SDK raises when a stream breaks off: an API error, or its HTTP library's transport error.
STREAM_BREAK_ERRORS: tuple[type[Exception], ...] = (anthropic.APIError, httpx.HTTPError, sdk_httpx.HTTPError)

REPO_ROOT = Path(__file__).resolve().parents[2]
# ANTHROPIC_PROXY_TEST_ADDON points the harness at another addon script (debugging the harness itself).
ADDON_SCRIPT = Path(os.environ.get("ANTHROPIC_PROXY_TEST_ADDON") or REPO_ROOT / "addons" / "proxy.py")
DATA_DIR = REPO_ROOT / "tests" / "data"
UNREACHABLE_PORT = 9  # discard: nothing listens there, so a connection is refused at once

# Long and key-shaped, so masking (first 10 chars + "..." + last 4) leaves a long secret middle to look for.
FAKE_API_KEY = "sk-ant-api03-" + "FAKEKEYsecretMIDDLE0123456789abcdefghijklmnopqrstuvwxyz" + "-XyZ9AA"
FINAL_STATUSES = frozenset({"success", "error", "cancelled"})


def mitmdump_path() -> Path:
    """mitmdump from the running interpreter's environment (venv bin/ or Scripts/)."""
    bindir = Path(sys.executable).parent
    for name in ("mitmdump", "mitmdump.exe"):
        if (bindir / name).exists():
            return bindir / name
    raise RuntimeError(f"mitmdump not found next to {sys.executable}")


def claude_executable() -> str | None:
    """The Claude Code CLI for the tests that run it: $ANTHROPIC_PROXY_TEST_CLAUDE, else `claude` on PATH."""
    return os.environ.get("ANTHROPIC_PROXY_TEST_CLAUDE") or shutil.which("claude")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "OPENROUTER_"))
    }
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def headers_get(headers: Any, name: str) -> str | None:
    """A header value from a record's headers, whichever shape the store uses (dict or list of pairs)."""
    name = name.lower()
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    for item in items:
        k, v = item[0], item[1]
        if str(k).lower() == name:
            return v
    return None


def by_tag(tag: str) -> Callable[[dict[str, Any]], bool]:
    """Record predicate: the client request carried `x-test-tag: <tag>`."""

    def predicate(record: dict[str, Any]) -> bool:
        request = record.get("request") or {}
        return headers_get(request.get("headers") or {}, "x-test-tag") == tag

    predicate.__name__ = f"by_tag({tag})"
    return predicate


def json_body(value: Any) -> Any:
    """A record body that may be stored parsed or as a string."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def first_text(events: Iterator[Any]) -> str | None:
    """Read an SDK message stream's events up to its first text delta; the rest stays in `events`."""
    for event in events:
        if event.type == "text":
            return event.text
    return None


class ProxyProcess:
    """A mitmdump child running addons/proxy.py, with helpers to read its record API."""

    def __init__(
        self,
        *,
        workdir: Path,
        upstream: str | None,
        options: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.confdir = workdir / "mitm"
        self.home = workdir / "home"
        for d in (self.state_dir, self.confdir, self.home):
            d.mkdir(parents=True, exist_ok=True)
        self.upstream = upstream
        self.options = dict(options or {})
        self.extra_args = list(extra_args)
        self.env = child_env(self.home, env)
        self.port = port or free_port()
        self.addon_script = ADDON_SCRIPT
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_info: dict[str, Any] | None = None
        self._run = 0
        self._http = httpx.Client(trust_env=False, timeout=5)
        self._final_cache: dict[str, dict[str, Any]] = {}

    # ---- process ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [str(mitmdump_path()), "-s", str(self.addon_script),
               "--set", f"state_dir={self.state_dir}",
               "--set", f"confdir={self.confdir}",
               "--set", f"listen_port={self.port}"]
        if self.upstream is not None:
            cmd += ["--set", f"anthropic_upstream={self.upstream}"]
        if "openrouter_base_url" not in self.options:
            # Tests never reach the internet: OpenRouter is a local fake or nothing (connection refused).
            cmd += ["--set", f"openrouter_base_url=http://127.0.0.1:{UNREACHABLE_PORT}/api/v1"]
        for key, value in self.options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            cmd += ["--set", f"{key}={value}"]
        return cmd + self.extra_args

    def start(self, *, wait_ready: bool = True, timeout: float = 15.0) -> ProxyProcess:
        assert self.proc is None or self.proc.poll() is not None, "proxy already running"
        self._run += 1
        self.stdout_path = self.workdir / f"mitmdump.{self._run}.stdout.log"
        self.stderr_path = self.workdir / f"mitmdump.{self._run}.stderr.log"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env,
                cwd=self.workdir,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"mitmdump exited with {self.proc.returncode} before becoming ready\n{self.logs()}"
                )
            try:
                r = self._http.get(self.url + "/health", timeout=1)
                if r.status_code == 200:
                    info = r.json()
                    if isinstance(info, dict) and info.get("status") == "ok":
                        self.health_info = info
                        return info
                last = f"{r.status_code} {r.text[:300]!r}"
            except (httpx.HTTPError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"proxy not ready after {timeout}s (last: {last})\n{self.logs()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def writer_pid(self, timeout: float = 10.0) -> int:
        """The store's writer process: this proxy's child running anthropic_proxy.store.writer (a killed one is
        replaced a moment later: waited for up to `timeout` seconds)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == self.proc.pid and b"anthropic_proxy.store.writer" in cmdline:
                    return int(entry.name)
            time.sleep(0.1)
        raise AssertionError("no store writer process")

    def restart(self, *, timeout: float = 15.0) -> ProxyProcess:
        """Stop (SIGTERM) and start again on the same port, state_dir and confdir."""
        self.stop()
        self._final_cache.clear()
        deadline = time.monotonic() + 10
        while True:  # the port can take a moment to be bindable again
            try:
                return self.start(timeout=timeout)
            except AssertionError:
                if time.monotonic() > deadline or "address already in use" not in self.logs().lower():
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self.stop()
        self._http.close()

    def logs(self, tail: int = 20000) -> str:
        parts = []
        for path in sorted(self.workdir.glob("mitmdump.*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"----- {path.name} -----\n{text[-tail:]}")
        return "\n".join(parts)

    # ---- HTTP helpers ------------------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> httpx.Response:
        return self._http.get(self.url + path, params={k: v for k, v in params.items() if v is not None})

    def health(self) -> dict[str, Any]:
        r = self.get("/health")
        assert r.status_code == 200, r.text
        return r.json()

    def list_records(self, **params: Any) -> dict[str, Any]:
        r = self.get("/api/monitor/requests", **params)
        assert r.status_code == 200, f"{r.status_code} {r.text[:500]}"
        return r.json()

    def get_record(self, record_id: str) -> dict[str, Any] | None:
        r = self.get(f"/api/monitor/requests/{record_id}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"{r.status_code} {r.text[:500]}"
        return r.json()

    def records(self, predicate: Callable[[dict[str, Any]], bool] | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
        """Full records (newest first) among the newest `limit`, optionally filtered by `predicate`.

        The predicate sees the list item when it carries request headers (summaries do), else the full
        record; full records of final status are cached (they no longer change).
        """
        out = []
        for item in self.list_records(limit=limit).get("data", []):
            cached = self._final_cache.get(item["id"])
            if cached is None and predicate is not None and "request" in item and not predicate(item):
                continue
            record = cached or self.get_record(item["id"])
            if record is None:
                continue
            if record.get("status") in FINAL_STATUSES:
                self._final_cache[record["id"]] = record
            if predicate is None or predicate(record):
                out.append(record)
        return out

    def wait_record(
        self,
        id_or_predicate: str | Callable[[dict[str, Any]], bool],
        *,
        final: bool = True,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Poll the record API until the record exists (and, with final=True, has a final status).

        Returns the full record from `GET /api/monitor/requests/{id}`.
        """
        return self.wait_records(id_or_predicate, count=1, final=final, timeout=timeout)[0]

    def wait_records(
        self,
        id_or_predicate: str | Callable[[dict[str, Any]], bool],
        *,
        count: int,
        final: bool = True,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Like wait_record for `count` matching records; returned oldest first."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            if isinstance(id_or_predicate, str):
                rec = self.get_record(id_or_predicate)
                found = [rec] if rec is not None else []
            else:
                found = self.records(id_or_predicate)
            seen = found
            ok = len(found) >= count and (not final or all(r.get("status") in FINAL_STATUSES for r in found))
            if ok:
                return list(reversed(found))
            if time.monotonic() > deadline:
                summary = [(r.get("id"), r.get("status")) for r in seen]
                raise AssertionError(
                    f"no {count} {'final ' if final else ''}record(s) matching {id_or_predicate!r} after "
                    f"{timeout}s; matching so far: {summary}"
                )
            time.sleep(0.05)
