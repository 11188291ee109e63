"""Cost per record: hand-computed values for several models and cache mixes, dated rows, long-context tiers,
model-name matching, the prices.json override, OpenRouter's figures, cache savings."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anthropic_proxy.record.model import Chunk, HttpRequestPart, Record, Usage
from anthropic_proxy.record.price_book import GENAI_PRICES, PRICES_FILE, ModelPrice, PriceBook, genai_models, model_key
from anthropic_proxy.record.pricing import (
    Cost,
    TokenCounts,
    anthropic_cost,
    apply_cost,
    cache_savings_usd,
    cache_write_premium_usd,
    price_record,
    savings_for_tokens,
    token_counts,
)

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def record(model: str | None = "claude-sonnet-4-5-20250929", *, usage: dict[str, Any] | None = None,
           status: str = "success", provider: str = "anthropic", path: str = "/v1/messages",
           at: datetime = NOW, with_message: bool = True, upstream_model: str | None = None) -> Record:
    usage = usage or {}
    return Record(
        timestamp=at, model=model, status=status, provider=provider, upstream_model=upstream_model,
        request=HttpRequestPart(method="POST", path=path, body={"model": model, "messages": []}),
        message={"type": "message", "model": model, "content": [], "usage": usage} if with_message else None,
        usage=Usage.from_anthropic(usage),
    )


def usage(input: int = 0, output: int = 0, w5: int = 0, w1: int = 0, read: int = 0, **extra: Any) -> dict:
    return {"input_tokens": input, "output_tokens": output, "cache_creation_input_tokens": w5 + w1,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1}, **extra}


@pytest.fixture
def book() -> PriceBook:
    return PriceBook()


# ---- hand-computed costs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "u", "expected"), [
    # Sonnet 4.5: 1000x3 + 500x15 + 1500x3.75 (5m) + 500x6 (1h) + 10000x0.30 = 22125 per MTok
    ("claude-sonnet-4-5-20250929", usage(1000, 500, w5=1500, w1=500, read=10000), 0.022125),
    # Opus 4.1, no cache: 10x15 + 20x75 = 1650
    ("claude-opus-4-1-20250805", usage(10, 20), 0.00165),
    # Opus 4 (dated id): 100x15 + 100x75 + 1000x18.75 = 27750
    ("claude-opus-4-20250514", usage(100, 100, w5=1000), 0.02775),
    # Opus 4.8 (the fake upstream's non-streamed usage): 12x5 + 29x25 + 3x6.25 + 5x0.5 = 806.25
    ("claude-opus-4-8", usage(12, 29, w5=3, read=5), 0.00080625),
    # Haiku 4.5, 1-hour writes only: 100x1 + 50x5 + 1000x2 = 2350
    ("claude-haiku-4-5-20251001", usage(100, 50, w1=1000), 0.00235),
    # Haiku 3.5: 7x0.8 + 3x4 + 10x1 (5m) + 10x1.6 (1h) + 100x0.08 = 5.6 + 12 + 10 + 16 + 8 = 51.6
    ("claude-3-5-haiku-20241022", usage(7, 3, w5=10, w1=10, read=100), 0.0000516),
    # Haiku 3's own cache prices: 1000x0.25 + 1000x0.30 + 1000x0.50 + 1000x0.03 = 1080
    ("claude-3-haiku-20240307", usage(1000, 0, w5=1000, w1=1000, read=1000), 0.00108),
    # Sonnet 3.7: 1x3 + 1x15 = 18
    ("claude-3-7-sonnet-latest", usage(1, 1), 0.000018),
    # Opus 5.5 (Claude Code 2.1.332's default): 1000x4 + 1000x20 + 1000x5 + 1000x8 + 10000x0.20 = 39000
    ("claude-opus-5-5", usage(1000, 1000, w5=1000, w1=1000, read=10000), 0.039),
    # Fable 5.1, cache hits at $0.25: 1000x10 + 1000x50 + 4000x0.25 = 61000
    ("claude-fable-5-1", usage(1000, 1000, read=4000), 0.061),
])
def test_hand_computed_costs(book, model, u, expected):
    cost = price_record(record(model, usage=u), book)
    assert cost.usd == pytest.approx(expected, abs=1e-12) and cost.note is None
    assert cost.source == GENAI_PRICES


def test_fake_upstream_stream_usage(book):
    # The fake Anthropic's streamed usage: 25 in, 100 5m writes, 200 reads, 42 out (message_delta).
    u = {"input_tokens": 25, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 200,
         "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
         "output_tokens": 42, "service_tier": "standard"}
    # 25x3 + 42x15 + 100x3.75 + 200x0.3 = 75 + 630 + 375 + 60 = 1140
    assert price_record(record("claude-sonnet-4-5-20250929", usage=u), book).usd == 0.00114


def test_long_context_tier_bills_every_token_above_the_threshold(book):
    # prompt = 150000 + 60000 = 210000 > 200000: 150000x6 + 60000x0.60 + 1000x22.50 = 958500
    above = usage(150_000, 1000, read=60_000)
    assert price_record(record("claude-sonnet-4-5-20250929", usage=above), book).usd == 0.9585
    # exactly 200000 is not above: 140000x3 + 60000x0.30 + 1000x15 = 453000
    at_threshold = usage(140_000, 1000, read=60_000)
    assert price_record(record("claude-sonnet-4-5", usage=at_threshold), book).usd == 0.453
    # cache writes count toward the threshold and are billed at the tier's writes: 7.50 (5m), 12 (1h)
    writes = usage(1000, 0, w5=150_000, w1=50_000)  # prompt 201000
    assert price_record(record("claude-sonnet-4-5", usage=writes), book).usd == pytest.approx(
        (1000 * 6 + 150_000 * 7.5 + 50_000 * 12) / 1e6)


def test_dated_rows_follow_the_record_time(book):
    u = usage(150_000, 1000, read=60_000)
    before = price_record(record("claude-sonnet-4-6", usage=u, at=datetime(2026, 2, 1, tzinfo=UTC)), book)
    after = price_record(record("claude-sonnet-4-6", usage=u, at=datetime(2026, 4, 1, tzinfo=UTC)), book)
    assert before.usd == 0.9585  # long-context tier until 2026-03-13
    assert after.usd == 0.483  # 150000x3 + 60000x0.3 + 1000x15, flat since
    # the change's day: a record of 23:59 UTC the day before is billed at the old prices
    opus = usage(150_000, 1000, read=60_000)
    old = price_record(record("claude-opus-4-6", usage=opus, at=datetime(2026, 3, 12, 23, 59, tzinfo=UTC)), book)
    new = price_record(record("claude-opus-4-6", usage=opus, at=datetime(2026, 3, 13, tzinfo=UTC)), book)
    assert (old.usd, new.usd) == (1.5975, 0.805)  # 150000x10 + 60000x1 + 1000x37.5; 150000x5 + 60000x0.5 + 25000


def test_haiku_5_5_prompt_length_tier(book):
    small = usage(100_000, 1000)  # not above 100k: 100000x0.10 + 1000x0.50 = 10500
    big = usage(100_001, 1000)  # above: 100001x0.50 + 1000x2.50 = 52500.5
    assert price_record(record("claude-haiku-5-5", usage=small), book).usd == 0.0105
    assert price_record(record("claude-haiku-5-5", usage=big), book).usd == 0.0525005


def test_web_searches_cost_ten_dollars_per_thousand(book):
    u = usage(10, 10, server_tool_use={"web_search_requests": 3})
    assert price_record(record("claude-sonnet-4-5", usage=u), book).usd == pytest.approx(0.00018 + 0.03)


def test_without_the_raw_usage_cache_writes_are_5_minute_writes(book):
    r = record("claude-sonnet-4-5", with_message=False)
    r.usage = Usage(input_tokens=10, output_tokens=10, cache_creation_input_tokens=100, cache_read_input_tokens=100)
    # 10x3 + 10x15 + 100x3.75 + 100x0.3 = 30 + 150 + 375 + 30 = 585
    assert price_record(r, book).usd == 0.000585


def test_split_larger_than_the_total_is_clamped():
    r = record(usage={"input_tokens": 0, "cache_creation_input_tokens": 10,
                      "cache_creation": {"ephemeral_1h_input_tokens": 50}})
    assert token_counts(r) == TokenCounts(cache_write_5m=0, cache_write_1h=10)


def test_precision_is_a_hundred_millionth_of_a_dollar(book):
    assert price_record(record("claude-3-haiku", usage=usage(1)), book).usd == 0.00000025
    assert price_record(record("claude-3-haiku", usage=usage(0, 1)), book).usd == 0.00000125
    # Decimal arithmetic, no float drift: 3x0.8 + 3x4 + 3x1 + 3x1.6 + 3x0.08 = 22.44
    assert price_record(record("claude-3-5-haiku", usage=usage(3, 3, w5=3, w1=3, read=3)), book).usd == 0.00002244


# ---- what is not priced, and what is free ------------------------------------------------------------------
def test_unknown_model_is_none_and_flagged(book):
    for model in ("claude-opus-9-9", "fake-stream", "gpt-4o", "claude-opus-6"):
        cost = price_record(record(model, usage=usage(10, 10)), book)
        assert cost.usd is None and model in (cost.note or "") and PRICES_FILE in (cost.note or "")
    assert price_record(record(None, usage=usage(10, 10)), book).usd is None


def test_prefix_never_prices_an_unknown_version(book):
    assert book.lookup("claude-opus-4") is not None and book.lookup("claude-opus-4-9") is None
    assert book.lookup("claude-sonnet-4-5-extra") is None


def test_count_tokens_and_empty_usage_cost_nothing(book):
    counted = record("claude-opus-9-9", path="/v1/messages/count_tokens?beta=true", with_message=False)
    counted.usage = Usage(input_tokens=5000)
    assert price_record(counted, book).usd == 0.0
    refused = record("claude-opus-9-9", status="error", with_message=False)  # 429 before any token
    assert price_record(refused, book).usd == 0.0


def test_partial_usage_is_priced_and_marked_as_an_estimate(book):
    cancelled = price_record(record("claude-sonnet-4-5", usage=usage(100, 1), status="cancelled"), book)
    assert cancelled.usd == 0.000315 and "estimate" in (cancelled.note or "")


def test_apply_cost_sets_the_record_fields(book):
    r = apply_cost(record("claude-haiku-4-5", usage=usage(1000, 1000)), book)
    assert (r.cost_usd, r.cost_note) == (0.006, None)
    assert r.summary()["costNote"] is None and r.summary()["costUsd"] == 0.006
    r = apply_cost(record("mystery-model", usage=usage(1, 1)), book)
    assert r.cost_usd is None and "mystery-model" in r.summary()["costNote"]


# ---- model names -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "key"), [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("Claude-Sonnet-4.5", "claude-sonnet-4-5"),
    ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
    ("us.anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4-1"),
    ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
    ("claude-opus-4-6[1m]", "claude-opus-4-6"),
    ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
    ("claude-opus-4-20250514", "claude-opus-4"),
    ("claude-opus-4-0", "claude-opus-4-0"),
    (" claude-opus-4-8 ", "claude-opus-4-8"),
])
def test_model_key(name, key):
    assert model_key(name) == key


@pytest.mark.parametrize("day", [datetime(2026, 2, 1, tzinfo=UTC), NOW])
def test_every_claude_price_from_genai_prices_is_complete_and_sane(book, day):
    models = [m for m in genai_models() if m.startswith("claude-")]
    assert {"claude-sonnet-4-5", "claude-opus-4-8", "claude-haiku-4-5", "claude-opus-5-5"} <= set(models)
    for model in models:
        found = book.lookup(model, day)
        assert found is not None and found.source == GENAI_PRICES, model
        for p in (found.price, found.price.long_context):
            if p is None:
                continue
            assert p.input > 0 and p.output >= p.input and p.cache_read is not None and p.cache_read <= p.input, model
            assert p.cache_write_5m is not None and p.cache_write_1h is not None
            assert p.cache_write_1h >= p.cache_write_5m >= p.input, model


def test_cache_multipliers_default_from_input():
    p = ModelPrice(input=Decimal(4), output=Decimal(20))
    assert (p.cache_write_5m, p.cache_write_1h, p.cache_read) == (Decimal(5), Decimal(8), Decimal("0.4"))


# ---- prices.json -------------------------------------------------------------------------------------------
def write(path: Path, content: Any) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    st = path.stat()  # a distinct mtime even within one clock tick
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_override_file_adds_and_replaces_prices(tmp_path):
    path = tmp_path / PRICES_FILE
    book = PriceBook(path)
    u = usage(12, 29, w5=3, read=5)
    assert price_record(record("claude-unknown-9", usage=u), book).usd is None
    write(path, {"models": {"claude-unknown-9": {"input": 1, "output": 2},
                            "claude-opus-4.8": {"input": 10, "output": 50, "cacheRead": 2}}})
    # 12x1 + 29x2 + 3x1.25 + 5x0.1 = 74.25
    cost = price_record(record("claude-unknown-9-20270101", usage=u), book)
    assert (cost.usd, cost.source, cost.note) == (0.00007425, PRICES_FILE, None)
    # replaces the built-in row for every date: 12x10 + 29x50 + 3x12.5 + 5x2 = 1617.5
    assert price_record(record("claude-opus-4-8", usage=u), book).usd == 0.0016175
    assert book.error is None and book.describe()["overrideModels"] == ["claude-opus-4-8", "claude-unknown-9"]
    path.unlink()
    assert price_record(record("claude-opus-4-8", usage=u), book).usd == 0.00080625


def test_override_field_names(tmp_path):
    path = tmp_path / PRICES_FILE
    write(path, {"models": {"m": {"input": 1, "output": 2, "cacheWrite5m": 3, "cacheWrite1h": 4, "cacheRead": 5}}})
    book = PriceBook(path)
    # 1x1 + 1x2 + 1x3 + 1x4 + 1x5 = 15
    assert price_record(record("m", usage=usage(1, 1, w5=1, w1=1, read=1)), book).usd == 0.000015
    assert book.error is None


def test_override_with_long_context(tmp_path):
    path = tmp_path / PRICES_FILE
    write(path, {"models": {"m": {"input": 1, "output": 1, "longContext": {"threshold": 10, "input": 2, "output": 3}}}})
    book = PriceBook(path)
    assert price_record(record("m", usage=usage(10, 1)), book).usd == 0.000011
    assert price_record(record("m", usage=usage(11, 1)), book).usd == 0.000025  # 11x2 + 1x3


@pytest.mark.parametrize("content", [
    "{not json",
    {"models": {"m": {"input": -1, "output": 1}}},
    {"models": {"m": {"input": 1}}},
    {"models": {"m": {"input": 1, "output": 1, "cacheReed": 0.1}}},
    {"model": {}},
    [],
    {"models": {"m": {"input": "cheap", "output": 1}}},
])
def test_bad_override_file_is_reported_and_ignored(tmp_path, caplog, content):
    path = tmp_path / PRICES_FILE
    write(path, content)
    book = PriceBook(path)
    cost = price_record(record("claude-opus-4-8", usage=usage(12, 29, w5=3, read=5)), book)
    assert cost.usd == 0.00080625  # the built-in table still applies
    assert book.error is not None and str(path) in book.error and "ignored" in book.error
    assert any("ignored" in r.getMessage() for r in caplog.records)
    assert price_record(record("m", usage=usage(1, 1)), book).usd is None
    write(path, {"models": {"m": {"input": 1, "output": 1}}})  # fixed: picked up without a restart
    assert price_record(record("m", usage=usage(1, 1)), book).usd == 0.000002 and book.error is None


def test_unreadable_override_is_not_a_crash(tmp_path):
    (tmp_path / PRICES_FILE).mkdir()
    book = PriceBook(tmp_path / PRICES_FILE)
    assert price_record(record("claude-haiku-4-5", usage=usage(1000)), book).usd == 0.001
    assert book.error


# ---- OpenRouter --------------------------------------------------------------------------------------------
CATALOG = {"prompt": 3e-06, "completion": 1.5e-05, "cacheRead": 3e-07, "cacheWrite": 3.75e-06}


def or_record(u: dict, upstream_model: str = "anthropic/claude-sonnet-4.5", **kwargs: Any) -> Record:
    return record("claude-sonnet-4-5", usage=u, provider="openrouter", upstream_model=upstream_model, **kwargs)


def test_openrouter_reported_cost_wins(book):
    cost = price_record(or_record(usage(10, 10)), book, reported_cost=0.0123456789, catalog_price=CATALOG)
    assert (cost.usd, cost.source) == (0.01234568, "openrouter-usage")


def test_openrouter_cost_kept_in_the_record(book):
    streamed = or_record(usage(10, 10))
    streamed.upstream_chunks = [Chunk(t_ms=1, event=None, data={"choices": []}),
                                Chunk(t_ms=2, event=None, data={"choices": [], "usage": {"cost": 0.00042}}),
                                Chunk(t_ms=3, event=None, data="[DONE]")]
    assert price_record(streamed, book) == Cost(0.00042, None, "openrouter-usage")
    whole = or_record(usage(10, 10))
    whole.upstream_response = {"id": "gen", "usage": {"prompt_tokens": 10, "cost": 0.5}}
    assert price_record(whole, book).usd == 0.5
    assert price_record(whole, book, reported_cost=0.25).usd == 0.25  # the live figure wins


def test_openrouter_falls_back_to_the_model_list(book):
    # 1000x3e-6 + 100x1.5e-5 + 500x3.75e-6 + 2000x3e-7 = 0.003 + 0.0015 + 0.001875 + 0.0006
    cost = price_record(or_record(usage(1000, 100, w5=500, read=2000)), book, catalog_price=CATALOG)
    assert (cost.usd, cost.source) == (0.006975, "openrouter-models")


def test_openrouter_falls_back_to_genai_prices(book):
    # genai-prices' OpenRouter price of anthropic/claude-sonnet-4.5: 10x3 + 10x15 per MTok
    cost = price_record(or_record(usage(10, 10)), book)
    assert (cost.usd, cost.source) == (0.00018, GENAI_PRICES)


def test_openrouter_without_a_usable_price_is_none_and_flagged(book):
    unknown = or_record(usage(10, 10), upstream_model="example/not-a-model")
    missing = price_record(unknown, book)
    assert missing.usd is None and "example/not-a-model" in (missing.note or "")
    no_cache_price = {"prompt": 1e-6, "completion": 1e-6, "cacheRead": None, "cacheWrite": None}
    cached = or_record(usage(10, 10, read=5), upstream_model="example/not-a-model")
    assert price_record(cached, book, catalog_price=no_cache_price).usd is None
    assert price_record(or_record(usage(10, 10)), book, catalog_price=no_cache_price).usd == 0.00002
    assert price_record(or_record({}, status="error"), book).usd == 0.0  # nothing used


# ---- cache savings -----------------------------------------------------------------------------------------
def test_cache_savings(book):
    r = record("claude-sonnet-4-5", usage=usage(1000, 500, w5=1500, w1=500, read=10000))
    assert cache_savings_usd(r, book) == 0.027  # 10000 x (3 - 0.3)
    assert cache_write_premium_usd(r, book) == 0.002625  # 1500 x 0.75 + 500 x 3
    assert savings_for_tokens("claude-sonnet-4-5-20250929", 10000, book) == 0.027
    assert savings_for_tokens("claude-sonnet-4-5", 0, book) == 0.0
    assert savings_for_tokens("nope", 10, book) is None
    long = record("claude-sonnet-4-5", usage=usage(150_000, 10, read=60_000))
    assert cache_savings_usd(long, book) == 0.324  # at the tier: 60000 x (6 - 0.6)
    assert cache_savings_usd(record("nope", usage=usage(1, read=5)), book) is None
    assert cache_savings_usd(record("nope", usage=usage(1)), book) == 0.0
    openrouter = or_record(usage(10, 10, read=1000))
    assert cache_savings_usd(openrouter, book, catalog_price=CATALOG) == 0.0027
    assert cache_savings_usd(openrouter, book) is None


# ---- properties --------------------------------------------------------------------------------------------
counts = st.integers(min_value=0, max_value=25_000)  # two prompts of 4 x 25k stay within the 200k tier


@given(a=st.tuples(counts, counts, counts, counts, counts), b=st.tuples(counts, counts, counts, counts, counts))
def test_cost_is_additive_below_the_tier(a, b):
    price = PriceBook().lookup("claude-sonnet-4-5").price
    ta, tb = TokenCounts(*a), TokenCounts(*b)
    both = TokenCounts(*(x + y for x, y in zip(a, b, strict=True)))
    assert anthropic_cost(ta, price) + anthropic_cost(tb, price) == anthropic_cost(both, price)
    assert anthropic_cost(ta, price) >= 0
