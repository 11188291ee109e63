"""The flow record: one per Anthropic API exchange, the unit the store, the web app and users' addons share.

JSON field names are camelCase (the web API's contract); Python attributes are snake_case.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Status = Literal["pending", "success", "error", "cancelled"]
Provider = str  # `anthropic`, `openrouter` or a provider named in config.json
FINAL_STATUSES: frozenset[str] = frozenset({"success", "error", "cancelled"})  # the outcomes stored


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, validate_assignment=False)


class HttpRequestPart(_Model):
    method: str
    path: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None


class HttpResponsePart(_Model):
    status: int | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None


class Usage(_Model):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def from_anthropic(cls, usage: Any) -> Usage:
        """From an Anthropic usage object, whatever it holds: a count that is not a whole number counts 0."""
        usage = usage if isinstance(usage, dict) else {}
        return cls(**{name: _count(usage.get(name)) for name in cls.model_fields})


def _count(value: Any) -> int:
    """A token count as sent, if it is one a database can hold (JSON has no integer type of its own)."""
    if value.__class__ is float and value.is_integer():
        value = int(value)
    return value if value.__class__ is int and 0 <= value < 2**53 else 0


def as_text(value: Any) -> str | None:
    """A field the record keeps as text (a model, a session, a stop reason): anything else a client or an upstream
    sends there is not kept in it (the body shows what was sent)."""
    return value if isinstance(value, str) else None


class Metrics(_Model):
    duration_ms: float | None = None
    ttfb_ms: float | None = None
    chunk_count: int = 0
    request_bytes: int = 0
    response_bytes: int = 0


@dataclasses.dataclass(slots=True)
class Chunk:
    """One stream event and when it arrived (ms after the request). A plain dataclass, not a model: one is
    made per event on the proxy's hot path, and pydantic still validates and serialises it in a Record."""

    t_ms: Annotated[float, Field(alias="tMs")]
    event: str | None
    data: Any


class RecordError(_Model):
    type: str
    message: str

    @classmethod
    def from_anthropic(cls, error: dict[str, Any]) -> RecordError:
        """From an Anthropic error object (`{"type": ..., "message": ...}`), whatever it holds."""
        return cls(type=str(error.get("type") or "api_error"), message=str(error.get("message") or ""))


class CacheBreak(_Model):
    """Why this call did not read the prompt cache the previous call of its conversation left (`cache_break.py`)."""

    previous_id: str
    at: Literal["tools", "system", "messages", "ttl"]
    index: int | None = None  # the tool, system block or message where the prompt first differs
    detail: str
    uncached_tokens: int  # an estimate of the prompt tokens that could have been read from the cache
    extra_cost_usd: float | None = None  # what they cost above a cache read (None: the model has no price)


class Attempt(_Model):
    """One try at one target: which, what it answered (status None: no answer), why it failed, how long."""

    provider: str
    model: str | None = None
    status: int | None = None
    error: str | None = None
    duration_ms: float | None = None


class Record(_Model):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    provider: Provider = "anthropic"
    status: Status = "pending"
    model: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    stop_reason: str | None = None
    session_id: str | None = None
    request: HttpRequestPart
    upstream_request: Any = None
    response: HttpResponsePart | None = None
    message: dict[str, Any] | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    cost_note: str | None = None  # why cost_usd is None (unknown model) or only an estimate (see pricing.py)
    metrics: Metrics = Field(default_factory=Metrics)
    chunks: list[Chunk] = Field(default_factory=list)
    upstream_chunks: list[Chunk] = Field(default_factory=list)
    upstream_response: Any = None  # OpenRouter's raw answer when it was not streamed
    error: RecordError | None = None
    route: dict[str, Any] | None = None  # the route in config.json that matched: {"index", "when"}
    attempts: list[Attempt] = Field(default_factory=list)  # one per target tried, in order
    # Set by the store when it writes the record (never by the proxy): see cache_break.py.
    cache_break: CacheBreak | None = None

    @property
    def is_final(self) -> bool:
        """Its call is over: nothing changes it any more."""
        return self.status != "pending"

    def summary(self) -> dict[str, Any]:
        """The record without its bulky parts (bodies, chunks): what lists and live events carry."""
        data = self.model_dump(
            mode="json",
            by_alias=True,
            exclude={"upstream_request": True, "upstream_response": True, "chunks": True, "upstream_chunks": True,
                     "request": {"body"}, "response": {"body"}, "message": True},
        )
        data["preview"] = text_preview(self)
        return data


def text_preview(record: Record, limit: int = 160) -> str:
    """The last user text of the request: what a person recognises a request by in a list."""
    body = record.request.body
    if not isinstance(body, dict):
        return ""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content[:limit]
        if isinstance(content, list):
            texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
            texts = [t for t in texts if t and not t.startswith("<system-reminder>")]
            if texts:
                return texts[-1][:limit]
    return ""


def single_attempt(record: Record) -> Attempt:
    """The one try of an ended call that had no fallbacks to try (`derive.to_record` gives it)."""
    response, error = record.response, record.error
    return Attempt(provider=record.provider, model=record.upstream_model or record.model,
                   status=response.status if response else None,
                   error=error.message if error is not None and (response is None or response.status is None
                                                                 or response.status >= 400) else None,
                   duration_ms=record.metrics.ttfb_ms if response and response.status else record.metrics.duration_ms)
