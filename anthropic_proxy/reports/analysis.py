"""The analysis report (`GET /api/monitor/analyze`): where tokens, money and time go, in one pass.

`analyze(records)` reads an iterable of records once (e.g. `Store.iter_records(flt)`, which reads in batches)
and keeps only running totals, one small accumulator per model / provider / day / request type / session /
error type / tool, the durations (one float per record, for exact percentiles) and the top-N most expensive
requests: never the records themselves. `render_html(report)` turns the report into a self-contained page.

Request types (`classify`), deterministic, first rule that matches wins:

 1. `token count`      the call is `/v1/messages/count_tokens`.
 2. Keywords in the latest user text (the last user message that holds text a person typed, skipping
    `<system-reminder>` blocks and tool results, so a tool loop keeps the intent of the prompt that began it):
    `debugging`        error, bug, fix, traceback, exception, stack trace, crash, fail..., broken, not working, debug
    `testing`          test(s), testing, pytest, unit test, coverage
    `refactoring`      refactor, clean up, restructure, rename, simplify, reorganize, deduplicate
    `code review`      review, audit, critique
    `documentation`    docs, documentation, document, readme, docstring, changelog, comment(s)
    `explanation`      explain, why, how does/do/is/are/can/should, what is/are/does/do, what's, walk me through
 3. Tools, from the tool calls in the answer and in the conversation's latest assistant turn:
    `testing`          Bash running a test command (pytest, npm test, go test, cargo test, jest, ...)
    `code generation`  Edit / Write / MultiEdit / NotebookEdit on a source file (by extension)
    `file operations`  those tools on any other file, or Bash moving / copying / deleting / creating files
    `analysis`         Read, Glob, Grep, LS, NotebookRead, WebFetch, WebSearch, Task / Agent (exploration)
    `shell commands`   any other Bash call
    `tool use`         any other tool (MCP servers, custom tools)
 4. `code generation`  the latest user text asks to implement / add / create / write / build / generate / make.
 5. `conversation`     text only; `other` when the request has no readable body.

Sessions (`group_sessions`, and the report's sessions part) group records by `record.session_id` (the
Recorder sets it from `x-claude-code-session-id`, else the session inside `metadata.user_id`). Per session:
requests, turns (distinct new user prompts: requests whose latest message is text a person typed, counted
once per distinct text, so the title and the main call for one prompt are one turn), tokens, cost (priced
requests only; `unpricedRequests` says how many are missing), cache hit rate (cache reads / all prompt
tokens), and duration (first request's start to the last request's end).

The same figures from SQL (store schema v2 columns), except turns:

    SELECT session, count(*) AS requests, total(status = 'error') AS errors,
           total(input_tokens), total(output_tokens), total(cache_creation_tokens), total(cache_read_tokens),
           total(cost_usd), count(*) - count(cost_usd) AS unpriced,
           total(cache_read_tokens) / nullif(total(input_tokens + cache_creation_tokens + cache_read_tokens), 0)
             AS cache_hit_rate,
           min(ts) AS started, max(ts + coalesce(duration_ms, 0) / 1000.0) AS ended
    FROM records WHERE session IS NOT NULL GROUP BY session ORDER BY total(cost_usd) DESC

Turns need a per-record flag: store `is_user_turn(record)` (and `turn_key(record)` to dedupe) at put time.
"""

from __future__ import annotations

import heapq
import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from anthropic_proxy.record.model import Record, text_preview
from anthropic_proxy.record.pricing import (
    USD_QUANTUM,
    PriceBook,
    cache_savings_usd,
    cache_write_premium_usd,
    counts_tokens,
)

# What the report page may load: its inline stylesheet (and style attributes), nothing else. The page says it in
# a meta tag; the web app sends the same policy as the response's header (webui/monitor_api.py).
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'"

REQUEST_TYPES = ("debugging", "testing", "refactoring", "code review", "documentation", "explanation",
                 "code generation", "file operations", "analysis", "shell commands", "tool use", "conversation",
                 "token count", "other")

_KEYWORD_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(pattern, re.IGNORECASE)) for
                                                                name, pattern in (
    ("debugging", r"\b(errors?|bugs?|buggy|fix(es|ed|ing)?|traceback|exceptions?|stack ?traces?|crash(es|ed|ing)?|"
                  r"fail(s|ed|ing|ure|ures)?|broken|not working|doesn'?t work|does not work|debug\w*)\b"),
    ("testing", r"\b(tests?|testing|pytest|unit ?tests?|coverage)\b"),
    ("refactoring", r"\b(refactor\w*|clean ?up|restructur\w*|renam\w*|simplif\w*|reorgani[sz]\w*|dedup\w*)\b"),
    ("code review", r"\b(review\w*|audit\w*|critique)\b"),
    ("documentation", r"\b(docs?|documentation|document|readme|docstrings?|changelog|comments?)\b"),
    ("explanation", r"\b(explain\w*|why|how (does|do|is|are|can|should)|what (is|are|does|do)|what's|"
                    r"walk me through)\b"),
))
_GENERATE = re.compile(r"\b(implement\w*|add|create|write|build|generate|make|scaffold)\b", re.IGNORECASE)
_TEST_COMMAND = re.compile(
    r"\b(pytest|py\.test|unittest|tox|nox|jest|vitest|mocha|rspec|phpunit|ctest)\b"
    r"|\b(npm|pnpm|yarn|bun)\s+(run\s+)?test\b"
    r"|\b(go|cargo|mvn|gradle|gradlew|dotnet|mix|swift|make|deno|zig)\s+test\b|\bbin/test\b")
_FILE_COMMAND = re.compile(r"(^|[;&|]\s*)(mv|cp|rm|mkdir|rmdir|touch|chmod|chown|ln|tar|zip|unzip|rsync)\b")
_EDIT_TOOLS = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit", "str_replace_based_edit_tool",
                         "str_replace_editor"})
_READ_TOOLS = frozenset({"Read", "Glob", "Grep", "LS", "NotebookRead", "WebFetch", "WebSearch", "Task", "Agent",
                         "web_search", "web_fetch", "ToolSearch"})
_SHELL_TOOLS = frozenset({"Bash", "bash", "BashOutput"})
_CODE_EXTENSIONS = frozenset((
    "py", "pyi", "ipynb", "js", "jsx", "ts", "tsx", "mjs", "cjs", "go", "rs", "java", "kt", "kts", "scala", "c", "h",
    "cc", "cpp", "cxx", "hpp", "hh", "cs", "fs", "rb", "php", "swift", "m", "mm", "lua", "pl", "r", "jl", "sh",
    "bash", "zsh", "fish", "ps1", "sql", "vue", "svelte", "dart", "ex", "exs", "erl", "hs", "ml", "clj", "groovy",
    "tf", "zig", "nim", "sol", "css", "scss", "sass", "less", "html", "htm"))


# ---- reading a record --------------------------------------------------------------------------------------
def _messages(record: Record) -> list[Any]:
    body = record.request.body
    messages = body.get("messages") if isinstance(body, dict) else None
    return messages if isinstance(messages, list) else []


def _tool_calls(content: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(content, list):
        return
    for block in content:
        if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
            name = block.get("name")
            if isinstance(name, str) and name:
                tool_input = block.get("input")
                yield name, tool_input if isinstance(tool_input, dict) else {}


def answer_tool_calls(record: Record) -> list[tuple[str, dict[str, Any]]]:
    """The tools the model called in its answer."""
    return list(_tool_calls(record.message.get("content") if isinstance(record.message, dict) else None))


def recent_tool_calls(record: Record) -> list[tuple[str, dict[str, Any]]]:
    """The tools called in the conversation's latest assistant turn (what the request carries results of)."""
    for message in reversed(_messages(record)):
        if isinstance(message, dict) and message.get("role") == "assistant":
            return list(_tool_calls(message.get("content")))
    return []


def latest_user_text(record: Record, limit: int = 4000) -> str:
    return text_preview(record, limit)


def _is_count_tokens(record: Record) -> bool:
    return counts_tokens(record.request.path)


def is_user_turn(record: Record) -> bool:
    """Whether the request's latest user message holds text a person typed (not only tool results)."""
    if _is_count_tokens(record):
        return False
    for message in reversed(_messages(record)):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return bool(content.strip())
        if isinstance(content, list):
            return any(isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
                       and b["text"].strip() and not b["text"].startswith("<system-reminder>") for b in content)
        return False
    return False


def turn_key(record: Record) -> str | None:
    """What identifies the user prompt a request answers (None when the request is not a new prompt)."""
    return latest_user_text(record, 2000) if is_user_turn(record) else None


def _file_path(tool_input: dict[str, Any]) -> str:
    value = tool_input.get("file_path") or tool_input.get("notebook_path") or tool_input.get("path") or ""
    return value if isinstance(value, str) else ""


def _is_code_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[-1].lower() in _CODE_EXTENSIONS


def classify(record: Record) -> str:
    """The request type (see the module docstring for the rules)."""
    if _is_count_tokens(record):
        return "token count"
    if not isinstance(record.request.body, dict):
        return "other"
    text = latest_user_text(record)
    for name, pattern in _KEYWORD_RULES:
        if pattern.search(text):
            return name
    calls = answer_tool_calls(record) + recent_tool_calls(record)
    names = {name for name, _ in calls}
    commands = [str(tool_input.get("command") or "") for name, tool_input in calls if name in _SHELL_TOOLS]
    if any(_TEST_COMMAND.search(command) for command in commands):
        return "testing"
    edits = [_file_path(tool_input) for name, tool_input in calls if name in _EDIT_TOOLS]
    if any(_is_code_file(path) for path in edits):
        return "code generation"
    if edits or any(_FILE_COMMAND.search(command) for command in commands):
        return "file operations"
    if names & _READ_TOOLS:
        return "analysis"
    if names & _SHELL_TOOLS:
        return "shell commands"
    if names:
        return "tool use"
    if _GENERATE.search(text):
        return "code generation"
    return "conversation"


# ---- the report --------------------------------------------------------------------------------------------
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


# ---- accumulators ------------------------------------------------------------------------------------------
def _money(value: Decimal) -> float:
    return float(value.quantize(USD_QUANTUM))


def _dec(value: float | None) -> Decimal:
    return Decimal(repr(value)) if value is not None else Decimal(0)


@dataclass
class _Bucket:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    unpriced: int = 0
    savings: Decimal = field(default_factory=Decimal)
    duration_total: float = 0.0
    timed: int = 0

    def add(self, record: Record, savings: float | None) -> None:
        usage = record.usage
        self.requests += 1
        self.errors += record.status == "error"
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cache_creation_tokens += usage.cache_creation_input_tokens
        self.cache_read_tokens += usage.cache_read_input_tokens
        if record.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost += _dec(record.cost_usd)
        self.savings += _dec(savings)
        if record.metrics.duration_ms is not None:
            self.duration_total += record.metrics.duration_ms
            self.timed += 1

    def tally(self) -> dict[str, Any]:
        """The `Tally` fields, for the models built on it."""
        return {"requests": self.requests, "errors": self.errors, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cache_creation_tokens": self.cache_creation_tokens,
                "cache_read_tokens": self.cache_read_tokens, "cost_usd": _money(self.cost),
                "unpriced_requests": self.unpriced}

    def view(self, key: str) -> Breakdown:
        return Breakdown(key=key, **self.tally(), cache_savings_usd=_money(self.savings),
                         avg_duration_ms=round(self.duration_total / self.timed, 2) if self.timed else None)


@dataclass
class _Session(_Bucket):
    turns: set[str] = field(default_factory=set)
    started: datetime | None = None
    ended: datetime | None = None
    models: Counter[str] = field(default_factory=Counter)

    def add_record(self, record: Record, savings: float | None) -> None:
        self.add(record, savings)
        key = turn_key(record)
        if key is not None:
            self.turns.add(key)
        start = record.timestamp
        end = start + timedelta(milliseconds=record.metrics.duration_ms or 0)
        self.started = start if self.started is None or start < self.started else self.started
        self.ended = end if self.ended is None or end > self.ended else self.ended
        if record.model:
            self.models[record.model] += 1

    def summary(self, session_id: str) -> SessionSummary:
        prompt = self.input_tokens + self.cache_creation_tokens + self.cache_read_tokens
        duration = (self.ended - self.started).total_seconds() * 1000 if self.started and self.ended else None
        return SessionSummary(
            session_id=session_id, **self.tally(), turns=len(self.turns),
            cache_hit_rate=round(self.cache_read_tokens / prompt, 4) if prompt else None,
            started=self.started, ended=self.ended, duration_ms=round(duration, 2) if duration is not None else None,
            models=[m for m, _ in self.models.most_common()])


def _percentiles(values: list[float]) -> Percentiles:
    if not values:
        return Percentiles()
    values.sort()
    n = len(values)

    def at(p: float) -> float:
        return values[round(p * (n - 1))]  # nearest rank, as the store's aggregate

    return Percentiles(count=n, p50=at(0.5), p90=at(0.9), p95=at(0.95), p99=at(0.99), max=values[-1],
                       avg=round(sum(values) / n, 2))


def _summary(record: Record, request_type: str) -> RequestSummary:
    usage = record.usage
    return RequestSummary(id=record.id, timestamp=record.timestamp, model=record.model, provider=record.provider,
                          status=record.status, request_type=request_type, session_id=record.session_id,
                          cost_usd=record.cost_usd, input_tokens=usage.input_tokens,
                          output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_input_tokens,
                          duration_ms=record.metrics.duration_ms, preview=text_preview(record))


def _rows(buckets: dict[str, _Bucket]) -> list[Breakdown]:
    rows = [bucket.view(key) for key, bucket in buckets.items()]
    return sorted(rows, key=lambda r: (-r.cost_usd, -r.requests, r.key))


class Analyzer:
    """Feed records one at a time (`add`), then read the `report()`."""

    def __init__(self, book: PriceBook | None = None, *, top: int = 10) -> None:
        self.book = book or PriceBook()
        self.top = top
        self._totals = _Bucket()
        self._status: Counter[str] = Counter()
        self._first: datetime | None = None
        self._last: datetime | None = None
        self._savings = Decimal(0)
        self._premium = Decimal(0)
        self._unpriced_reads = 0
        self._durations: list[float] = []
        self._ttfb: list[float] = []
        self._by: dict[str, dict[str, _Bucket]] = {"model": {}, "provider": {}, "day": {}, "type": {}}
        self._tools: Counter[str] = Counter()
        self._errors: dict[str, ErrorCount] = {}
        self._expensive: list[tuple[float, int, RequestSummary]] = []
        self._seq = 0
        self._sessions: dict[str, _Session] = {}
        self._no_session = 0
        self._unpriced_models: set[str] = set()

    def add(self, record: Record) -> None:
        self._seq += 1
        request_type = classify(record)
        savings = cache_savings_usd(record, self.book) if record.provider == "anthropic" else None
        if record.usage.cache_read_input_tokens and savings is None:
            self._unpriced_reads += record.usage.cache_read_input_tokens
        self._savings += _dec(savings)
        self._premium += _dec(cache_write_premium_usd(record, self.book) if record.provider == "anthropic" else None)
        self._totals.add(record, savings)
        self._status[record.status] += 1
        ts = record.timestamp
        self._first = ts if self._first is None or ts < self._first else self._first
        self._last = ts if self._last is None or ts > self._last else self._last
        if record.metrics.duration_ms is not None:
            self._durations.append(record.metrics.duration_ms)
        if record.metrics.ttfb_ms is not None:
            self._ttfb.append(record.metrics.ttfb_ms)
        keys = {"model": record.model or "(none)", "provider": record.provider,
                "day": ts.astimezone(UTC).date().isoformat(), "type": request_type}
        for dimension, key in keys.items():
            self._by[dimension].setdefault(key, _Bucket()).add(record, savings)
        for name, _ in answer_tool_calls(record):
            self._tools[name] += 1
        if record.status == "error":
            error_type = record.error.type if record.error else "unknown"
            entry = self._errors.setdefault(error_type, ErrorCount(type=error_type, count=0,
                                                                   example=(record.error.message if record.error
                                                                            else "")[:300]))
            entry.count += 1
        if record.cost_usd is None and record.model:
            self._unpriced_models.add(record.model)
        if record.cost_usd is not None and self.top > 0:
            item = (record.cost_usd, -self._seq, _summary(record, request_type)) if (
                len(self._expensive) < self.top or record.cost_usd > self._expensive[0][0]) else None
            if item is not None:
                (heapq.heappush if len(self._expensive) < self.top else heapq.heapreplace)(self._expensive, item)
        if record.session_id:
            self._sessions.setdefault(record.session_id, _Session()).add_record(record, savings)
        else:
            self._no_session += 1

    def sessions(self) -> list[SessionSummary]:
        """Every session, most expensive first."""
        rows = [s.summary(sid) for sid, s in self._sessions.items()]
        return sorted(rows, key=lambda s: (-s.cost_usd, -s.requests, s.session_id))

    def report(self) -> AnalysisReport:
        t = self._totals
        success, errors = self._status["success"], self._status["error"]
        prompt = t.input_tokens + t.cache_creation_tokens + t.cache_read_tokens
        totals = Totals(
            requests=t.requests, success=success, errors=errors, cancelled=self._status["cancelled"],
            pending=self._status["pending"],
            success_rate=round(success / (success + errors), 4) if success + errors else None,
            input_tokens=t.input_tokens, output_tokens=t.output_tokens, cache_creation_tokens=t.cache_creation_tokens,
            cache_read_tokens=t.cache_read_tokens, total_tokens=prompt + t.output_tokens, cost_usd=_money(t.cost),
            costed_requests=t.requests - t.unpriced, unpriced_requests=t.unpriced)
        cache = CacheEfficiency(
            hit_rate=round(t.cache_read_tokens / prompt, 4) if prompt else None, read_tokens=t.cache_read_tokens,
            write_tokens=t.cache_creation_tokens, uncached_input_tokens=t.input_tokens,
            savings_usd=_money(self._savings), write_premium_usd=_money(self._premium),
            net_savings_usd=_money(self._savings - self._premium), unpriced_read_tokens=self._unpriced_reads)
        by_day = sorted((b.view(k) for k, b in self._by["day"].items()), key=lambda r: r.key)
        errors_by_type = sorted(self._errors.values(), key=lambda e: (-e.count, e.type))
        expensive = [s for _, _, s in sorted(self._expensive, key=lambda item: (-item[0], -item[1]))]
        sessions = self.sessions()
        return AnalysisReport(
            generated_at=datetime.now(UTC), first_timestamp=self._first, last_timestamp=self._last,
            totals=totals, cache=cache, latency_ms=_percentiles(self._durations), ttfb_ms=_percentiles(self._ttfb),
            by_model=_rows(self._by["model"]), by_provider=_rows(self._by["provider"]), by_day=by_day,
            by_request_type=_rows(self._by["type"]),
            tool_usage=[ToolCount(name=n, count=c)
                        for n, c in sorted(self._tools.items(), key=lambda i: (-i[1], i[0]))],
            errors_by_type=errors_by_type, most_expensive_requests=expensive, session_count=len(sessions),
            records_without_session=self._no_session, most_expensive_sessions=sessions[:self.top],
            unpriced_models=sorted(self._unpriced_models))


def analyze(records: Iterable[Record], *, book: PriceBook | None = None, top: int = 10) -> AnalysisReport:
    """The report over `records`, read once. `book` prices cache savings (pass `runtime.prices`)."""
    analyzer = Analyzer(book, top=top)
    for record in records:
        analyzer.add(record)
    return analyzer.report()


def group_sessions(records: Iterable[Record], *, book: PriceBook | None = None) -> list[SessionSummary]:
    """Every Claude Code session among `records`, most expensive first (see the module docstring)."""
    analyzer = Analyzer(book, top=0)
    for record in records:
        if record.session_id:
            analyzer.add(record)
    return analyzer.sessions()


# ---- HTML --------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _usd_decimals(values: Iterable[float | None]) -> int:
    """The decimals that show the smallest non-zero cost among `values` with two significant digits (2 to 8; costs
    are kept to 1e-8 USD): one rule for a whole column, as on the monitor (common.js costDecimals)."""
    smallest = min((abs(value) for value in values if value), default=None)
    return 2 if smallest is None else min(8, max(2, math.ceil(-math.log10(smallest)) + 1))


def _usd(value: float | None, decimals: int | None = None) -> str:
    if value is None:
        return "—"
    return f"${value:,.{_usd_decimals([value]) if decimals is None else decimals}f}"


def _int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _time(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[list[Any]], *, numeric_from: int = 1, empty: str = "Nothing yet.") -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    num = ' class="num"'
    head = "".join(f"<th{num if i >= numeric_from else ''}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{num if i >= numeric_from else ''}>{_e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(rows: list[tuple[str, float, str]]) -> str:
    """Label, value, shown value: a CSS bar chart (no script)."""
    if not rows:
        return '<p class="empty">Nothing yet.</p>'
    top = max(value for _, value, _ in rows) or 1
    items = "".join(
        f'<div class="bar-row"><span class="bar-label">{_e(label)}</span>'
        f'<span class="bar-track"><span class="bar" style="width:{_e(f"{max(value, 0) / top * 100:.1f}")}%"></span>'
        f'</span><span class="bar-value">{_e(shown)}</span></div>' for label, value, shown in rows)
    return f'<div class="bars">{items}</div>'


def _breakdown(rows: list[Breakdown], first: str) -> str:
    cost, savings = _usd_decimals(r.cost_usd for r in rows), _usd_decimals(r.cache_savings_usd for r in rows)
    return _table([first, "Requests", "Errors", "Input", "Output", "Cache write", "Cache read", "Cost",
                   "Unpriced", "Cache savings", "Avg latency"],
                  [[r.key, _int(r.requests), _int(r.errors), _int(r.input_tokens), _int(r.output_tokens),
                    _int(r.cache_creation_tokens), _int(r.cache_read_tokens), _usd(r.cost_usd, cost),
                    _int(r.unpriced_requests), _usd(r.cache_savings_usd, savings), _ms(r.avg_duration_ms)]
                   for r in rows])


def _card(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
            f'<div class="sub">{_e(sub)}</div></div>')


_STYLE = """
:root{color-scheme:light dark;--fg:#1d232b;--muted:#5f6b7a;--line:#d9dee5;--bg:#fff;--panel:#f6f8fa;--accent:#c15f3c}
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ee;--muted:#9aa5b4;--line:#2f3742;--bg:#14181d;--panel:#1b2027}}
*{box-sizing:border-box}body{margin:0;padding:24px;font:14px/1.45 system-ui,sans-serif;color:var(--fg);
background:var(--bg)}h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid
var(--line);padding-bottom:4px}.meta,.sub,.empty{color:var(--muted)}.cards{display:grid;gap:10px;
grid-template-columns:repeat(auto-fill,minmax(170px,1fr));margin-top:16px}.card{background:var(--panel);
border:1px solid var(--line);border-radius:8px;padding:10px 12px}.card .label{color:var(--muted);font-size:12px}
.card .value{font-size:20px;font-weight:600}.card .sub{font-size:12px}table{border-collapse:collapse;width:100%;
font-size:13px}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}td{overflow-wrap:anywhere}.bars{display:grid;gap:4px}.bar-row{display:grid;
grid-template-columns:minmax(120px,220px) 1fr 110px;gap:8px;align-items:center}.bar-label{overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}.bar-track{background:var(--panel);border-radius:3px;height:12px}
.bar{display:block;background:var(--accent);height:12px;border-radius:3px}.bar-value{text-align:right;
font-variant-numeric:tabular-nums}.grid2{display:grid;gap:24px;grid-template-columns:repeat(auto-fit,
minmax(360px,1fr))}.warn{color:var(--accent)}
"""


def render_html(report: AnalysisReport, *, title: str = "anthropic-proxy analysis") -> str:
    """A self-contained page: inline style, no script, no external resource; every value HTML-escaped."""
    t, c, lat, ttfb = report.totals, report.cache, report.latency_ms, report.ttfb_ms
    model_cost = _usd_decimals(r.cost_usd for r in report.by_model)
    request_cost = _usd_decimals(r.cost_usd for r in report.most_expensive_requests)
    session_cost = _usd_decimals(s.cost_usd for s in report.most_expensive_sessions)
    filters = ", ".join(f"{k}={v}" for k, v in report.filters.items() if v not in (None, "")) or "none"
    cards = "".join([
        _card("Requests", _int(t.requests), f"{_int(t.success)} ok · {_int(t.errors)} errors · "
                                            f"{_int(t.cancelled)} cancelled"),
        _card("Success rate", _pct(t.success_rate)),
        _card("Cost", _usd(t.cost_usd), f"{_int(t.unpriced_requests)} without a price" if t.unpriced_requests
              else "every request priced"),
        _card("Tokens incl. cache", _int(t.total_tokens), f"{_int(t.input_tokens)} in · {_int(t.output_tokens)} out · "
              f"{_int(t.cache_read_tokens)} cache read · {_int(t.cache_creation_tokens)} cache write"),
        _card("Cache hit rate", _pct(c.hit_rate), f"{_int(c.read_tokens)} read · {_int(c.write_tokens)} written"),
        _card("Cache savings", _usd(c.savings_usd), f"net {_usd(c.net_savings_usd)} after "
                                                    f"{_usd(c.write_premium_usd)} write premium"),
        _card("Latency p50 / p95", f"{_ms(lat.p50)} / {_ms(lat.p95)}", f"p99 {_ms(lat.p99)} · max {_ms(lat.max)}"),
        _card("Time to first byte p50", _ms(ttfb.p50), f"p95 {_ms(ttfb.p95)}"),
        _card("Sessions", _int(report.session_count), f"{_int(report.records_without_session)} requests without one"),
    ])
    unpriced = (f'<p class="warn">No price for: {_e(", ".join(report.unpriced_models))}. Their cost is left out; '
                f'add them to prices.json in the state directory.</p>' if report.unpriced_models else "")
    sections = [
        f"<h1>{_e(title)}</h1>",
        f'<div class="meta">Generated {_e(_time(report.generated_at))} · records from '
        f'{_e(_time(report.first_timestamp))} to {_e(_time(report.last_timestamp))} · filters: {_e(filters)}</div>',
        f'<div class="cards">{cards}</div>', unpriced,
        '<div class="grid2"><section><h2>Cost by model</h2>'
        + _bars([(r.key, r.cost_usd, _usd(r.cost_usd, model_cost)) for r in report.by_model]) + "</section>"
        + "<section><h2>Requests by type</h2>"
        + _bars([(r.key, r.requests, _int(r.requests)) for r in report.by_request_type]) + "</section></div>",
        "<h2>By model</h2>" + _breakdown(report.by_model, "Model"),
        "<h2>By request type</h2>" + _breakdown(report.by_request_type, "Type"),
        "<h2>By provider</h2>" + _breakdown(report.by_provider, "Provider"),
        "<h2>By day (UTC)</h2>" + _breakdown(report.by_day, "Day"),
        "<h2>Cache efficiency</h2>" + _table(["Figure", "Value"], [
            ["Hit rate (cache reads / all prompt tokens)", _pct(c.hit_rate)],
            ["Cache read tokens", _int(c.read_tokens)], ["Cache write tokens", _int(c.write_tokens)],
            ["Uncached input tokens", _int(c.uncached_input_tokens)],
            ["Saved by cache reads (vs. the input price)", _usd(c.savings_usd)],
            ["Paid above the input price for cache writes", _usd(c.write_premium_usd)],
            ["Net savings", _usd(c.net_savings_usd)],
            ["Cache reads without a price (not in the savings)", _int(c.unpriced_read_tokens)]]),
        "<h2>Latency</h2>" + _table(["", "Count", "p50", "p90", "p95", "p99", "Max", "Average"], [
            [name, _int(p.count), _ms(p.p50), _ms(p.p90), _ms(p.p95), _ms(p.p99), _ms(p.max), _ms(p.avg)]
            for name, p in (("Total duration", lat), ("Time to first byte", ttfb))]),
        '<div class="grid2"><section><h2>Tool calls</h2>'
        + _table(["Tool", "Calls"], [[x.name, _int(x.count)] for x in report.tool_usage], empty="No tool calls.")
        + "</section><section><h2>Errors by type</h2>"
        + _table(["Type", "Example", "Count"], [[x.type, x.example, _int(x.count)] for x in report.errors_by_type],
                 numeric_from=2, empty="No errors.") + "</section></div>",
        "<h2>Most expensive requests</h2>" + _table(
            ["Time", "Model", "Type", "Session", "Prompt", "Input", "Output", "Cache read", "Duration", "Cost"],
            [[_time(r.timestamp), r.model or "—", r.request_type, r.session_id or "—", r.preview,
              _int(r.input_tokens), _int(r.output_tokens), _int(r.cache_read_tokens), _ms(r.duration_ms),
              _usd(r.cost_usd, request_cost)] for r in report.most_expensive_requests], numeric_from=5),
        "<h2>Most expensive sessions</h2>" + _table(
            ["Session", "Models", "Requests", "Turns", "Errors", "Input", "Output", "Cache hit rate", "Duration",
             "Cost"],
            [[s.session_id, ", ".join(s.models), _int(s.requests), _int(s.turns), _int(s.errors),
              _int(s.input_tokens), _int(s.output_tokens), _pct(s.cache_hit_rate), _ms(s.duration_ms),
              _usd(s.cost_usd, session_cost) + (f" (+{s.unpriced_requests} unpriced)" if s.unpriced_requests else "")]
             for s in report.most_expensive_sessions], numeric_from=2, empty="No Claude Code sessions."),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{REPORT_CSP}\">"  # a constant: nothing to escape
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        + "".join(sections) + "</body></html>\n"
    )
