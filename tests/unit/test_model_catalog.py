"""Which OpenRouter id is the newest of each Claude family (what an unpinned family maps to)."""

from __future__ import annotations

import json

from anthropic_proxy.providers.openrouter_api import MODELS_CACHE_FILE, ModelCatalog, newest_by_family
from anthropic_proxy.providers.proxy_config import ModelMap, effective_models, model_choices


def test_newest_by_family_reads_both_namings_and_skips_variants_and_other_vendors():
    ids = ["anthropic/claude-3.5-sonnet", "anthropic/claude-3.5-sonnet-20240620", "anthropic/claude-3.7-sonnet",
           "anthropic/claude-sonnet-4", "anthropic/claude-sonnet-4.5", "anthropic/claude-3-opus",
           "anthropic/claude-opus-4.1", "anthropic/claude-opus-4.8:thinking", "anthropic/claude-3-haiku",
           "anthropic/claude-haiku-4.5", "someone/claude-opus-9", "openai/gpt-5"]
    assert newest_by_family(ids) == {"sonnet": "anthropic/claude-sonnet-4.5", "opus": "anthropic/claude-opus-4.1",
                                     "haiku": "anthropic/claude-haiku-4.5", "default": "anthropic/claude-sonnet-4.5"}
    # a later generation wins over a higher minor version; of one version, the undated alias
    newer = newest_by_family(["anthropic/claude-opus-4.8", "anthropic/claude-opus-5"])
    assert newer["opus"] == "anthropic/claude-opus-5"
    assert newest_by_family(["anthropic/claude-3.5-sonnet-20240620", "anthropic/claude-3.5-sonnet"])["sonnet"] == \
        "anthropic/claude-3.5-sonnet"
    assert newest_by_family(["openai/gpt-5"]) == {}


def test_unpinned_families_follow_the_cached_list_and_pins_win(tmp_path):
    ids = ("anthropic/claude-opus-4.5", "anthropic/claude-opus-4.8", "anthropic/claude-haiku-4.5")
    models = [{"id": model_id} for model_id in ids]
    (tmp_path / MODELS_CACHE_FILE).write_text(json.dumps({"data": models, "fetchedAt": 1.0}))
    catalog = ModelCatalog(tmp_path)
    assert catalog.newest == {"opus": "anthropic/claude-opus-4.8", "haiku": "anthropic/claude-haiku-4.5"}
    choices = model_choices(ModelMap(haiku="google/gemini-3-flash"), catalog.newest)
    assert choices == {"sonnet": ("anthropic/claude-sonnet-4.5", "fallback"),
                       "opus": ("anthropic/claude-opus-4.8", "newest"),
                       "haiku": ("google/gemini-3-flash", "pinned"),
                       "default": ("anthropic/claude-sonnet-4.5", "fallback")}
    assert effective_models(ModelMap(), catalog.newest).opus == "anthropic/claude-opus-4.8"
