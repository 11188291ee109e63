"""Shared fixtures: a fake Anthropic upstream, running mitmdump proxies, SDK clients.

Fixtures (see also the helpers on `ProxyProcess`):
- `fake_anthropic` (session): `tests.fakes.anthropic_upstream.FakeAnthropic` on an ephemeral port.
- `proxy_factory` (module): `proxy_factory(upstream=None, options=None, extra_args=(), env=None,
  wait_ready=True, port=None)` starts a mitmdump with `addons/proxy.py`; each is stopped when the module ends.
- `start_proxy` (function): the same factory, but its proxies are stopped at the end of the test.
- `proxy` (module): one proxy in Anthropic mode in front of `fake_anthropic`, shared by a module's tests.
- `test_tag`: a unique string per test; send it as header `x-test-tag` and find the exchange with
  `fake_anthropic.tagged(tag)` and the record with `proxy.wait_record(by_tag(tag))`.
- `sent_requests` + `client`: an `anthropic.Anthropic` pointed at `proxy`, max_retries=0, default header
  `x-test-tag: <test_tag>`; each request the SDK puts on the wire is appended to `sent_requests`.
- `make_client(**kwargs)`: more SDK clients on the same `proxy`/`sent_requests` (e.g. max_retries=2).
- `postgres` (session): a throwaway PostgreSQL server (`fakes.postgres.PostgresServer`), started on first use.
- `tmpfs`: `tmpfs(size)` mounts a real filesystem of that size (e.g. "2m"; tmpfs: the suite runs as root, as CI
  does) in the test's dir, to fill up; unmounted at the end.
- `store_url`: parametrises a test over both store backends: "" (SQLite in the test's dir) or the URL of a fresh
  PostgreSQL database (with a password in it, which must never show).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

# No test may read or write the user's own state dir (~/.anthropic-proxy): a test that opens the default one
# would fail on a store left there by a newer build, and would leave records behind.
os.environ["ANTHROPIC_PROXY_HOME"] = tempfile.mkdtemp(prefix="anthropic-proxy-tests-")

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fakes.anthropic_upstream import FakeAnthropic  # noqa: E402
from fakes.harness import FAKE_API_KEY, ProxyProcess  # noqa: E402
from fakes.postgres import PG_PASSWORD, PostgresServer  # noqa: E402


# ---- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request) -> str:
    if request.param == "sqlite":
        return ""
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url(server.create_database(), password=PG_PASSWORD)


def _factory(tmp_path_factory: pytest.TempPathFactory, default_upstream: Callable[[], str], started: list):
    def start(
        upstream: str | None = None,
        options: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        wait_ready: bool = True,
        port: int | None = None,
    ) -> ProxyProcess:
        p = ProxyProcess(
            workdir=tmp_path_factory.mktemp("proxy"),
            upstream=upstream if upstream is not None else default_upstream(),
            options=options, extra_args=extra_args, env=env, port=port,
        )
        started.append(p)
        return p.start(wait_ready=wait_ready)

    return start


@pytest.fixture(scope="module")
def proxy_factory(tmp_path_factory, fake_anthropic) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield _factory(tmp_path_factory, lambda: fake_anthropic.url, started)
    for p in started:
        p.close()


@pytest.fixture
def start_proxy(tmp_path_factory, fake_anthropic) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield _factory(tmp_path_factory, lambda: fake_anthropic.url, started)
    for p in started:
        p.close()


@pytest.fixture(scope="module")
def proxy(proxy_factory) -> ProxyProcess:
    return proxy_factory()


@pytest.fixture
def test_tag(request) -> str:
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sent_requests() -> list[Any]:
    return []


@pytest.fixture
def make_client(proxy, sent_requests, test_tag) -> Iterator[Callable[..., Any]]:
    import anthropic

    made: list[Any] = []

    def make(**kwargs: Any) -> anthropic.Anthropic:
        def capture(req: Any) -> None:
            req.read()
            sent_requests.append(req)

        http_client = anthropic.DefaultHttpxClient(trust_env=False, event_hooks={"request": [capture]})
        kwargs.setdefault("base_url", proxy.url)
        kwargs.setdefault("api_key", FAKE_API_KEY)
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 20)
        kwargs.setdefault("default_headers", {"x-test-tag": test_tag})
        c = anthropic.Anthropic(http_client=http_client, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def http(proxy, sent_requests) -> Iterator[httpx.Client]:
    """A plain httpx client on `proxy` (raw bytes); requests it sends are appended to `sent_requests`."""

    def capture(req: httpx.Request) -> None:
        req.read()
        sent_requests.append(req)

    hooks = {"request": [capture]}
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=20, event_hooks=hooks) as c:
        yield c


# ---- show proxy logs of failed tests -----------------------------------------------------------------------
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        funcargs = getattr(item, "funcargs", {})
        seen = set()
        for name in ("proxy", "start_proxy", "proxy_factory"):
            value = funcargs.get(name)
            procs = [value] if isinstance(value, ProxyProcess) else []
            for p in procs:
                if id(p) not in seen:
                    seen.add(id(p))
                    with contextlib.suppress(Exception):
                        report.sections.append((f"proxy logs ({p.url})", p.logs(tail=6000)))
    return report


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)
