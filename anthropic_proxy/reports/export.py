"""Record exports (json, ndjson, csv, compact; optionally gzipped); importing.py reads them back exactly.

Every exporter is a generator of text pieces over an iterable of records (`Store.iter_records`), so an export
is streamed, never built in memory; `gzipped()` compresses such a stream as it goes.

- `ndjson`: one record per line, `record_json` (the masked serialisation the API serves).
- `json`: the same records as one JSON array.
- `csv`: one row per record with the flat columns in `CSV_COLUMNS`. Cells that a spreadsheet would run as a
  formula (text starting with `=`, `+`, `-`, `@`, tab or CR) get a leading `'`.
- `compact` (lossless, linear in size): NDJSON whose lines are, in order,

      {"kind": "header", "format": "anthropic-proxy-compact", "version": 1, "exportedAt": "..."}
      {"kind": "blob", "id": "<32 hex>", "data": <a piece: a message, a system prompt, a tools array>}
      {"kind": "record", "record": <the record, its pieces null>, "refs": {<slot>: {<key>: <ref>}}}
      ...
      {"kind": "end", "records": <count>, "blobs": <count>}

  Pieces are cut as the store cuts them (`bodies.split`); a blob line comes once, before the first record
  that needs it, and its id is the hash of its data's canonical text (checked on import). In `refs`, a slot
  (`request.body`, `upstreamRequest`) maps `system` / `tools` to a blob id and `messages` to
  `{"from": [<record id>, <slot>], "keep": k, "add": [<blob id>, ...]}`: the first k messages of that earlier
  record's slot, then the added ones (no `from` when k is 0). A conversation's history is thus written once,
  each turn adding only its new messages. The `end` line makes a cut-off file detectable.

"""

from __future__ import annotations

import csv
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from anthropic_proxy.record import bodies
from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.record.model import Record, text_preview
from anthropic_proxy.store import record_json

FORMATS = ("ndjson", "json", "csv", "compact")
COMPACT_FORMAT = "anthropic-proxy-compact"
COMPACT_VERSION = 1
CONTENT_TYPES = {"ndjson": "application/x-ndjson; charset=utf-8", "json": "application/json; charset=utf-8",
                 "csv": "text/csv; charset=utf-8", "compact": "application/x-ndjson; charset=utf-8"}
EXTENSIONS = {"ndjson": "ndjson", "json": "json", "csv": "csv", "compact": "compact.ndjson"}
CSV_COLUMNS = ("id", "timestamp", "status", "provider", "model", "upstreamModel", "stream", "stopReason",
               "sessionId", "inputTokens", "outputTokens", "cacheCreationInputTokens", "cacheReadInputTokens",
               "costUsd", "durationMs", "ttfbMs", "errorType", "errorMessage", "preview")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export_chunks(records: Iterable[Record], fmt: str) -> Iterator[str]:
    """The export of `records` in format `fmt`, as text pieces (one or a few records each)."""
    if fmt == "ndjson":
        return (record_json(r) + "\n" for r in records)
    if fmt == "json":
        return _json_array(records)
    if fmt == "csv":
        return _csv(records)
    if fmt == "compact":
        return CompactWriter().write(records)
    raise ValueError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r})")


def _json_array(records: Iterable[Record]) -> Iterator[str]:
    yield "["
    separator = ""
    for record in records:
        yield separator + record_json(record)
        separator = ",\n"
    yield "]\n"


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def csv_row(record: Record) -> list[Any]:
    usage, metrics, error = record.usage, record.metrics, record.error
    return [record.id, record.timestamp.isoformat(), record.status, record.provider, _cell(record.model),
            _cell(record.upstream_model), "true" if record.stream else "false", _cell(record.stop_reason),
            _cell(record.session_id), usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens, _cell(record.cost_usd), _cell(metrics.duration_ms),
            _cell(metrics.ttfb_ms), _cell(error.type if error else None), _cell(error.message if error else None),
            _cell(text_preview(record))]


def _csv(records: Iterable[Record]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        writer.writerow(csv_row(record))
        yield mask_text(out.getvalue())
        out.seek(0)
        out.truncate()
    if out.tell():
        yield out.getvalue()


class CompactWriter:
    """Writes the compact format (see the module docstring); remembers which blobs and message prefixes it
    has written (ids only: memory grows with distinct messages, not with records x history)."""

    def __init__(self) -> None:
        self.blobs_written: set[str] = set()
        self.records_written = 0
        self._prefixes: dict[str, tuple[str, str]] = {}  # message chain node -> (record id, slot) that has it

    def write(self, records: Iterable[Record]) -> Iterator[str]:
        header = {"kind": "header", "format": COMPACT_FORMAT, "version": COMPACT_VERSION,
                  "exportedAt": datetime.now(UTC).isoformat()}
        yield json.dumps(header, separators=(",", ":")) + "\n"
        for record in records:
            yield self.record_lines(record)
        end = {"kind": "end", "records": self.records_written, "blobs": len(self.blobs_written)}
        yield json.dumps(end, separators=(",", ":")) + "\n"

    def record_lines(self, record: Record) -> str:
        split = bodies.split(record.model_dump(mode="json", by_alias=True))
        lines: list[str] = []

        def need(blob: str) -> None:
            if blob not in self.blobs_written:
                self.blobs_written.add(blob)
                lines.append(f'{{"kind":"blob","id":"{blob}","data":{split.blobs[blob]}}}\n')

        refs: dict[str, dict[str, Any]] = {}
        for slot, keys in split.refs.items():
            out: dict[str, Any] = {}
            for key, ref in keys.items():
                if key != bodies.MESSAGES:
                    need(ref)
                    out[key] = ref
                    continue
                chain = split.chains[slot]
                keep = len(chain)
                while keep and chain[keep - 1][0] not in self._prefixes:
                    keep -= 1
                messages: dict[str, Any] = {}
                if keep:
                    messages["from"] = list(self._prefixes[chain[keep - 1][0]])
                messages["keep"] = keep
                messages["add"] = [blob for _, _, blob in chain[keep:]]
                for node, _, blob in chain[keep:]:
                    need(blob)
                    self._prefixes[node] = (record.id, slot)
                out[key] = messages
            refs[slot] = out
        self.records_written += 1
        refs_text = json.dumps(refs, separators=(",", ":"))
        lines.append(f'{{"kind":"record","record":{split.skeleton},"refs":{refs_text}}}\n')
        return "".join(lines)


def gzipped(chunks: Iterable[str], level: int = 6) -> Iterator[bytes]:
    """A text stream as a gzip file, compressed as it goes."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip header and trailer
    for chunk in chunks:
        if out := compressor.compress(chunk.encode()):
            yield out
    yield compressor.flush()


def file_name(fmt: str, *, gzip: bool, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"anthropic-proxy-records-{stamp}.{EXTENSIONS[fmt]}" + (".gz" if gzip else "")
