"""What one exchange cost, in USD: Anthropic's price table applied to the real usage, or OpenRouter's figure.

Pure (no mitmproxy, no network): the Recorder calls `apply_cost` once when a record ends; the store and the
web app can call `price_record`, `cache_savings_usd` and `savings_for_tokens` on stored records.

Anthropic
    Prices come from the price book (price_book.py: genai-prices and `<state_dir>/prices.json`), for the
    record's model on the record's day, so one formula below prices every record.

    Long context: some models bill a whole request at higher rates when its prompt (input + cache writes +
    cache reads) exceeds a threshold (Sonnet 4 / 4.5: 200,000 tokens -> input $6, output $22.50, cache
    prices from the same multipliers).

    cost = input_tokens x input + output_tokens x output + 5m cache writes x cacheWrite5m
           + 1h cache writes x cacheWrite1h + cache_read_input_tokens x cacheRead       (all / 1,000,000)
           + server_tool_use.web_search_requests x $10 / 1,000
    The 5m/1h split comes from `usage.cache_creation.ephemeral_{5m,1h}_input_tokens` in the raw message usage;
    cache writes it does not account for are billed at the 5-minute rate (the API's default TTL).

    An unknown model costs `None` with a note on the record (`costNote`), never a guessed number.

OpenRouter
    The cost OpenRouter reports in its usage (`usage.cost`), else the model's per-token prices from the cached
    OpenRouter model list (`ModelCatalog.price_of`) applied to the usage, else genai-prices' price for the
    upstream model at OpenRouter, else `None` with a note.
"""


from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from anthropic_proxy.record.model import Record
from anthropic_proxy.record.price_book import PRICES_FILE, ModelPrice, PriceBook

MTOK = Decimal(1_000_000)
USD_QUANTUM = Decimal("1e-8")  # costs are stored rounded to a hundred-millionth of a dollar
WEB_SEARCH_PER_SEARCH = Decimal(10) / Decimal(1000)  # $10 per 1,000 searches, every model

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


def counts_tokens(path: str) -> bool:
    """The call is a token count (`/v1/messages/count_tokens`, any query): free, and no turn of a conversation."""
    return path.split("?", 1)[0].rstrip("/").endswith(COUNT_TOKENS_PATH)

# ---- usage -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenCounts:
    input: int = 0
    output: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    web_searches: int = 0

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def prompt(self) -> int:
        return self.input + self.cache_write + self.cache_read

    @property
    def billable(self) -> bool:
        return any((self.input, self.output, self.cache_write, self.cache_read, self.web_searches))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def token_counts(record: Record) -> TokenCounts:
    """The usage to bill: the raw message usage (with the 5m/1h split and web searches) when there is one,
    else the record's four totals."""
    raw = record.message.get("usage") if isinstance(record.message, dict) else None
    usage = record.usage
    if not isinstance(raw, dict):
        return TokenCounts(input=usage.input_tokens, output=usage.output_tokens,
                           cache_write_5m=usage.cache_creation_input_tokens,
                           cache_read=usage.cache_read_input_tokens)
    written = _int(raw.get("cache_creation_input_tokens"))
    split = raw.get("cache_creation") if isinstance(raw.get("cache_creation"), dict) else {}
    w1 = min(_int(split.get("ephemeral_1h_input_tokens")), written) if written else 0
    server_tools = raw.get("server_tool_use") if isinstance(raw.get("server_tool_use"), dict) else {}
    return TokenCounts(input=_int(raw.get("input_tokens")), output=_int(raw.get("output_tokens")),
                       cache_write_5m=written - w1, cache_write_1h=w1,
                       cache_read=_int(raw.get("cache_read_input_tokens")),
                       web_searches=_int(server_tools.get("web_search_requests")))


def anthropic_cost(tokens: TokenCounts, price: ModelPrice) -> Decimal:
    """USD, unrounded: the formula in the module docstring."""
    rates = price.rates_for(tokens.prompt)
    assert rates.cache_write_5m is not None and rates.cache_write_1h is not None and rates.cache_read is not None
    per_mtok = (tokens.input * rates.input + tokens.output * rates.output
                + tokens.cache_write_5m * rates.cache_write_5m + tokens.cache_write_1h * rates.cache_write_1h
                + tokens.cache_read * rates.cache_read)
    return per_mtok / MTOK + tokens.web_searches * WEB_SEARCH_PER_SEARCH


def _per_token(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        price = Decimal(str(value))
    except ArithmeticError:
        return None
    return price if price.is_finite() and price >= 0 else None


def catalog_cost(tokens: TokenCounts, catalog_price: Mapping[str, Any]) -> Decimal | None:
    """USD from OpenRouter's per-token prices (`{"prompt", "completion", "cacheRead", "cacheWrite"}`), or None
    when a price the usage needs is missing."""
    prompt, completion = _per_token(catalog_price.get("prompt")), _per_token(catalog_price.get("completion"))
    read, write = _per_token(catalog_price.get("cacheRead")), _per_token(catalog_price.get("cacheWrite"))
    if prompt is None or completion is None or (tokens.cache_read and read is None) or (
            tokens.cache_write and write is None):
        return None
    return (tokens.input * prompt + tokens.output * completion + tokens.cache_read * (read or 0)
            + tokens.cache_write * (write or 0))


def usd(value: Decimal) -> float:
    return float(value.quantize(USD_QUANTUM))


# ---- one record --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    usd: float | None
    note: str | None = None  # why there is no cost, or why it is an estimate
    source: str | None = None  # genai-prices | prices.json | openrouter-usage | openrouter-models | free


_PARTIAL_NOTE = "estimate: the exchange ended before its final usage arrived"
SUBSCRIPTION_NOTE = ("API-equivalent: a Claude subscription's call (OAuth token), billed to the subscription, not "
                     "per token; the cost is what the same usage costs through the API")
# Claude's OAuth access tokens (Pro/Max logins). A masked header keeps a token's first 10 characters: exactly this.
_OAUTH_TOKEN_PREFIX = "bearer sk-ant-oat"


def is_subscription_call(record: Record) -> bool:
    """Whether the call was authorised by a Claude subscription's OAuth token rather than an API key."""
    return any(name.lower() == "authorization" and value.lower().startswith(_OAUTH_TOKEN_PREFIX)
               for name, value in record.request.headers.items())


def recorded_openrouter_cost(record: Record) -> float | None:
    """OpenRouter's `usage.cost` as the record kept it: in its raw answer, or in the last upstream chunk with usage."""
    sources: list[Any] = [record.upstream_response]
    sources += [chunk.data for chunk in reversed(record.upstream_chunks[-8:])]
    for data in sources:
        usage = data.get("usage") if isinstance(data, dict) else None
        cost = usage.get("cost") if isinstance(usage, dict) else None
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            return float(cost)
    return None


def price_record(record: Record, book: PriceBook, *, reported_cost: float | None = None,
                 catalog_price: Mapping[str, Any] | None = None) -> Cost:
    """The cost of one record (also of a stored one: re-pricing after a price change is `apply_cost` again).

    `reported_cost`: OpenRouter's `usage.cost` for the call (`Route.reported_cost()`; by default what the record
    kept of it); `catalog_price`: the upstream model's prices from OpenRouter's model list
    (`ModelCatalog.price_of(record.upstream_model)`).
    """
    if counts_tokens(record.request.path):
        return Cost(0.0, source="free")  # token counting is free
    tokens = token_counts(record)
    partial = _PARTIAL_NOTE if record.status != "success" and tokens.billable else None
    if record.provider == "openrouter":
        if reported_cost is None:
            reported_cost = recorded_openrouter_cost(record)
        if reported_cost is not None and reported_cost >= 0:
            return Cost(usd(Decimal(str(reported_cost))), partial, "openrouter-usage")
        if not tokens.billable:
            return Cost(0.0, source="free")
        model = record.upstream_model or record.model
        cost = catalog_cost(tokens, catalog_price) if catalog_price else None
        if cost is not None:
            return Cost(usd(cost), partial, "openrouter-models")
        found = book.lookup(model, record.timestamp, provider="openrouter")
        if found is None:
            return Cost(None, f"OpenRouter reported no cost and has no usable price for {model!r} in its cached "
                              "model list (open /config to refresh it), nor does genai-prices")
        return Cost(usd(anthropic_cost(tokens, found.price)), partial, found.source)
    if not tokens.billable:
        return Cost(0.0, source="free")  # nothing was processed (refused, rate limited, cut before any usage)
    model = record.upstream_model or record.model  # what really answered (a route or fallback may change it)
    found = book.lookup(model, record.timestamp)
    if found is None:
        where = book.override_path or PRICES_FILE
        return Cost(None, f"no price for model {model!r}: add it to {where}")
    if is_subscription_call(record):
        partial = f"{SUBSCRIPTION_NOTE}; {partial}" if partial else SUBSCRIPTION_NOTE
    return Cost(usd(anthropic_cost(tokens, found.price)), partial, found.source)


def apply_cost(record: Record, book: PriceBook, *, reported_cost: float | None = None,
               catalog_price: Mapping[str, Any] | None = None) -> Record:
    """Set `record.cost_usd` and `record.cost_note` (called once, when the record ends)."""
    cost = price_record(record, book, reported_cost=reported_cost, catalog_price=catalog_price)
    record.cost_usd, record.cost_note = cost.usd, cost.note
    return record


# ---- prompt-cache savings ----------------------------------------------------------------------------------
def cache_savings_usd(record: Record, book: PriceBook, *, catalog_price: Mapping[str, Any] | None = None
                      ) -> float | None:
    """What the record's cache reads would have cost at the input price minus what they cost (USD).

    0.0 without cache reads; None when the model has no price. Uses the rates the request was billed at
    (long-context tier included).
    """
    tokens = token_counts(record)
    if not tokens.cache_read:
        return 0.0
    if record.provider == "openrouter":
        prompt = _per_token((catalog_price or {}).get("prompt"))
        read = _per_token((catalog_price or {}).get("cacheRead"))
        return usd(tokens.cache_read * (prompt - read)) if prompt is not None and read is not None else None
    found = book.lookup(record.model, record.timestamp)
    if found is None:
        return None
    rates = found.price.rates_for(tokens.prompt)
    assert rates.cache_read is not None
    return usd(tokens.cache_read * (rates.input - rates.cache_read) / MTOK)


def cache_write_premium_usd(record: Record, book: PriceBook) -> float | None:
    """What the record's cache writes cost above the plain input price (USD; Anthropic models only)."""
    tokens = token_counts(record)
    if not tokens.cache_write:
        return 0.0
    found = book.lookup(record.model, record.timestamp) if record.provider == "anthropic" else None
    if found is None:
        return None
    rates = found.price.rates_for(tokens.prompt)
    assert rates.cache_write_5m is not None and rates.cache_write_1h is not None
    extra = (tokens.cache_write_5m * (rates.cache_write_5m - rates.input)
             + tokens.cache_write_1h * (rates.cache_write_1h - rates.input))
    return usd(extra / MTOK)


def savings_for_tokens(model: str | None, cache_read_tokens: int, book: PriceBook,
                       at: datetime | None = None) -> float | None:
    """Cache-read savings for an aggregate row (e.g. SQL `GROUP BY model` with `total(cache_read_tokens)`).

    Uses the model's base rates: a request billed at a long-context tier saves more than this says; sum
    `cache_savings_usd` per record where that matters.
    """
    if not cache_read_tokens:
        return 0.0
    found = book.lookup(model, at)
    if found is None:
        return None
    assert found.price.cache_read is not None
    return usd(cache_read_tokens * (found.price.input - found.price.cache_read) / MTOK)



def cache_miss_usd(model: str | None, tokens: int, book: PriceBook, at: datetime | None = None, *,
                   written: bool, long_ttl: bool) -> float | None:
    """What `tokens` prompt tokens cost above a cache read when they were billed in full: at the cache-write
    price (`written`: the call wrote the cache, with the 1-hour TTL if `long_ttl`) or else the input price.
    Base rates; None when the model has no price."""
    if not tokens:
        return 0.0
    found = book.lookup(model, at)
    if found is None:
        return None
    price = found.price
    assert price.cache_write_5m is not None and price.cache_write_1h is not None and price.cache_read is not None
    billed = (price.cache_write_1h if long_ttl else price.cache_write_5m) if written else price.input
    return usd(tokens * (billed - price.cache_read) / MTOK)
