"""Where prices come from: genai-prices and the optional `<state_dir>/prices.json`, in one `PriceBook` that
finds a model's price on a given day. What a record costs at that price is decided in pricing.py, only there.

`genai-prices` (Pydantic's maintained price database, `GENAI_PRICES_URL`) knows every model of a provider, with
its dated price changes (a record is priced at the prices of its own day), its 5-minute and 1-hour cache writes
and its long-context tier. Its prices are read into this module's `ModelPrice` (the shape `prices.json` uses
too), so one formula (pricing.py) prices every record.

Model ids are matched after normalising (`model_key`): lower case; a provider prefix (`anthropic/`,
Bedrock's `[us.]anthropic.`), Claude Code's `[1m]`, Vertex's `@date`, Bedrock's `-v1:0`, a trailing
`-YYYYMMDD` date or `-latest` removed; dots become dashes. So `claude-sonnet-4-5-20250929`,
`claude-sonnet-4-5`, `anthropic/claude-sonnet-4.5` and `claude-sonnet-4-5@20250929` are one model.
genai-prices matches names by its own rules, some by prefix; a match is taken only when the model it found
has the same key (or the key plus `-0`, Anthropic's alias of a first release: `claude-opus-4` is
`claude-opus-4-0`), so `claude-opus-4-9` or `claude-sonnet-4-5-extra` is never priced as another model.

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
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re
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

logger = logging.getLogger("anthropic_proxy.pricing")

PRICES_FILE = "prices.json"
GENAI_PRICES_URL = "https://github.com/pydantic/genai-prices"
GENAI_PRICES = "genai-prices"  # a cost's source

CACHE_WRITE_5M_FACTOR = Decimal("1.25")
CACHE_WRITE_1H_FACTOR = Decimal(2)
CACHE_READ_FACTOR = Decimal("0.1")


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
