"""How a finished API call reads in one line: the terminal log's line per call and mitmweb's flow comment.

The terminal line is logged by the store's writer process (`store.writer.child.Writer`), the one place that learns
every record's outcome, usage and cost: it derives each call's record from its capture, so the proxy's event loop
does not parse a stream or a request body for a log line.
"""

from __future__ import annotations

import logging

from mitmproxy.log import LegacyLogEvents

from anthropic_proxy.record.model import Record

logger = logging.getLogger("anthropic_proxy.calls")


def money(cost: float) -> str:
    return f"${cost:.4f}" if cost >= 0.01 else f"${cost:.6f}"


def provider_name(provider: str) -> str:
    return "OpenRouter" if provider == "openrouter" else provider


def via(record: Record) -> str:
    """Where the call went: `· anthropic` for a plain passthrough, else `→ model via provider`."""
    if record.provider == "anthropic" and record.upstream_model in (None, record.model):
        return "· anthropic"
    return f"→ {record.upstream_model or '?'} via {provider_name(record.provider)}"


def summary_parts(record: Record) -> list[str]:
    """What a person scanning calls wants to know: model (and where it went), outcome, tokens, cost, duration."""
    head = f"{record.model or '?'} {via(record)}"
    if record.request.path.split("?", 1)[0].endswith("/count_tokens"):
        head += " · count_tokens"
    if record.status == "success":
        outcome = record.stop_reason or "ok"
    elif record.status == "error" and record.error is not None:
        outcome = f"error {record.error.type}: {record.error.message[:120]}"
    elif record.status == "cancelled":
        outcome = "cancelled (the client left)"
    else:
        outcome = record.status
    usage = record.usage
    tokens = f"in {usage.input_tokens} / out {usage.output_tokens} tok"
    if usage.cache_read_input_tokens or usage.cache_creation_input_tokens:
        tokens += f" (cache read {usage.cache_read_input_tokens}, write {usage.cache_creation_input_tokens})"
    if record.cost_usd is not None:
        cost = money(record.cost_usd)
    else:
        note = getattr(record, "cost_note", None)
        cost = f"cost unknown ({note})" if note else "cost unknown"
    parts = [head, outcome, tokens, cost]
    if record.metrics.duration_ms is not None:
        parts.append(f"{record.metrics.duration_ms / 1000:.2f} s")
    if len(record.attempts) > 1:
        parts.append(f"after {len(record.attempts)} attempts: " + ", ".join(
            f"{a.provider} {a.status or 'no answer'}" for a in record.attempts))
    return parts


def call_line(record: Record) -> str:
    """`POST /v1/messages 200 · claude-sonnet-4-5 · anthropic · end_turn · in 12 / out 34 tok · $0.000123 · 1.20 s`"""
    status = record.response.status if record.response is not None and record.response.status else "---"
    return f"{record.request.method} {record.request.path} {status} · " + " · ".join(summary_parts(record))


class _ConnectionDetail(logging.Filter):
    """Moves mitmproxy's per-connection lines (client/server connect and disconnect, "Streaming response from
    ...") from info to debug: at the default verbosity the terminal shows one line per API call and nothing of
    the web app's traffic; LOG_LEVEL=debug shows them again."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class _NotCallLines(logging.Filter):
    """Keeps the call lines out of mitmproxy's deprecated `add_log` event. Its handler (`LegacyLogEvents`) hands
    every log record to the event loop and dispatches it through every addon there: a cost on the client's path
    per call, and a wake-up of the loop from the store's receiver thread, for an event that mitmproxy's terminal
    log and mitmweb's event log no longer use (both are logging handlers of their own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != logger.name


def install_log_filters() -> None:
    """mitmproxy's per-connection lines down to debug (`_ConnectionDetail`), the call lines out of its `add_log`
    event (`_NotCallLines`). Idempotent (the filters outlive a reload of the addon script, which calls this again)."""
    connections = logging.getLogger("mitmproxy.proxy.server")
    if not any(isinstance(f, _ConnectionDetail) for f in connections.filters):
        connections.addFilter(_ConnectionDetail())
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LegacyLogEvents) and not any(isinstance(f, _NotCallLines) for f in handler.filters):
            handler.addFilter(_NotCallLines())


def log_call(record: Record) -> None:
    """The terminal's line for a final record (INFO: `termlog_verbosity` / LOG_LEVEL decide whether it shows)."""
    if record.is_final:
        logger.info("%s", call_line(record))
