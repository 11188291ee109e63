"""The analysis report: request-type rules, sessions from captured Claude Code requests, hand-checked totals,
one pass without holding records, and an HTML page that escapes hostile prompts."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.http import Headers

from anthropic_proxy.record.call import session_of
from anthropic_proxy.record.model import HttpRequestPart, Metrics, Record, RecordError, Usage
from anthropic_proxy.record.pricing import PriceBook, apply_cost
from anthropic_proxy.reports.analysis import (
    REQUEST_TYPES,
    AnalysisReport,
    analyze,
    classify,
    group_sessions,
    is_user_turn,
    render_html,
    turn_key,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "claude_code"
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
BOOK = PriceBook()


def tool_use(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{name}", "name": name, "input": tool_input}


def make(prompt: Any = "hello there", *, answer: list[dict] | None = None, history: list[dict] | None = None,
         model: str = "claude-sonnet-4-5-20250929", usage: dict[str, int] | None = None, status: str = "success",
         session: str | None = None, at: datetime = T0, duration: float | None = 1000.0, ttfb: float | None = 200.0,
         error: RecordError | None = None, path: str = "/v1/messages", price: bool = True,
         provider: str = "anthropic") -> Record:
    messages = [*(history or []), {"role": "user", "content": prompt}]
    u = usage or {}
    record = Record(
        timestamp=at, model=model, status=status, session_id=session, provider=provider, error=error,
        request=HttpRequestPart(method="POST", path=path, body={"model": model, "messages": messages}),
        message={"type": "message", "role": "assistant", "content": answer or [{"type": "text", "text": "ok"}],
                 "usage": u},
        usage=Usage.from_anthropic(u), metrics=Metrics(duration_ms=duration, ttfb_ms=ttfb),
    )
    return apply_cost(record, BOOK) if price else record


def tool_loop(prompt: str, *calls: dict[str, Any], answer: list[dict] | None = None, **kwargs: Any) -> Record:
    """A request in a tool loop: the prompt, the assistant's tool calls, then the tool results."""
    history = [{"role": "user", "content": prompt}, {"role": "assistant", "content": list(calls)}]
    results = [{"type": "tool_result", "tool_use_id": c["id"], "content": "done"} for c in calls]
    return make(results, history=history, answer=answer, **kwargs)


# ---- request types -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("record", "expected"), [
    (make("Why does this crash with a traceback?"), "debugging"),
    (make("the build fails on CI"), "debugging"),
    (make("Write unit tests for the parser"), "testing"),
    (make("Refactor the store module"), "refactoring"),
    (make("Please review this diff"), "code review"),
    (make("Update the README"), "documentation"),
    (make("Explain how the router works"), "explanation"),
    (make("what does this function return?"), "explanation"),
    (tool_loop("implement the cache", tool_use("Edit", file_path="/src/cache.py")), "code generation"),
    (make("go", answer=[tool_use("Write", file_path="/src/new_module.ts", content="x")]), "code generation"),
    (make("go", answer=[tool_use("Write", file_path="/notes/todo.txt", content="x")]), "file operations"),
    (tool_loop("tidy", tool_use("Bash", command="rm -rf build && mkdir build")), "file operations"),
    (tool_loop("check it", tool_use("Bash", command="cd app && python -m pytest -q")), "testing"),
    (make("go", answer=[tool_use("Bash", command="npm run test -- --watch=false")]), "testing"),
    (tool_loop("look around", tool_use("Grep", pattern="TODO"), tool_use("Read", file_path="/a.py")), "analysis"),
    (make("go", answer=[tool_use("Task", prompt="find the config")]), "analysis"),
    (tool_loop("status please", tool_use("Bash", command="git status")), "shell commands"),
    (make("go", answer=[tool_use("mcp__github__create_issue", title="x")]), "tool use"),
    (make("add a function that sums two numbers"), "code generation"),
    (make("hello there"), "conversation"),
    (make([{"type": "text", "text": "<system-reminder>fix the error bug</system-reminder>"},
           {"type": "text", "text": "hello"}]), "conversation"),
    (make("hi", path="/v1/messages/count_tokens?beta=true"), "token count"),
])
def test_classify(record, expected):
    assert expected in REQUEST_TYPES
    assert classify(record) == expected


def test_classify_without_a_json_body():
    record = make()
    record.request.body = "not json"
    assert classify(record) == "other"


def test_keywords_keep_the_prompt_intent_through_a_tool_loop():
    record = tool_loop("fix the failing import", tool_use("Read", file_path="/a.py"))
    assert classify(record) == "debugging"


# ---- sessions from captured Claude Code requests -----------------------------------------------------------
def fixture_record(name: str, *, drop_header: bool = False, **kwargs: Any) -> Record:
    captured = json.loads((DATA / name).read_text())
    headers = Headers(**{k.replace("-", "_"): v for k, v in captured["headers"].items()
                         if not (drop_header and k == "x-claude-code-session-id")})
    body = captured["body"]
    record = Record(timestamp=kwargs.pop("at", T0), model=body.get("model"), status="success",
                    request=HttpRequestPart(method="POST", path=captured["path"], body=body),
                    session_id=session_of(headers, body), **kwargs)
    return apply_cost(record, BOOK)


def test_sessions_from_claude_code_headers_and_metadata():
    first = fixture_record("claude_code_request_01_first_turn_default_model.json")
    assert first.session_id == "8631716d-0e30-4f59-b3f8-84cf08417d1e"
    from_metadata = fixture_record("claude_code_request_01_first_turn_default_model.json", drop_header=True)
    assert from_metadata.session_id == first.session_id  # metadata.user_id's session_id
    counted = fixture_record("claude_code_request_05_count_tokens.json")
    assert counted.session_id == "9d67f29b-4a33-4ea2-a1c0-0bf29b7b71be"  # the header only: no metadata


def test_user_turns_of_claude_code_requests():
    assert is_user_turn(fixture_record("claude_code_request_01_first_turn_default_model.json"))
    assert not is_user_turn(fixture_record("claude_code_request_02_tool_result_turn.json"))
    assert is_user_turn(fixture_record("claude_code_request_04_session_title_structured_output.json"))
    assert not is_user_turn(fixture_record("claude_code_request_05_count_tokens.json"))
    assert turn_key(fixture_record("claude_code_request_02_tool_result_turn.json")) is None


def test_group_sessions_of_captured_requests():
    usage = {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 300,
             "cache_creation_input_tokens": 100}
    records = [
        fixture_record("claude_code_request_04_session_title_structured_output.json", at=T0,
                       usage=Usage(**usage), metrics=Metrics(duration_ms=500)),
        fixture_record("claude_code_request_05_count_tokens.json", at=T0 + timedelta(seconds=1),
                       usage=Usage(input_tokens=900), metrics=Metrics(duration_ms=100)),
        fixture_record("claude_code_request_01_first_turn_default_model.json", at=T0 + timedelta(seconds=5)),
        fixture_record("claude_code_request_02_tool_result_turn.json", at=T0 + timedelta(seconds=6)),
        fixture_record("claude_code_request_06_v2_1_332_tool_result_turn.json", at=T0 + timedelta(seconds=7)),
    ]
    records.append(make("no session"))
    sessions = {s.session_id: s for s in group_sessions(records, book=BOOK)}
    assert set(sessions) == {"9d67f29b-4a33-4ea2-a1c0-0bf29b7b71be", "8631716d-0e30-4f59-b3f8-84cf08417d1e",
                             "374b028b-9217-4d80-9d20-6843bdee5af3", "84baf7b0-e196-416a-8d0e-dbf56bcd3f58"}
    title = sessions["9d67f29b-4a33-4ea2-a1c0-0bf29b7b71be"]
    assert (title.requests, title.turns) == (2, 1)  # the count_tokens call is no new prompt
    assert title.input_tokens == 1000 and title.cache_read_tokens == 300
    assert title.cache_hit_rate == round(300 / 1400, 4)
    assert title.duration_ms == 1100.0  # first start to the count_tokens call's end (1 s + 100 ms)
    # Opus 4.8: 100x5 + 10x25 + 100x6.25 + 300x0.5 = 1525 per MTok; count_tokens is free
    assert title.cost_usd == 0.001525 and title.unpriced_requests == 0
    assert title.models == ["claude-opus-4-8"]
    assert sessions["374b028b-9217-4d80-9d20-6843bdee5af3"].turns == 0  # a tool-result request


def test_turns_count_distinct_prompts():
    records = [make("first prompt", session="s", at=T0), make("first prompt", session="s", at=T0),  # title + main
               tool_loop("first prompt", tool_use("Read", file_path="/x.py"), session="s"),
               make("second prompt", session="s", at=T0 + timedelta(minutes=1))]
    (session,) = group_sessions(records)
    assert (session.requests, session.turns) == (4, 2)


# ---- the report --------------------------------------------------------------------------------------------
def sample() -> list[Record]:
    sonnet = {"input_tokens": 1000, "output_tokens": 500, "cache_creation_input_tokens": 2000,
              "cache_read_input_tokens": 10000}
    return [
        # 1000x3 + 500x15 + 2000x3.75 + 10000x0.3 = 21000 -> $0.021; savings 10000 x 2.7 = $0.027;
        # write premium 2000 x 0.75 = $0.0015
        make("Explain the store", usage=sonnet, session="s1", at=T0, duration=1000, ttfb=100,
             answer=[tool_use("Read", file_path="/a.py"), tool_use("Read", file_path="/b.py")]),
        # Haiku 4.5: 100x1 + 100x5 = 600 -> $0.0006
        make("hello", model="claude-haiku-4-5-20251001", usage={"input_tokens": 100, "output_tokens": 100},
             session="s1", at=T0 + timedelta(seconds=30), duration=3000, ttfb=300,
             answer=[tool_use("Bash", command="ls")]),
        # unknown model: no cost; its 50 cache reads are not in the savings
        make("hello", model="claude-mystery-1", usage={"input_tokens": 10, "output_tokens": 10,
                                                       "cache_read_input_tokens": 50},
             session="s2", at=T0 + timedelta(days=1), duration=2000, ttfb=None),
        make("hello", status="error", error=RecordError(type="rate_limit_error", message="slow down"),
             at=T0 + timedelta(days=1), duration=50, ttfb=50),
        make("hello", status="error", error=RecordError(type="rate_limit_error", message="again"),
             at=T0 + timedelta(days=1), duration=60, ttfb=60),
        make("hello", status="cancelled", error=RecordError(type="client_disconnected", message="bye"),
             at=T0 + timedelta(days=1), duration=None, ttfb=None),
    ]


def test_report_figures():
    report = analyze(sample(), book=BOOK, top=2)
    t = report.totals
    assert (t.requests, t.success, t.errors, t.cancelled, t.pending) == (6, 3, 2, 1, 0)
    assert t.success_rate == 0.6
    assert (t.input_tokens, t.output_tokens, t.cache_creation_tokens, t.cache_read_tokens) == (1110, 610, 2000, 10050)
    assert t.total_tokens == 1110 + 610 + 2000 + 10050
    assert t.cost_usd == 0.0216 and t.costed_requests == 5 and t.unpriced_requests == 1
    assert report.unpriced_models == ["claude-mystery-1"]
    c = report.cache
    assert c.hit_rate == round(10050 / (1110 + 2000 + 10050), 4)
    assert (c.savings_usd, c.write_premium_usd, c.net_savings_usd) == (0.027, 0.0015, 0.0255)
    assert c.unpriced_read_tokens == 50
    assert report.latency_ms.count == 5 and report.latency_ms.p50 == 1000 and report.latency_ms.max == 3000
    assert report.ttfb_ms.count == 4 and report.ttfb_ms.p50 == 100
    by_model = {r.key: r for r in report.by_model}
    assert report.by_model[0].key == "claude-sonnet-4-5-20250929"  # most expensive first
    assert by_model["claude-sonnet-4-5-20250929"].cache_savings_usd == 0.027
    assert by_model["claude-mystery-1"].unpriced_requests == 1
    assert [(r.key, r.requests) for r in report.by_day] == [("2026-11-20", 2), ("2026-11-21", 4)]
    assert {r.key: r.requests for r in report.by_provider} == {"anthropic": 6}
    assert {r.key: r.requests for r in report.by_request_type} == {"explanation": 1, "shell commands": 1,
                                                                   "conversation": 4}
    assert [(x.name, x.count) for x in report.tool_usage] == [("Read", 2), ("Bash", 1)]
    assert [(e.type, e.count, e.example) for e in report.errors_by_type] == [("rate_limit_error", 2, "slow down")]
    assert [r.cost_usd for r in report.most_expensive_requests] == [0.021, 0.0006]
    assert report.most_expensive_requests[0].request_type == "explanation"
    assert (report.session_count, report.records_without_session) == (2, 3)
    s1 = report.most_expensive_sessions[0]
    assert (s1.session_id, s1.requests, s1.turns, s1.cost_usd, s1.duration_ms) == ("s1", 2, 2, 0.0216, 33000.0)
    assert report.first_timestamp == T0 and report.last_timestamp == T0 + timedelta(days=1)


def test_report_json_is_camel_case():
    data = json.loads(analyze(sample()).model_dump_json(by_alias=True))
    assert {"generatedAt", "totals", "cache", "latencyMs", "byModel", "byRequestType", "toolUsage", "errorsByType",
            "mostExpensiveRequests", "mostExpensiveSessions", "unpricedModels"} <= set(data)
    assert "costUsd" in data["totals"] and "savingsUsd" in data["cache"]
    assert AnalysisReport.model_validate(data).totals.requests == 6


def test_empty_report():
    report = analyze([])
    assert report.totals.requests == 0 and report.totals.success_rate is None and report.cache.hit_rate is None
    assert report.latency_ms.p50 is None and report.most_expensive_sessions == []
    assert "Nothing yet." in render_html(report)


def test_one_pass_without_holding_records():
    big = "x" * 50_000
    consumed = 0

    def records() -> Iterator[Record]:
        nonlocal consumed
        for i in range(1500):
            consumed += 1
            yield make(big, session=f"s{i % 7}", usage={"input_tokens": 10, "output_tokens": 1}, price=False,
                       at=T0 + timedelta(seconds=i))

    tracemalloc.start()
    try:
        report = analyze(records(), top=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert consumed == 1500 and report.totals.requests == 1500 and report.session_count == 7
    assert peak < 15_000_000, f"peak {peak} bytes: records are being kept (1500 x 50 kB = 75 MB)"
    assert len(report.most_expensive_requests) == 0  # unpriced records are never "most expensive"


# ---- HTML --------------------------------------------------------------------------------------------------
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "div", "section", "span", "p", "table",
                "thead", "tbody", "tr", "th", "td"}


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def hostile_report() -> AnalysisReport:
    records = [
        make(HOSTILE, model=f'claude-"><svg onload=alert(2)>{HOSTILE}', session=f"<b>{HOSTILE}</b>",
             usage={"input_tokens": 5, "output_tokens": 5},
             answer=[tool_use(f"<iframe src=//evil>{HOSTILE}", x=1)]),
        make(HOSTILE, status="error", error=RecordError(type=f"<u>{HOSTILE}</u>", message=HOSTILE)),
        make(HOSTILE, model="claude-haiku-4-5", usage={"input_tokens": 5, "output_tokens": 5},
             session=HOSTILE, at=T0 + timedelta(days=1)),
    ]
    report = analyze(records, book=BOOK)
    report.filters = {"q": HOSTILE, "model": "<a href=javascript:alert(3)>m</a>"}
    return report


def test_html_escapes_every_value():
    page = render_html(hostile_report(), title=f"report {HOSTILE}")
    collector = TagCollector()
    collector.feed(page)
    tags = {tag for tag, _ in collector.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    for tag, attrs in collector.tags:
        for name, value in attrs:
            assert not name.startswith("on") and name not in ("src", "href", "srcset", "action"), (tag, name)
            if name == "style":
                assert value and "url(" not in value and "expression" not in value
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<iframe" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page  # shown, as text
    assert "&lt;a href=javascript:alert(3)&gt;" in page


def test_html_is_self_contained():
    page = render_html(analyze(sample(), book=BOOK))
    lowered = page.lower()
    assert lowered.startswith("<!doctype html>") and "<style>" in lowered
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    assert "http://" not in lowered and "https://" not in lowered and "url(" not in lowered
    assert "content-security-policy" in lowered and "default-src 'none'" in page
    for text in ("Most expensive requests", "Most expensive sessions", "Cache efficiency", "Errors by type",
                 "rate_limit_error", "claude-mystery-1", "$0.027"):
        assert text in page, text


def test_html_costs_share_one_rule_per_column():
    """$0.0123 and $0.000078 in one column show with the same decimals (it was $0.0123 above $0.00007800)."""
    records = [make("expensive", price=False), make("cheap", price=False)]
    records[0].cost_usd, records[1].cost_usd = 0.0123, 0.000078
    page = render_html(analyze(records, book=BOOK))
    requests = page[page.index("Most expensive requests"):page.index("Most expensive sessions")]
    assert "<td class=\"num\">$0.012300</td>" in requests and "<td class=\"num\">$0.000078</td>" in requests
