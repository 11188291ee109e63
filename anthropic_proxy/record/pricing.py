"""What one exchange cost, in USD: Anthropic's price table applied to the real usage, or OpenRouter's figure.

Pure (no mitmproxy, no network): the Recorder calls `apply_cost` once when a record ends; the store and the
web app can call `price_record`, `cache_savings_usd` and `savings_for_tokens` on stored records.

Anthropic
    Prices come from `genai-prices` (Pydantic's maintained price database, `GENAI_PRICES_URL`): every model it
    knows for the provider, with its dated price changes (a record is priced at the prices of its own day), its
    5-minute and 1-hour cache writes and its long-context tier. Its prices are read into this module's `ModelPrice`
    (the shape `prices.json` uses too), so one formula below prices every record.

    Long context: some models bill a whole request at higher rates when its prompt (input + cache writes +
    cache reads) exceeds a threshold (Sonnet 4 / 4.5: 200,000 tokens -> input $6, output $22.50, cache
    prices from the same multipliers).

    cost = input_tokens x input + output_tokens x output + 5m cache writes x cacheWrite5m
           + 1h cache writes x cacheWrite1h + cache_read_input_tokens x cacheRead       (all / 1,000,000)
           + server_tool_use.web_search_requests x $10 / 1,000
    The 5m/1h split comes from `usage.cache_creation.ephemeral_{5m,1h}_input_tokens` in the raw message usage;
    cache writes it does not account for are billed at the 5-minute rate (the API's default TTL).

    Model ids are matched after normalising (`model_key`): lower case; a provider prefix (`anthropic/`,
    Bedrock's `[us.]anthropic.`), Claude Code's `[1m]`, Vertex's `@date`, Bedrock's `-v1:0`, a trailing
    `-YYYYMMDD` date or `-latest` removed; dots become dashes. So `claude-sonnet-4-5-20250929`,
    `claude-sonnet-4-5`, `anthropic/claude-sonnet-4.5` and `claude-sonnet-4-5@20250929` are one model.
    genai-prices matches names by its own rules, some by prefix; a match is taken only when the model it found
    has the same key (or the key plus `-0`, Anthropic's alias of a first release: `claude-opus-4` is
    `claude-opus-4-0`), so `claude-opus-4-9` or `claude-sonnet-4-5-extra` is never priced as another model.

    An unknown model costs `None` with a note on the record (`costNote`), never a guessed number.

Override file `<state_dir>/prices.json` (`PRICES_FILE`), re-read whenever it changes:

    {
      "models": {
        "claude-opus-4-8":   {"input": 5, "output": 25},
        "claude-sonnet-4-5": {"input": 3, "output": 15, "cacheWrite5m": 3.75, "cacheWrite1h": 6,
                              "cacheRead": 0.3,
                              "longContext": {"threshold": 200000, "input": 6, "output": 22.5}},
        "my-internal-model": {"input": 1, "output": 2, "cacheRead": 0.05}
      }
    }

    Keys are model ids (normalised like the requests' models); prices are USD per million tokens;
    `cacheWrite5m` / `cacheWrite1h` / `cacheRead` default to 1.25x / 2x / 0.1x `input`; `longContext` is
    optional and has the same fields plus `threshold` (prompt tokens). An override entry wins over
    genai-prices for every date. A file that is not valid JSON or does not match this shape is reported
    (`PriceBook.error`, and a warning in the log) and ignored as a whole: genai-prices applies.

OpenRouter
    The cost OpenRouter reports in its usage (`usage.cost`), else the model's per-token prices from the cached
    OpenRouter model list (`ModelCatalog.price_of`) applied to the usage, else genai-prices' price for the
    upstream model at OpenRouter, else `None` with a note.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import genai_prices.data_snapshot
from genai_prices import types as genai_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from anthropic_proxy.record.model import Record

logger = logging.getLogger("anthropic_proxy.pricing")

PRICES_FILE = "prices.json"
GENAI_PRICES_URL = "https://github.com/pydantic/genai-prices"
GENAI_PRICES = "genai-prices"  # a cost's source

MTOK = Decimal(1_000_000)
USD_QUANTUM = Decimal("1e-8")  # costs are stored rounded to a hundred-millionth of a dollar
WEB_SEARCH_PER_SEARCH = Decimal(10) / Decimal(1000)  # $10 per 1,000 searches, every model
CACHE_WRITE_5M_FACTOR = Decimal("1.25")
CACHE_WRITE_1H_FACTOR = Decimal(2)
CACHE_READ_FACTOR = Decimal("0.1")

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


def counts_tokens(path: str) -> bool:
    """The call is a token count (`/v1/messages/count_tokens`, any query): free, and no turn of a conversation."""
    return path.split("?", 1)[0].rstrip("/").endswith(COUNT_TOKENS_PATH)


# ---- the price model ---------------------------------------------------------------------------------------
class _PriceModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Rates(_PriceModel):
    """USD per million tokens. Cache prices left out follow Anthropic's multipliers of `input`."""

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_write_5m: Decimal | None = Field(default=None, ge=0, alias="cacheWrite5m")
    cache_write_1h: Decimal | None = Field(default=None, ge=0, alias="cacheWrite1h")
    cache_read: Decimal | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _default_cache_prices(self) -> Rates:
        for name, factor in (("cache_write_5m", CACHE_WRITE_5M_FACTOR), ("cache_write_1h", CACHE_WRITE_1H_FACTOR),
                             ("cache_read", CACHE_READ_FACTOR)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.input * factor)
        return self


class LongContextRates(Rates):
    """Rates for every token of a request whose prompt (input + cache writes + cache reads) exceeds `threshold`."""

    threshold: int = Field(gt=0)


class ModelPrice(Rates):
    long_context: LongContextRates | None = None

    def rates_for(self, prompt_tokens: int) -> Rates:
        lc = self.long_context
        return lc if lc is not None and prompt_tokens > lc.threshold else self


class PriceFile(_PriceModel):
    """The shape of `<state_dir>/prices.json`."""

    models: dict[str, ModelPrice]


# ---- model names -------------------------------------------------------------------------------------------
_BEDROCK_PREFIX = re.compile(r"^(?:[a-z]{2,6}\.)?anthropic\.")
_SUFFIXES = re.compile(r"(?:-v\d+:\d+)$")
_DATE_OR_LATEST = re.compile(r"-(?:\d{8}|latest)$")


@functools.lru_cache(maxsize=1024)
def model_key(model: str) -> str:
    """The name a model is priced under (see the module docstring). Cached: every record is priced by it."""
    key = model.strip().lower()
    key = key.rsplit("/", 1)[-1]  # "anthropic/claude-sonnet-4.5" (OpenRouter ids)
    key = re.sub(r"\[[^\]]*\]$", "", key)  # Claude Code's "claude-opus-4-6[1m]"
    key = _BEDROCK_PREFIX.sub("", key)  # "us.anthropic.claude-..."
    key = _SUFFIXES.sub("", key)  # Bedrock's "-v1:0"
    key = key.split("@", 1)[0]  # Vertex's "claude-sonnet-4-5@20250929"
    key = key.replace(".", "-")
    return _DATE_OR_LATEST.sub("", key)


# ---- genai-prices ------------------------------------------------------------------------------------------
def _genai_rate(value: Any, at_tier: int | None) -> Decimal | None:
    """A genai-prices price (a Decimal or tiered prices) at its base (`at_tier` None) or at the tier starting at
    `at_tier` (the base when that field has no such tier)."""
    if isinstance(value, genai_types.TieredPrices):
        tier = next((t.price for t in value.tiers if t.start == at_tier), None)
        return tier if tier is not None else value.base
    return value if isinstance(value, Decimal) else None


def _from_genai(prices: genai_types.ModelPrice) -> ModelPrice | None:
    """genai-prices' price of a model as this module's: its base rates and, when it has tiers, the first tier as
    the long-context rates (Anthropic's structure: one threshold for every field). None without token prices."""
    fields = {"input": prices.input_mtok, "output": prices.output_mtok, "cache_write_5m": prices.cache_write_mtok,
              "cache_write_1h": prices.cache_write_1h_mtok, "cache_read": prices.cache_read_mtok}
    starts = sorted({t.start for v in fields.values() if isinstance(v, genai_types.TieredPrices) for t in v.tiers})

    def rates(at_tier: int | None) -> dict[str, Decimal]:
        values = {name: _genai_rate(value, at_tier) for name, value in fields.items()}
        # Missing cache prices: what the tokens cost without a cache (not Anthropic's multipliers, which a
        # price database that knows the model would have listed).
        values["cache_write_5m"] = values["cache_write_5m"] if values["cache_write_5m"] is not None \
            else values["input"]
        for name in ("cache_write_1h", "cache_read"):
            if values[name] is None:
                values[name] = values["cache_write_5m"] if name == "cache_write_1h" else values["input"]
        return values  # type: ignore[return-value]

    base = rates(None)
    if base["input"] is None or base["output"] is None:
        return None
    long_context = LongContextRates(threshold=starts[0], **rates(starts[0])) if starts else None
    return ModelPrice(**base, long_context=long_context)


@functools.lru_cache(maxsize=1024)
def genai_price(ref: str, provider: str, day: date) -> tuple[str, ModelPrice] | None:
    """genai-prices' (model name, price) for model `ref` at `provider` on `day`, or None when it does not know
    the model (or found another one: see the module docstring)."""
    when = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    try:
        found = genai_prices.calc_price(genai_prices.Usage(), model_ref=ref, provider_id=provider,
                                        genai_request_timestamp=when)
    except LookupError:
        return None
    key = model_key(ref)
    if model_key(found.model.id) not in (key, f"{key}-0"):
        return None
    price = _from_genai(found.model_price)
    return (found.model.name or found.model.id, price) if price is not None else None


def genai_models(provider: str = "anthropic") -> list[str]:
    """The model ids genai-prices knows for `provider`."""
    snapshot = genai_prices.data_snapshot.get_snapshot()
    found = genai_prices.data_snapshot.find_provider_by_id(snapshot.providers, provider)
    return sorted(model.id for model in found.models) if found is not None else []


# ---- the price book ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoundPrice:
    key: str
    name: str
    price: ModelPrice
    source: str  # "genai-prices" or "prices.json"


class PriceBook:
    """genai-prices plus the optional override file, which is re-read when its mtime or size changes."""

    def __init__(self, override_path: Path | None = None) -> None:
        self.override_path = override_path
        self._override: dict[str, ModelPrice] = {}
        self._override_stamp: tuple[int, int] | None = None
        self.error: str | None = None  # why the override file is being ignored, if it is

    def lookup(self, model: str | None, at: datetime | None = None, provider: str = "anthropic"
               ) -> FoundPrice | None:
        """The price of `model` (as a client names it) at `provider` on the day of `at` (default: today)."""
        if not model:
            return None
        key = model_key(model)
        self._refresh()
        if key in self._override:
            return FoundPrice(key, key, self._override[key], PRICES_FILE)
        found = genai_price(key if provider == "anthropic" else model.strip().lower(), provider,
                            (at or datetime.now(UTC)).astimezone(UTC).date())
        return FoundPrice(key, found[0], found[1], GENAI_PRICES) if found else None

    def describe(self) -> dict[str, Any]:
        """For a web page: where prices come from and whether the override file is in use."""
        self._refresh()
        return {"library": f"{GENAI_PRICES} {importlib.metadata.version(GENAI_PRICES)}", "source": GENAI_PRICES_URL,
                "overrideFile": str(self.override_path) if self.override_path else None,
                "overrideModels": sorted(self._override), "overrideError": self.error,
                "builtinModels": genai_models()}

    def _refresh(self) -> None:
        path = self.override_path
        if path is None:
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._override, self._override_stamp, self.error = {}, None, None
            return
        except OSError as exc:
            self._ignore(f"{path} cannot be read: {exc}", None)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._override_stamp:
            return
        try:
            parsed = PriceFile.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            self._ignore(f"{path} is not a valid price file, so it is ignored: "
                         f"{_validation_summary(exc)}", stamp)
            return
        except OSError as exc:
            self._ignore(f"{path} cannot be read: {exc}", stamp)
            return
        self._override = {model_key(name): price for name, price in parsed.models.items()}
        self._override_stamp, self.error = stamp, None
        logger.info("prices: %d model(s) from %s", len(self._override), path)

    def _ignore(self, message: str, stamp: tuple[int, int] | None) -> None:
        self._override, self._override_stamp, self.error = {}, stamp, message
        logger.warning(message)


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "(file)"
        parts.append(f"{where}: {error.get('msg')}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def load_price_file(path: Path) -> PriceFile:
    """Validate a price file (raises ValidationError or OSError): for a check before saving one."""
    return PriceFile.model_validate_json(path.read_bytes())


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
