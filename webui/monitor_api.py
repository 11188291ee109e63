"""/api/monitor/*: the records, their stats, live events, export and import, analysis, clear.

Every endpoint takes the same filters (`status`, `model`, `provider`, `session`, `q`, `timeRange` or
`from`/`to`) and applies them to ALL matching records in the store, never to one page only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, web

from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.record.model import FINAL_STATUSES, Record
from anthropic_proxy.reports import analysis, conversation, importing
from anthropic_proxy.reports import export as exporting
from anthropic_proxy.reports import ratelimits as rate_limits
from anthropic_proxy.runtime import RUNTIME_KEY as RUNTIME
from anthropic_proxy.runtime import Runtime
from anthropic_proxy.store import RecordFilter, parse_time_range, record_json
from anthropic_proxy.store.search import search_text
from anthropic_proxy.webui.common import error_response
from anthropic_proxy.webui.config_api import model_map
from anthropic_proxy.webui.security import token_required

logger = logging.getLogger("anthropic_proxy.webui")
routes = web.RouteTableDef()

STATUSES = frozenset({"pending", *FINAL_STATUSES})
HEARTBEAT_SECONDS = 15.0
EXPORT_BATCH = 200
STREAMS = web.AppKey("monitor_streams", set)


# ---- filters ------------------------------------------------------------------------------------------------
def _bad_request(message: str) -> web.HTTPBadRequest:
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
    return web.HTTPBadRequest(text=body, content_type="application/json")


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"{name} must be a whole number") from None
    return max(lo, min(hi, value))


def parse_instant(value: str, name: str) -> datetime:
    """An ISO 8601 time (naive means UTC) or a Unix time in seconds or milliseconds."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return datetime.fromtimestamp(number / 1000 if number > 1e11 else number, UTC)
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad_request(f"{name} must be an ISO 8601 time or a Unix time (got {value!r})") from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def record_filter(request: web.Request) -> RecordFilter:
    query = request.query
    status = query.get("status") or None
    if status == "all":
        status = None
    if status is not None and status not in STATUSES:
        raise _bad_request(f"status must be one of all, {', '.join(sorted(STATUSES))} (got {status!r})")
    try:
        since = parse_time_range(query.get("timeRange"))
    except ValueError as exc:
        raise _bad_request(str(exc)) from None
    if query.get("from"):
        since = max(filter(None, (since, parse_instant(query["from"], "from"))))
    until = parse_instant(query["to"], "to") if query.get("to") else None
    return RecordFilter(status=status, model=query.get("model") or None, provider=query.get("provider") or None,
                        session=query.get("session") or None, q=(query.get("q") or "").strip() or None,
                        since=since, until=until)


def filter_view(flt: RecordFilter) -> dict[str, Any]:
    return {"status": flt.status, "model": flt.model, "provider": flt.provider, "session": flt.session, "q": flt.q,
            "from": flt.since.isoformat() if flt.since else None, "to": flt.until.isoformat() if flt.until else None}


def summary_matches(summary: dict[str, Any], flt: RecordFilter, search_text: str | None) -> bool:
    """The store's filter, applied to one live event's record summary (and its search text)."""
    for key, wanted in (("status", flt.status), ("model", flt.model), ("provider", flt.provider),
                        ("sessionId", flt.session)):
        if wanted and summary.get(key) != wanted:
            return False
    if flt.since or flt.until:
        try:
            ts = datetime.fromisoformat(str(summary.get("timestamp")))
        except ValueError:
            return False
        if (flt.since and ts < flt.since) or (flt.until and ts > flt.until):
            return False
    if flt.q:
        text = search_text if search_text is not None else str(summary.get("preview") or "").lower()
        return flt.q.lower() in text
    return True


def _in_flight(runtime: Runtime, record_id: str) -> Record | None:
    """A record still in flight, its stream so far read from its log (the exchange itself keeps only bytes)."""
    exchange = runtime.inflight.by_record(record_id)
    return exchange.record(runtime.prices) if exchange is not None else None


# ---- records ------------------------------------------------------------------------------------------------
@routes.get("/api/monitor/requests")
async def list_requests(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    page = _int_param(request, "page", 1, 1, 1_000_000)
    limit = _int_param(request, "limit", 50, 1, 500)
    data, total = await asyncio.to_thread(runtime.store.query, record_filter(request), page=page, limit=limit)
    return web.json_response({"data": data, "total": total, "page": page, "limit": limit})


@routes.get("/api/monitor/requests/{id}")
async def get_request(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    record_id = request.match_info["id"]
    # A record still in flight is fresher in memory than in the store.
    record = _in_flight(runtime, record_id) or await asyncio.to_thread(runtime.store.get, record_id)
    if record is None:
        return error_response(404, f"no record with id {record_id!r}", "not_found_error")
    return web.Response(text=record_json(record), content_type="application/json")


@routes.get("/api/monitor/stats")
async def stats(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    flt = record_filter(request)
    figures = await asyncio.to_thread(runtime.store.aggregate, flt, book=runtime.prices)
    facets = await asyncio.to_thread(runtime.store.facets)
    return web.json_response({**figures, "inFlight": len(runtime.inflight), "facets": facets,
                              "filters": filter_view(flt)})


@routes.post("/api/monitor/clear")
async def clear(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    deleted = await asyncio.to_thread(runtime.store.clear)
    runtime.bus.publish("cleared", {})
    return web.json_response({"deleted": deleted})


# ---- live events ----------------------------------------------------------------------------------------------
def _sse(event: str, data: Any) -> bytes:
    """One live event, keys masked (a summary holds the client's path and the start of its text)."""
    return f"event: {event}\ndata: {mask_text(json.dumps(data, separators=(',', ':')))}\n\n".encode()


@routes.get("/api/monitor/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `started`, `progressed`, `ended` (data: `{"type", "record": summary}`), `cleared`,
    `lagged` (events were lost: re-read the list). With filters, an event is sent when its record matches,
    or when an earlier event of that record was sent (so a client learns that it left the filter)."""
    runtime = request.app[RUNTIME]
    flt = record_filter(request)
    filtered = any(filter_view(flt).values())
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    queue = runtime.bus.subscribe()
    streams: set[asyncio.Queue[Any]] = request.app[STREAMS]
    streams.add(queue)
    sent_ids: set[str] = set()
    try:
        await response.write(b"retry: 2000\n" + _sse("hello", {"inFlight": len(runtime.inflight)}))
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")  # also finds out when the client has gone
                continue
            if event is None:  # the app is shutting down
                break
            if filtered and not _event_wanted(runtime, event, flt, sent_ids):
                continue
            await response.write(_sse(event["type"], event))
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        runtime.bus.unsubscribe(queue)
        streams.discard(queue)
    return response


def _event_wanted(runtime: Runtime, event: dict[str, Any], flt: RecordFilter, sent_ids: set[str]) -> bool:
    summary = event.get("record") or {}
    record_id = summary.get("id")
    if event["type"] in ("cleared", "lagged") or not record_id:
        return True
    record = _in_flight(runtime, record_id) if flt.q else None
    if summary_matches(summary, flt, search_text(record) if record else None) or record_id in sent_ids:
        sent_ids.add(record_id)
        return True
    return False


async def close_streams(app: web.Application) -> None:
    for queue in list(app[STREAMS]):
        queue.put_nowait(None)


# ---- export, analysis, config -----------------------------------------------------------------------------------
def _take(items: Iterator[Any], count: int) -> list[Any]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= count:
            break
    return batch


@routes.get("/api/monitor/export")
async def export(request: web.Request) -> web.StreamResponse:
    """Every matching record in full (keys masked), oldest first, streamed from the store in batches.
    `format=json` (default: one array, the original tool's "export as JSON"), `ndjson` (one record per line),
    `csv` (one row per record, flat columns) or `compact` (lossless; a conversation's repeated history written
    once; see export.py); `gzip=1` compresses the file as it streams."""
    runtime = request.app[RUNTIME]
    flt = record_filter(request)
    fmt = request.query.get("format") or "json"
    if fmt not in exporting.FORMATS:
        raise _bad_request(f"format must be one of {', '.join(exporting.FORMATS)} (got {fmt!r})")
    compress = request.query.get("gzip", "") in ("1", "true", "yes")
    name = exporting.file_name(fmt, gzip=compress)
    chunks: Iterator[Any] = exporting.export_chunks(runtime.store.iter_records(flt), fmt)
    if compress:
        chunks = exporting.gzipped(chunks)
    # The first batch is read before the answer starts: a store that cannot be read (a corrupted page, a missing
    # file) gets an error status with the reason, not a 200 with an empty file.
    try:
        batch = await asyncio.to_thread(_take, chunks, EXPORT_BATCH)
    except Exception as exc:
        return error_response(500, f"the export failed: {_reason(exc)}", "api_error")
    response = web.StreamResponse(headers={
        "Content-Type": "application/gzip" if compress else exporting.CONTENT_TYPES[fmt],
        "Content-Disposition": f'attachment; filename="{name}"',
    })
    await response.prepare(request)
    while batch:
        await response.write(b"".join(batch) if compress else "".join(batch).encode())
        try:
            batch = await asyncio.to_thread(_take, chunks, EXPORT_BATCH)
        except Exception as exc:
            # Too late for a status: end the answer without its last chunk, so the download fails instead of
            # passing for a whole file, and say why in the log.
            logger.error("export of %s failed after it began: %s", name, _reason(exc))
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response


def _reason(exc: Exception) -> str:
    return mask_text(str(exc)) or type(exc).__name__


async def _uploaded_file(request: web.Request) -> AsyncIterator[bytes]:
    """The uploaded export's bytes, as they arrive: the request body itself (`curl --data-binary @FILE`), or the
    file part of a `multipart/form-data` form (`curl -F file=@FILE`, the monitor's Import button)."""
    if request.content_type != "multipart/form-data":
        async for chunk in request.content.iter_chunked(1 << 20):
            yield chunk
        return
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            # the first part that carries a file (curl -F name=@FILE names it), or a field called "file"
            if isinstance(part, BodyPartReader) and (part.filename is not None or part.name == "file"):
                while chunk := await part.read_chunk(1 << 20):
                    yield chunk
                return
    except ValueError as exc:  # no boundary, a malformed part
        raise _bad_request(f"nothing imported: the multipart/form-data upload cannot be read: {exc}") from None
    raise _bad_request("nothing imported: the multipart/form-data upload has no file part: "
                       "send the export as -F file=@export.compact")


@routes.post("/api/monitor/import")
async def import_records(request: web.Request) -> web.Response:
    """Records from an export (compact, ndjson or json; gzipped or not; detected from the content), sent as the
    request body or as a multipart/form-data file upload (see `_uploaded_file`), added in
    one transaction: all of them, or none with a 400 saying where the input is wrong. Records whose id is
    already stored are skipped, so importing a file twice changes nothing. `?format=` insists on one format.
    Answers `{"format", "records", "imported", "skipped"}`."""
    runtime = request.app[RUNTIME]
    fmt = request.query.get("format") or None
    if fmt is not None and fmt not in ("compact", "ndjson", "json"):
        raise _bad_request(f"format must be compact, ndjson or json (got {fmt!r})")
    with tempfile.TemporaryFile() as spool:  # the upload lands on disk first: no lock is held while it arrives
        size = 0
        async for chunk in _uploaded_file(request):
            size += len(chunk)
            await asyncio.to_thread(spool.write, chunk)
        if not size:
            raise _bad_request("nothing imported: the upload is empty: send an export file")
        spool.seek(0)
        result: dict[str, Any] = {}
        try:
            counts = await asyncio.to_thread(
                runtime.store.import_records, importing.read_records(spool, fmt, result))  # type: ignore[arg-type]
        except importing.ImportFailed as exc:
            raise _bad_request(f"nothing imported: {exc}") from None
    if counts["imported"]:
        runtime.bus.publish("lagged", {})  # live views re-read the list
    return web.json_response({**result, **counts})


# The report page has an inline stylesheet and nothing else (no script, no image, no form): exactly what its
# own CSP meta allows, plus what only a header can say. It replaces the app's CSP for this response only.
ANALYSIS_CSP = f"{analysis.REPORT_CSP}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def _analysis_report(runtime: Runtime, flt: RecordFilter) -> analysis.AnalysisReport:
    report = analysis.analyze(runtime.store.iter_records(flt), book=runtime.prices)
    report.filters = filter_view(flt)
    return report


@routes.get("/api/monitor/analyze")
async def analyze(request: web.Request) -> web.Response:
    """The analysis report (analysis.py) over ALL matching records: a self-contained HTML page by default,
    `format=json` for the report as JSON. One pass in a worker thread; the store is read in batches and each
    record is dropped once counted, so memory stays flat however many records match."""
    runtime = request.app[RUNTIME]
    flt = record_filter(request)
    fmt = request.query.get("format") or "html"
    if fmt not in ("html", "json"):
        raise _bad_request(f"format must be html or json (got {fmt!r})")
    report = await asyncio.to_thread(_analysis_report, runtime, flt)
    if fmt == "json":
        return web.json_response(report.model_dump(mode="json", by_alias=True))
    stamp = report.generated_at.strftime("%Y%m%d-%H%M%S")
    return web.Response(text=analysis.render_html(report), content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": ANALYSIS_CSP,
        "Content-Disposition": f'inline; filename="anthropic-proxy-analysis-{stamp}.html"'})


@routes.get("/api/monitor/config")
async def monitor_config(request: web.Request) -> web.Response:
    """What the monitor page shows about the proxy itself (no secrets)."""
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    store = runtime.store
    prices = await asyncio.to_thread(runtime.prices.describe)  # where prices come from (re-reads prices.json)
    return web.json_response({
        "mode": runtime.config.current.mode, "version": runtime.version,
        "listenHost": settings.listen_host, "listenPort": settings.listen_port,
        "anthropicUpstream": settings.anthropic_upstream, "openrouterBaseUrl": settings.openrouter_base_url,
        "maxRecords": store.max_records, "retentionDays": store.retention_days,
        "tokenRequired": token_required(settings), "inFlight": len(runtime.inflight), "prices": prices,
        "modelMap": model_map(runtime),
    })


@routes.get("/api/monitor/ratelimits")
async def ratelimits(request: web.Request) -> web.Response:
    """The `anthropic-ratelimit-*` headers of the matching records (the newest `limit`, default 2000): the latest
    value of each, the limits, the unified windows with a projection, and a time series (see ratelimits.py)."""
    runtime = request.app[RUNTIME]
    flt = record_filter(request)
    limit = _int_param(request, "limit", 2000, 1, 20_000)
    rows = await asyncio.to_thread(runtime.store.ratelimit_headers, flt, limit=limit)
    return web.json_response({**rate_limits.report(rows), "filters": filter_view(flt)})


@routes.get("/api/monitor/sessions/{session}")
async def session_turns(request: web.Request) -> web.Response:
    """One session as a conversation: its calls, oldest first, as turns (see conversation.py); at most `limit`
    (default 1000), the newest."""
    runtime = request.app[RUNTIME]
    session = request.match_info["session"]
    limit = _int_param(request, "limit", 1000, 1, 10_000)

    def read() -> list[dict[str, Any]]:
        records = runtime.store.iter_records(RecordFilter(session=session), tail=conversation.TAIL_MESSAGES)
        return conversation.turns(records)[-limit:]

    found = await asyncio.to_thread(read)
    return web.json_response({"session": session, "turns": found})


def install(app: web.Application) -> None:
    app[STREAMS] = set()
    app.on_shutdown.append(close_streams)
    app.add_routes(routes)
