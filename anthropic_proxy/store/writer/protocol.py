"""What the proxy and its store's writer process say to each other: small dataclasses, pickled over a socket pair,
and the puts themselves, which go through the journal (store/journal/, docs/journal.md).

    proxy -> journal  each put, as an entry (`entry`): its record's capture or JSON
    proxy -> writer   WriterSettings (first, once), then any of:
                      Wake(max_records, retention_days)          the journal has more (and the retention options)
                      Flush(token, seq)                          answered once the journal up to `seq` is written
                                                                 (or a write of it failed)
                      Trace(config)                              spans from now on (tracing.py), None: none
                      Stop()                                     consume the journal to its end, report, exit
    writer -> proxy   Report after each round: how far the journal is consumed, flushes done, counters, log lines,
                      and the CallEnd of each final record taken (call_end.py)

An entry carries one put of a record: a call's capture in its own encoding (`Capture.encode`: the writer derives the
record from it) or a record as its JSON (what tests and tools put). `entry` and `decode` are the two ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anthropic_proxy.record.call_end import CallEnd
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.derive import to_stored
from anthropic_proxy.record.masking import mask_bytes, mask_text
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PriceBook
from anthropic_proxy.record.stream_log import StreamLog
from anthropic_proxy.telemetry.tracing import TraceConfig
from anthropic_proxy.wire import fastjson
from anthropic_proxy.wire.codings import ContentDecoder, DecodingError, codings_of


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """What the writer process needs; sent over the socket (a URL's password never shows in `ps`)."""

    state_dir: Path
    url: str
    busy_timeout: float
    instance_id: str
    instance_name: str
    announced: bool  # on a shared database: heartbeats, and leave `instances` at stop
    legacy: bool  # v2 rows are waiting to be rewritten in the v3 form
    prune_every: int  # PRUNE_EVERY and HEARTBEAT_SECONDS as they were when the store started (tests lower them)
    heartbeat_seconds: float
    batch_bytes: int  # how much of the journal one transaction takes at most (the writer's memory follows it)
    trace: TraceConfig | None = None  # an OpenTelemetry span per call, made here (tracing.py)
    journal: Path | None = None  # the journal's directory (store/journal/): set by WriterProcess


@dataclass(frozen=True, slots=True)
class Wake:
    """The journal has entries the writer may not have read yet; the retention options as they are now (they change
    while the proxy runs)."""

    max_records: int
    retention_days: float


@dataclass(frozen=True, slots=True)
class Flush:
    token: int
    seq: int  # the journal's last entry when the flush was asked


@dataclass(frozen=True, slots=True)
class Trace:
    config: TraceConfig | None


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Message = Wake | Flush | Trace | Stop


@dataclass(slots=True)
class Report:
    """The writer's answer after each round: how far the journal is consumed, the flushes done, and its counters."""

    consumed: int = 1  # every journal entry before this seq is in the database (or given up)
    flushed: list[int] = field(default_factory=list)
    write_errors: int = 0
    last_write_error: str | None = None
    unsaved: int = 0
    lost: int = 0
    notice: str | None = None  # something the operator should know that is not a failing write (a re-created file)
    logs: list[tuple[str, int, str]] = field(default_factory=list)  # (logger name, level, message)
    ends: list[CallEnd] = field(default_factory=list)  # the final records taken this round (see call_end.py)


_CAPTURE, _RECORD = b"C", b"R"  # an entry's first byte: what its bytes are


def entry(item: Record | Capture) -> bytes:
    """A put as a journal entry: a capture in its own compact encoding, a record as its JSON (a lone surrogate,
    which UTF-8 cannot hold, goes as a JSON escape)."""
    if isinstance(item, Capture):
        return b"".join((_CAPTURE, *item.encode_parts()))
    try:
        data = item.model_dump_json(by_alias=True).encode()
    except ValueError:
        data = json.dumps(item.model_dump(mode="json", by_alias=True)).encode()
    return _RECORD + data


def masked(payload: bytes) -> bytes:
    """An entry with every key-like token masked, as the store keeps it: what the journal writes to disk (its
    flusher thread calls this, off the event loop). Most entries hold no key: one look for the keys' literals
    through the whole entry says so, and it is written as it is (the same object).

    A capture's parts are masked one by one, as the store masks them: a key cut in two by a chunk boundary is
    no key to either. (A part's match is a match in the whole entry too, but for a bearer token of exactly 16
    characters that ends in "." where the next part starts with ".": the store's writer masks that one.)

    A stream that passed in a content coding (gzip, br...) hides its keys from that look: such an entry's stream is
    decoded and looked through too, and when it holds a key it is written decoded (and masked), without its
    Content-Encoding header, its size still the one that passed."""
    whole = mask_bytes(payload)
    if payload[:1] != _CAPTURE:  # (a record's JSON stays JSON, its keys masked)
        return whole
    coded = b'"content-encoding"' in Capture.header_of(payload, 1).lower()  # (a few hundred bytes: cheap)
    if whole is payload and not coded:
        return payload
    try:
        capture = Capture.decode(payload[1:])
    except ValueError:  # (the writer says it cannot be stored; masked all the same)
        return whole
    opened = _opened_stream(capture) if coded else None
    if whole is payload and opened is None:
        return payload
    optional = lambda data: None if data is None else mask_bytes(data)  # noqa: E731
    ending = capture.ending
    response_headers = capture.response_headers if opened is None else {
        name: value for name, value in capture.response_headers.items() if name.lower() != "content-encoding"}
    capture = dataclasses.replace(
        capture, request_size=capture.request_bytes, response_size=capture.response_bytes,  # (as they passed)
        path=mask_text(capture.path), request=mask_bytes(capture.request),
        upstream_request=optional(capture.upstream_request), response=optional(capture.response),
        upstream_response=optional(capture.upstream_response), response_headers=response_headers,
        client_log=[(t_ms, mask_bytes(data)) for t_ms, data in opened or capture.client_log],
        upstream_log=[(t_ms, mask_bytes(data)) for t_ms, data in capture.upstream_log],
        ending=ending and dataclasses.replace(ending, message=ending.message and mask_text(ending.message)),
        attempts=[attempt.model_copy(update={"error": attempt.error and mask_text(attempt.error)})
                  for attempt in capture.attempts])
    return entry(capture)


def _opened_stream(capture: Capture) -> StreamLog | None:
    """The client's stream with its content coding undone, chunk by chunk, when it passed coded and holds a key
    (None otherwise, or when its bytes are not in the coding they declare: nothing can be read from them)."""
    codings = codings_of(capture.response_headers)
    if not capture.streamed or not codings or not capture.client_log:
        return None
    try:
        decoder = ContentDecoder(codings)
        log = [(t_ms, decoder.feed(data)) for t_ms, data in capture.client_log]
    except DecodingError:
        return None
    with contextlib.suppress(DecodingError):  # (a stream still running, or cut off, has no end to its coding yet)
        log[-1] = (log[-1][0], log[-1][1] + decoder.flush())
    text = b"".join(data for _, data in log)
    return None if mask_bytes(text) is text else log


def item_of(payload: bytes) -> Record | Capture:
    """`entry`'s put, as it was put (what `Store.get` shows of a put not yet written)."""
    if payload[:1] == _CAPTURE:
        return Capture.decode(payload[1:])
    return Record.model_validate(fastjson.loads(payload[1:]))


def decode(payload: bytes, prices: PriceBook | None = None) -> tuple[Record, dict[str, Any]]:
    """An entry's record, and its JSON data (`model_dump(mode="json", by_alias=True)`) for `prepare`: a capture's is
    derived here (`derive.to_stored`, priced with `prices`)."""
    if payload[:1] == _CAPTURE:
        return to_stored(Capture.decode(payload[1:]), prices)
    data = fastjson.loads(payload[1:])
    return Record.model_validate(data), data
