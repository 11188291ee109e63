"""The analysis report's shape (`AnalysisReport` and its parts): what analysis.py computes, the web API serves as
JSON (camelCase) and analysis_page.py shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Totals(_Model):
    requests: int = 0
    success: int = 0
    errors: int = 0
    cancelled: int = 0
    pending: int = 0
    success_rate: float | None = None  # success / (success + errors)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    total_tokens: int = 0  # input + output + cache writes + cache reads
    cost_usd: float = 0.0  # priced requests only
    costed_requests: int = 0
    unpriced_requests: int = 0


class CacheEfficiency(_Model):
    hit_rate: float | None = None  # cache reads / (input + cache writes + cache reads)
    read_tokens: int = 0
    write_tokens: int = 0
    uncached_input_tokens: int = 0
    savings_usd: float = 0.0  # what the reads would have cost at the input price minus what they cost
    write_premium_usd: float = 0.0  # what the writes cost above the input price
    net_savings_usd: float = 0.0
    unpriced_read_tokens: int = 0  # cache reads of models without a price (not in savings)


class Percentiles(_Model):
    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    avg: float | None = None


class Tally(_Model):
    """The figures every group of records has (a model, a day, a session, ...)."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_requests: int = 0


class Breakdown(Tally):
    key: str
    cache_savings_usd: float = 0.0
    avg_duration_ms: float | None = None


class ToolCount(_Model):
    name: str
    count: int


class ErrorCount(_Model):
    type: str
    count: int
    example: str = ""


class RequestSummary(_Model):
    id: str
    timestamp: datetime
    model: str | None
    provider: str
    status: str
    request_type: str
    session_id: str | None
    cost_usd: float | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    duration_ms: float | None
    preview: str


class SessionSummary(Tally):
    session_id: str
    turns: int = 0
    cache_hit_rate: float | None = None
    started: datetime | None = None
    ended: datetime | None = None
    duration_ms: float | None = None
    models: list[str] = Field(default_factory=list)  # most used first


class AnalysisReport(_Model):
    generated_at: datetime
    filters: dict[str, Any] = Field(default_factory=dict)  # set by the caller, shown in the page
    first_timestamp: datetime | None = None
    last_timestamp: datetime | None = None
    totals: Totals
    cache: CacheEfficiency
    latency_ms: Percentiles
    ttfb_ms: Percentiles
    by_model: list[Breakdown]
    by_provider: list[Breakdown]
    by_day: list[Breakdown]
    by_request_type: list[Breakdown]
    tool_usage: list[ToolCount]
    errors_by_type: list[ErrorCount]
    most_expensive_requests: list[RequestSummary]
    session_count: int = 0
    records_without_session: int = 0
    most_expensive_sessions: list[SessionSummary]
    unpriced_models: list[str]
