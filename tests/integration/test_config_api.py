"""/api/config* through a real mitmdump running addons/proxy.py, with a fake OpenRouter behind it.

Each test starts its own proxy (the configuration is what they change). Keys are given through the
environment or through a `.env` file in the proxy's working directory, which `/api/config/reload` re-reads.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import pytest
from fakes.harness import FAKE_API_KEY, REPO_ROOT
from fakes.openrouter_upstream import DEFAULT_KEY, MODELS, FakeOpenRouter

from anthropic_proxy.environment import parse_dotenv

# What the families map to before OpenRouter's list is known, and once it is (the fake's newest of each family).
FALLBACK_MODELS = {"sonnet": "anthropic/claude-sonnet-4.5", "opus": "anthropic/claude-opus-4.5",
                   "haiku": "anthropic/claude-haiku-4.5", "default": "anthropic/claude-sonnet-4.5"}
NEWEST_MODELS = {"sonnet": "anthropic/claude-sonnet-5", "opus": "anthropic/claude-opus-4.8",
                 "haiku": "anthropic/claude-haiku-4.5", "default": "anthropic/claude-sonnet-5"}
UNPINNED: dict[str, str] = {}  # config.json leaves unpinned families out
DEFAULT_HEADERS = {"HTTP-Referer": "https://github.com/anthropic-proxy/anthropic-proxy", "X-Title": "anthropic-proxy"}
SECOND_KEY = "sk-or-v1-" + "secondKeyFromDotEnv" + "9876543210fedcba" * 3
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake_openrouter():
    with FakeOpenRouter(keys={DEFAULT_KEY, SECOND_KEY}) as fake:
        yield fake


def start(start_proxy, fake: FakeOpenRouter, *, key: str | None = DEFAULT_KEY, mode: str | None = "openrouter"):
    options = {"openrouter_base_url": fake.base_url}
    if mode:
        options["proxy_mode"] = mode
    return start_proxy(options=options, env={"OPENROUTER_API_KEY": key} if key else None)


def call(p, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.request(method, p.url + path, trust_env=False, timeout=20, **kwargs)


def config_file(p) -> dict[str, Any]:
    return json.loads((p.state_dir / "config.json").read_text())


def pinned(view: dict[str, Any]) -> dict[str, str]:
    return {family: c["id"] for family, c in view["modelMap"].items() if c["source"] == "pinned"}


def wait_newest(p) -> dict[str, Any]:
    """The configuration once the proxy has read OpenRouter's model list (it fetches it in the background)."""
    deadline = time.monotonic() + 10
    while (view := call(p, "GET", "/api/config").json())["modelMap"]["opus"]["source"] == "fallback":
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    return view


def sdk(p, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url, api_key=FAKE_API_KEY, max_retries=0, timeout=20,
                               http_client=anthropic.DefaultHttpxClient(trust_env=False), **kwargs)


def ask(p, test_tag: str, model: str = "claude-haiku-4-5") -> anthropic.types.Message:
    with sdk(p) as client:
        return client.messages.create(model=model, max_tokens=20, messages=HI, metadata={"user_id": test_tag})


# ---- GET -----------------------------------------------------------------------------------------------------
def test_get_config_says_whether_a_key_is_set_never_the_key(start_proxy, fake_openrouter):
    p = start(start_proxy, fake_openrouter)
    wait_newest(p)
    r = call(p, "GET", "/api/config")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    view = r.json()
    assert view["mode"] == "openrouter"
    assert view["models"] == NEWEST_MODELS
    assert view["headers"] == DEFAULT_HEADERS
    assert view["openrouterKeySet"] is True
    assert view["openrouterBaseUrl"] == fake_openrouter.base_url
    assert DEFAULT_KEY[12:-4] not in r.text
    assert DEFAULT_KEY[12:-4] not in (p.state_dir / "config.json").read_text()

    q = start(start_proxy, fake_openrouter, key=None, mode=None)
    view = call(q, "GET", "/api/config").json()
    assert view["openrouterKeySet"] is False and view["mode"] == "anthropic"
    # anthropic mode: OpenRouter's list is not fetched, the families show the built-in fallbacks
    assert view["models"] == FALLBACK_MODELS and {c["source"] for c in view["modelMap"].values()} == {"fallback"}


# ---- POST --------------------------------------------------------------------------------------------------
def test_partial_update_is_saved_and_applies_to_the_next_request(start_proxy, fake_openrouter, test_tag):
    p = start(start_proxy, fake_openrouter)
    r = call(p, "POST", "/api/config", {"models": {"haiku": "fake/glm/simple.0"}})
    assert r.status_code == 200, r.text
    assert pinned(r.json()) == {"haiku": "fake/glm/simple.0"}
    assert r.json()["mode"] == "openrouter" and r.json()["headers"] == DEFAULT_HEADERS
    r = call(p, "POST", "/api/config", {"models": {"sonnet": "fake/kimi/simple.0"},
                                        "headers": {"X-Title": "my title", "HTTP-Referer": "https://example.test"}})
    assert r.status_code == 200, r.text
    expected = {"haiku": "fake/glm/simple.0", "sonnet": "fake/kimi/simple.0"}
    assert pinned(r.json()) == expected
    assert call(p, "GET", "/api/config").json() == r.json()
    saved = config_file(p)
    assert saved == {"version": 2, "mode": "openrouter", "models": {**UNPINNED, **expected},
                     "headers": {"X-Title": "my title", "HTTP-Referer": "https://example.test"}}

    ask(p, test_tag)
    ask(p, test_tag, "claude-sonnet-4-5")
    first, second = fake_openrouter.by_user(test_tag)
    assert first.json()["model"] == "fake/glm/simple.0" and second.json()["model"] == "fake/kimi/simple.0"
    assert second.header("x-title") == "my title" and second.header("http-referer") == "https://example.test"

    # and it survives a restart (config.json is the source of truth)
    p.restart()
    assert call(p, "GET", "/api/config").json()["models"] == {**NEWEST_MODELS, **expected}


INVALID = [
    ({"mode": "bogus"}, "mode"),
    ({"mode": None}, "mode"),
    ({"models": {"opus": "has a space"}}, "models.opus"),
    ({"models": {"opus": ""}}, "models.opus"),
    ({"models": {"gpt": "openai/gpt-5"}}, "models.gpt"),
    ({"models": "anthropic/claude"}, "models"),
    ({"headers": {"Authorization": "Bearer sk-or-v1-steal"}}, "Authorization"),
    ({"headers": {"x-api-key": "k"}}, "x-api-key"),
    ({"headers": {"X-Bad": "a\r\nInjected: 1"}}, "X-Bad"),
    ({"headers": {"Bad Name": "v"}}, "Bad Name"),
    ({"unknown": 1}, "unknown"),
    ([{"mode": "openrouter"}], "JSON object"),
]


@pytest.fixture(scope="module")
def unchanged_proxy(proxy_factory, fake_openrouter):
    """One proxy for the tests that must leave the configuration as it was."""
    p = start(proxy_factory, fake_openrouter)
    wait_newest(p)
    return p


@pytest.mark.parametrize(("body", "reason"), INVALID, ids=[json.dumps(b)[:40] for b, _ in INVALID])
def test_invalid_update_is_400_with_the_reason_and_changes_nothing(body, reason, unchanged_proxy):
    p = unchanged_proxy
    before, before_file = call(p, "GET", "/api/config").json(), (p.state_dir / "config.json").read_bytes()
    r = call(p, "POST", "/api/config", body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert reason in error["error"]["message"], error
    assert call(p, "GET", "/api/config").json() == before
    assert (p.state_dir / "config.json").read_bytes() == before_file


def test_body_that_is_not_json_is_400(unchanged_proxy):
    p = unchanged_proxy
    for content in (b"{not json", b""):
        r = call(p, "POST", "/api/config", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert call(p, "GET", "/api/config").json()["mode"] == "openrouter"


def test_reset(start_proxy, fake_openrouter, fake_anthropic, test_tag):
    p = start(start_proxy, fake_openrouter)
    call(p, "POST", "/api/config", {"models": {"opus": "x-ai/grok-4.1-fast"}, "headers": {"X-Title": "t"}})
    r = call(p, "POST", "/api/config/reset")
    assert r.status_code == 200
    assert r.json()["mode"] == "anthropic" and pinned(r.json()) == {}
    assert r.json()["headers"] == DEFAULT_HEADERS
    assert config_file(p) == {"version": 2, "mode": "anthropic", "models": UNPINNED, "headers": DEFAULT_HEADERS}
    with sdk(p, default_headers={"x-test-tag": test_tag}) as client:  # anthropic mode again, right away
        client.messages.create(model="claude-opus-4-8", max_tokens=20, messages=HI, metadata={"user_id": test_tag})
    assert len(fake_anthropic.tagged(test_tag)) == 1 and not fake_openrouter.by_user(test_tag)


# ---- reload ------------------------------------------------------------------------------------------------
def test_reload_picks_up_a_new_dotenv_key_and_the_file(start_proxy, fake_openrouter, test_tag):
    p = start(start_proxy, fake_openrouter, key=None)  # openrouter mode, no key yet
    with pytest.raises(anthropic.AuthenticationError):
        ask(p, test_tag)
    assert not fake_openrouter.by_user(test_tag)

    (p.workdir / ".env").write_text(f"# written by the test\nOPENROUTER_API_KEY={DEFAULT_KEY}\n")
    assert call(p, "GET", "/api/config").json()["openrouterKeySet"] is False  # not before a reload
    r = call(p, "POST", "/api/config/reload")
    assert r.status_code == 200 and r.json()["openrouterKeySet"] is True
    assert DEFAULT_KEY[12:-4] not in r.text
    ask(p, test_tag)
    assert fake_openrouter.by_user(test_tag)[-1].header("authorization") == f"Bearer {DEFAULT_KEY}"

    # a changed key applies after the next reload, with no restart
    (p.workdir / ".env").write_text(f"OPENROUTER_API_KEY='{SECOND_KEY}'\n")
    call(p, "POST", "/api/config/reload").raise_for_status()
    ask(p, test_tag)
    assert fake_openrouter.by_user(test_tag)[-1].header("authorization") == f"Bearer {SECOND_KEY}"

    # config.json edited by hand is re-read too
    saved = config_file(p)
    saved["models"]["sonnet"] = "fake/glm/simple.0"
    (p.state_dir / "config.json").write_text(json.dumps(saved))
    assert call(p, "POST", "/api/config/reload").json()["models"]["sonnet"] == "fake/glm/simple.0"
    ask(p, test_tag, "claude-sonnet-4-5")
    assert fake_openrouter.by_user(test_tag)[-1].json()["model"] == "fake/glm/simple.0"
    assert len(fake_openrouter.by_user(test_tag)) == 3


def test_the_environment_wins_over_dotenv(start_proxy, fake_openrouter, test_tag):
    p = start(start_proxy, fake_openrouter)  # OPENROUTER_API_KEY=DEFAULT_KEY in the environment
    (p.workdir / ".env").write_text(f"OPENROUTER_API_KEY={SECOND_KEY}\n")
    call(p, "POST", "/api/config/reload").raise_for_status()
    ask(p, test_tag)
    assert fake_openrouter.by_user(test_tag)[-1].header("authorization") == f"Bearer {DEFAULT_KEY}"


# ---- model list --------------------------------------------------------------------------------------------
def test_models_listed_cached_and_served_stale_when_openrouter_is_down(start_proxy):
    fake = FakeOpenRouter().start()
    try:
        p = start(start_proxy, fake)
        r = call(p, "GET", "/api/config/models")
        assert r.status_code == 200, r.text
        listing = r.json()
        assert listing["stale"] is False and listing["error"] is None and listing["fetchedAt"]
        by_id = {m["id"]: m for m in listing["data"]}
        assert set(by_id) == {m["id"] for m in MODELS}
        haiku = by_id["anthropic/claude-haiku-4.5"]
        assert haiku["contextLength"] == 200000
        assert haiku["pricing"]["prompt"] == pytest.approx(0.000001)
        assert haiku["pricing"]["completion"] == pytest.approx(0.000005)
        assert haiku["pricing"]["cacheRead"] == pytest.approx(0.0000001)
        assert by_id["z-ai/glm-5-turbo"]["pricing"]["cacheRead"] is None
        assert len(fake.calls_to("/models")) == 1

        again = call(p, "GET", "/api/config/models").json()
        assert again == listing and len(fake.calls_to("/models")) == 1, "not cached"
        call(p, "GET", "/api/config/models", params={"refresh": "1"}).raise_for_status()
        assert len(fake.calls_to("/models")) == 2
    finally:
        fake.stop()

    down = call(p, "GET", "/api/config/models", params={"refresh": "1"}).json()
    assert down["stale"] is True and down["error"]
    assert down["data"] == listing["data"]

    # An hour later (the cache on disk is old) and OpenRouter still down: the old copy, flagged.
    cache = p.state_dir / "openrouter-models.json"
    saved = json.loads(cache.read_text())
    saved["fetchedAt"] = time.time() - 2 * 3600
    cache.write_text(json.dumps(saved))
    p.restart()
    old = call(p, "GET", "/api/config/models").json()
    assert old["stale"] is True and old["data"] == listing["data"]
    assert old["fetchedAt"] < listing["fetchedAt"]


# ---- key check ---------------------------------------------------------------------------------------------
def test_test_openrouter_asks_openrouter(start_proxy, fake_openrouter):
    p = start(start_proxy, fake_openrouter, key=None)
    keys_before = len(fake_openrouter.calls_to("/key"))

    missing = call(p, "POST", "/api/config/test-openrouter").json()
    assert missing["ok"] is False and "OPENROUTER_API_KEY" in missing["message"]
    assert len(fake_openrouter.calls_to("/key")) == keys_before, "checked a key that is not there"

    def check(key: str) -> dict[str, Any]:
        (p.workdir / ".env").write_text(f"OPENROUTER_API_KEY={key}\n")
        call(p, "POST", "/api/config/reload").raise_for_status()
        r = call(p, "POST", "/api/config/test-openrouter")
        assert r.status_code == 200, r.text
        seen = fake_openrouter.calls_to("/key")[-1]
        assert seen.header("authorization") == f"Bearer {key}"
        assert key[12:-4] not in r.text
        return r.json()

    good = check(DEFAULT_KEY)
    assert good["ok"] is True and "accepted" in good["message"]
    # A well-formed key OpenRouter does not know is refused: the check is real, not a prefix test.
    wrong = check("sk-or-v1-" + "0" * 64)
    assert wrong["ok"] is False and "401" in wrong["message"]
    # ... and a key without the usual prefix that OpenRouter accepts is fine.
    fake_openrouter.keys.add("custom-key-without-the-usual-prefix-123456")
    odd = check("custom-key-without-the-usual-prefix-123456")
    assert odd["ok"] is True


def test_test_openrouter_when_openrouter_is_unreachable(start_proxy):
    fake = FakeOpenRouter().start()
    p = start(start_proxy, fake)
    fake.stop()
    result = call(p, "POST", "/api/config/test-openrouter").json()
    assert result["ok"] is False and "could not be reached" in result["message"]


# ---- values that an option or the environment pins; warnings -----------------------------------------------------
def test_mode_pinned_by_set_by_the_environment_or_by_dotenv_is_shown_and_a_change_warns(start_proxy, fake_openrouter):
    by_set = start(start_proxy, fake_openrouter)  # --set proxy_mode=openrouter
    view = call(by_set, "GET", "/api/config").json()
    assert view["pinned"] == {"mode": {"value": "openrouter", "by": "--set proxy_mode"}}
    assert view["warnings"] == []
    r = call(by_set, "POST", "/api/config", {"mode": "anthropic"})
    assert r.status_code == 200 and r.json()["mode"] == "anthropic"
    assert r.json()["warnings"] == [
        "The mode is anthropic only until the proxy restarts: --set proxy_mode sets it back to openrouter at every "
        "start. Remove that setting to let this page decide."]
    by_set.restart()
    assert call(by_set, "GET", "/api/config").json()["mode"] == "openrouter"  # what the warning said

    by_env = start_proxy(options={"openrouter_base_url": fake_openrouter.base_url},
                         env={"PROXY_MODE": "anthropic", "OPENROUTER_API_KEY": DEFAULT_KEY})
    view = call(by_env, "GET", "/api/config").json()
    assert view["pinned"] == {"mode": {"value": "anthropic", "by": "PROXY_MODE (the environment)"}}
    warnings = call(by_env, "POST", "/api/config", {"mode": "openrouter"}).json()["warnings"]
    assert len(warnings) == 1 and "PROXY_MODE (the environment) sets it back to anthropic" in warnings[0]
    assert call(by_env, "POST", "/api/config", {"mode": "anthropic"}).json()["warnings"] == []

    free = start(start_proxy, fake_openrouter, mode=None)
    assert call(free, "GET", "/api/config").json()["pinned"] == {}
    assert call(free, "POST", "/api/config", {"mode": "openrouter"}).json()["warnings"] == []
    (free.workdir / ".env").write_text("PROXY_MODE=anthropic\n")  # what .env.example used to hand out
    free.restart()
    view = call(free, "GET", "/api/config").json()
    assert view["mode"] == "anthropic"
    assert view["pinned"] == {"mode": {"value": "anthropic", "by": f"PROXY_MODE ({free.workdir / '.env'})"}}


def test_switching_to_openrouter_without_a_key_answers_with_a_warning(start_proxy, fake_openrouter):
    p = start(start_proxy, fake_openrouter, key=None, mode=None)
    assert call(p, "GET", "/api/config").json()["warnings"] == []
    r = call(p, "POST", "/api/config", {"mode": "openrouter"})
    assert r.status_code == 200 and r.json()["mode"] == "openrouter"
    [warning] = r.json()["warnings"]
    assert "OPENROUTER_API_KEY is not set" in warning and "401" in warning
    assert call(p, "GET", "/api/config").json()["warnings"] == [warning]
    (p.workdir / ".env").write_text(f"OPENROUTER_API_KEY={DEFAULT_KEY}\n")
    assert call(p, "POST", "/api/config/reload").json()["warnings"] == []


def test_env_example_sets_nothing():
    """A copy of .env.example as .env must not pin anything (PROXY_MODE there undid the config page at every
    restart): every setting is commented out, except the key left empty to fill in."""
    text = (REPO_ROOT / ".env.example").read_text()
    assert "# PROXY_MODE=" in text
    assert {name: value for name, value in parse_dotenv(text).items() if value} == {}


# ---- family defaults from OpenRouter's model list --------------------------------------------------------------
def test_family_defaults_follow_the_newest_model_in_openrouters_list(start_proxy, fake_openrouter, test_tag):
    p = start(start_proxy, fake_openrouter)
    # the fake answers every call from one recording, so that any model id it is sent gets an answer
    call(p, "POST", "/api/config", {"headers": {"x-fake-recording": "fake/anthropic/simple.0"}}).raise_for_status()
    view = wait_newest(p)
    assert view["modelMap"] == {family: {"id": model, "source": "newest"} for family, model in NEWEST_MODELS.items()}
    assert call(p, "GET", "/api/monitor/config").json()["modelMap"] == view["modelMap"]
    for requested in ("claude-opus-4-8", "claude-sonnet-5", "claude-haiku-4-5", "claude-next-1"):
        ask(p, test_tag, requested)
    sent = [ex.json()["model"] for ex in fake_openrouter.by_user(test_tag)]
    assert sent == ["anthropic/claude-opus-4.8", "anthropic/claude-sonnet-5", "anthropic/claude-haiku-4.5",
                    "anthropic/claude-sonnet-5"]

    # pin one family; null follows the newest again
    r = call(p, "POST", "/api/config", {"models": {"opus": "anthropic/claude-opus-4.5"}})
    assert r.json()["modelMap"]["opus"] == {"id": "anthropic/claude-opus-4.5", "source": "pinned"}
    ask(p, test_tag, "claude-opus-4-8")
    assert fake_openrouter.by_user(test_tag)[-1].json()["model"] == "anthropic/claude-opus-4.5"
    assert call(p, "POST", "/api/config", {"models": {"opus": None}}).json()["modelMap"]["opus"] == {
        "id": "anthropic/claude-opus-4.8", "source": "newest"}

    # a config.json from before (no version: it saved every family, defaults included) follows the list too,
    # except for what its user chose
    saved = config_file(p)
    del saved["version"]
    saved["models"] = {**FALLBACK_MODELS, "haiku": "fake/glm/simple.0"}
    (p.state_dir / "config.json").write_text(json.dumps(saved))
    view = call(p, "POST", "/api/config/reload").json()
    assert view["models"] == {**NEWEST_MODELS, "haiku": "fake/glm/simple.0"} and pinned(view) == {
        "haiku": "fake/glm/simple.0"}
