"""What the proxy and its store's writer process say to each other: small dataclasses, pickled over a socket pair.

    proxy -> writer   WriterSettings (first, once), then any of:
                      Puts(max_records, retention_days, [Put])   a batch to decode, prepare, write (retried)
                      Flush(token)                               answered in the report after the write attempt
                      Trace(config)                              spans from now on (tracing.py), None: none
                      Stop()                                     write what is held, report, exit
    writer -> proxy   Report after each round: puts written or given up, flushes done, counters, log lines, and
                      the CallEnd of each final record taken (call_end.py)

A `Put` carries one put of a record: a call's capture in its own encoding (`Capture.encode`: the writer derives the
record from it) or a record as its JSON (what tests and tools put). `encode` and `decode` are the two ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anthropic_proxy.record.call_end import CallEnd
from anthropic_proxy.record.capture import Capture
from anthropic_proxy.record.derive import to_stored
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PriceBook
from anthropic_proxy.telemetry.tracing import TraceConfig
from anthropic_proxy.wire import fastjson


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
    trace: TraceConfig | None = None  # an OpenTelemetry span per call, made here (tracing.py)


@dataclass(frozen=True, slots=True)
class Put:
    """One put of a record: the `seq` of the put (the latest of a record wins), and its bytes, in pieces (a
    capture's are its own bytes, not copied until they are sent)."""

    record_id: str
    seq: int
    capture: bool  # `data` is a capture's encoding; else a record's JSON
    data: list[bytes]


@dataclass(frozen=True, slots=True)
class Puts:
    """A batch of puts, with the retention options as they are now (they change while the proxy runs)."""

    max_records: int
    retention_days: float
    items: list[Put]


@dataclass(frozen=True, slots=True)
class Flush:
    token: int


@dataclass(frozen=True, slots=True)
class Trace:
    config: TraceConfig | None


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Message = Puts | Flush | Trace | Stop


@dataclass(slots=True)
class Report:
    """The writer's answer after each round: which puts are in the database, which are given up, the flushes
    done, and its counters."""

    written: list[tuple[str, int]] = field(default_factory=list)  # (record id, seq)
    dropped: list[tuple[str, int]] = field(default_factory=list)
    flushed: list[int] = field(default_factory=list)
    write_errors: int = 0
    last_write_error: str | None = None
    unsaved: int = 0
    lost: int = 0
    notice: str | None = None  # something the operator should know that is not a failing write (a re-created file)
    logs: list[tuple[int, str]] = field(default_factory=list)
    ends: list[CallEnd] = field(default_factory=list)  # the final records taken this round (see call_end.py)


def encode(item: Record | Capture, seq: int) -> Put:
    """What the writer is sent of a put: a capture in its own compact encoding, a record as its JSON (a lone
    surrogate, which UTF-8 cannot hold, goes as a JSON escape)."""
    if isinstance(item, Capture):
        return Put(item.id, seq, True, item.encode_parts())
    try:
        data = item.model_dump_json(by_alias=True).encode()
    except ValueError:
        data = json.dumps(item.model_dump(mode="json", by_alias=True)).encode()
    return Put(item.id, seq, False, [data])


def decode(put: Put, prices: PriceBook | None = None) -> tuple[Record, dict[str, Any]]:
    """A put's record, and its JSON data (`model_dump(mode="json", by_alias=True)`) for `prepare`: a capture's is
    derived here (`derive.to_stored`, priced with `prices`)."""
    payload = b"".join(put.data)
    if put.capture:
        return to_stored(Capture.decode(payload), prices)
    data = fastjson.loads(payload)
    return Record.model_validate(data), data
