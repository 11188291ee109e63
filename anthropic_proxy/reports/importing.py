"""Record imports: the exports of export.py read back exactly (that module describes the formats).

`read_records(binary_file)` reads any of ndjson, json, compact (gzipped or not: the gzip magic is looked for),
yielding validated `Record`s; bad input raises `ImportFailed` with the line (or element) and the reason.
`Store.import_records` takes that iterator and writes everything in one transaction, or nothing.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import IO, Any

from pydantic import ValidationError

from anthropic_proxy.record import bodies
from anthropic_proxy.record.model import Record
from anthropic_proxy.reports.export import COMPACT_FORMAT, COMPACT_VERSION


class ImportFailed(ValueError):
    """Input that cannot be imported; the message says where and why."""


def open_text(binary: IO[bytes]) -> io.TextIOWrapper:
    """The file as UTF-8 text, gunzipped when it starts with the gzip magic."""
    buffered = binary if isinstance(binary, io.BufferedReader) else io.BufferedReader(binary)  # type: ignore[arg-type]
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        buffered = gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
    return io.TextIOWrapper(buffered, encoding="utf-8", newline="")


def detect_format(text: io.TextIOWrapper) -> tuple[str, str]:
    """('json' | 'ndjson' | 'compact', the first line read) from the start of the file."""
    first = ""
    while not first.strip():
        first = _readline(text, 1)
        if not first:
            raise ImportFailed("the file is empty")
    if first.lstrip().startswith("["):
        return "json", first
    try:
        head = json.loads(first)
    except ValueError:
        raise ImportFailed("line 1: not JSON (expected a JSON array, NDJSON records or a compact export)") from None
    if isinstance(head, dict) and head.get("kind") == "header":
        if head.get("format") != COMPACT_FORMAT or head.get("version") != COMPACT_VERSION:
            raise ImportFailed(f"line 1: unsupported export {head.get('format')!r} version {head.get('version')!r}")
        return "compact", first
    return "ndjson", first


def _readline(text: io.TextIOWrapper, number: int, size: int | None = None) -> str:
    try:
        return text.read(size) if size is not None else text.readline()
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:  # not UTF-8, broken or cut gzip
        raise ImportFailed(f"{'element' if size is not None else 'line'} {number}: unreadable input ({exc})") \
            from None


def read_records(binary: IO[bytes], fmt: str | None = None, result: dict[str, Any] | None = None) -> Iterator[Record]:
    """Validated records from an export in any format (auto-detected unless `fmt`); `result["format"]` is set."""
    text = open_text(binary)
    detected, first = detect_format(text)
    if fmt and fmt != detected:
        raise ImportFailed(f"the file is {detected}, not {fmt}")
    if result is not None:
        result["format"] = detected
    if detected == "json":
        return _read_json_array(text, first)
    if detected == "compact":
        return CompactReader().read(text)
    return _read_ndjson(text, first)


def _validate(data: Any, where: str) -> Record:
    try:
        if isinstance(data, str):  # json, not pydantic's parser: it refuses a lone surrogate's escape
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ImportFailed(f"{where}: not JSON ({exc})") from None
        record = Record.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()[:5])
        raise ImportFailed(f"{where}: not a valid record ({problems})") from None
    return record


def _read_ndjson(text: io.TextIOWrapper, first: str) -> Iterator[Record]:
    number, line = 1, first
    while line:
        if line.strip():
            yield _validate(line, f"line {number}")
        number += 1
        line = _readline(text, number)


def _read_json_array(text: io.TextIOWrapper, first: str) -> Iterator[Record]:
    """The elements of a JSON array, parsed one at a time (the array is never held whole)."""
    decoder = json.JSONDecoder()
    buffer = first.lstrip()[1:]
    pos, index, eof, want = 0, 0, False, 1 << 16

    def more() -> bool:
        nonlocal buffer, pos, eof, want
        chunk = _readline(text, index + 1, want)
        want = min(want * 2, 1 << 26)  # an element bigger than the buffer: read ever bigger pieces
        eof = not chunk
        buffer, pos = buffer[pos:] + chunk, 0
        return not eof

    expect_value = True
    while True:
        while pos < len(buffer) and buffer[pos] in " \t\r\n":
            pos += 1
        if pos >= len(buffer):
            if not more():
                raise ImportFailed(f"element {index + 1}: the JSON array is cut off")
            continue
        char = buffer[pos]
        if char == "]" and (not expect_value or index == 0):
            rest = buffer[pos + 1:] + _readline(text, index + 1, 1 << 20)
            if rest.strip():
                raise ImportFailed("data after the end of the JSON array")
            return
        if not expect_value:
            if char != ",":
                raise ImportFailed(f"element {index + 1}: expected ',' or ']' in the JSON array")
            pos += 1
            expect_value = True
            continue
        try:
            value, end = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError as exc:
            if not eof and more():
                continue
            raise ImportFailed(f"element {index + 1}: not JSON, or the array is cut off ({exc.msg})") from None
        if end == len(buffer) and not eof and isinstance(value, (int, float)) and more():
            continue  # a number may go on in the next piece
        index += 1
        yield _validate(value, f"element {index}")
        pos, expect_value = end, False
        if pos > 1 << 20:
            buffer, pos = buffer[pos:], 0


class CompactReader:
    """Reads the compact format back into full records (see the module docstring)."""

    _CACHE = 256  # message lists kept built (the next record of a session usually extends the previous one)

    def __init__(self) -> None:
        self.blobs: dict[str, Any] = {}  # every piece read so far: the records after it may use it
        self._lists: dict[tuple[str, str], tuple[tuple[str, str] | None, int, list[str]]] = {}
        self._built: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()
        self.records = 0

    def read(self, text: io.TextIOWrapper) -> Iterator[Record]:
        number, ended = 1, False
        while line := _readline(text, number + 1):
            number += 1
            if not line.strip():
                continue
            if ended:
                raise ImportFailed(f"line {number}: data after the end line")
            try:
                item = json.loads(line)
            except ValueError:
                raise ImportFailed(f"line {number}: not JSON (is the file cut off?)") from None
            kind = item.get("kind") if isinstance(item, dict) else None
            if kind == "blob":
                self._blob(item, number)
            elif kind == "record":
                yield self._record(item, number)
            elif kind == "end":
                if item.get("records") != self.records or item.get("blobs") != len(self.blobs):
                    raise ImportFailed(f"line {number}: the end line counts {item.get('records')} records and "
                                       f"{item.get('blobs')} blobs, the file has {self.records} and {len(self.blobs)}")
                ended = True
            else:
                raise ImportFailed(f"line {number}: unknown line kind {kind!r}")
        if not ended:
            raise ImportFailed(f"line {number}: the file ends without its end line (cut off?)")

    def _blob(self, item: dict[str, Any], number: int) -> None:
        ref, data = item.get("id"), item.get("data")
        if not isinstance(ref, str) or "data" not in item:
            raise ImportFailed(f"line {number}: a blob needs an id and data")
        if bodies.blob_id(bodies.canonical(data, mask=False)) != ref:
            raise ImportFailed(f"line {number}: blob {ref} does not match its data")
        self.blobs[ref] = data

    def _piece(self, ref: Any, number: int) -> Any:
        if not isinstance(ref, str) or ref not in self.blobs:
            raise ImportFailed(f"line {number}: blob {ref!r} is used before it is defined")
        return self.blobs[ref]

    def _record(self, item: dict[str, Any], number: int) -> Record:
        skeleton, refs = item.get("record"), item.get("refs")
        if not isinstance(skeleton, dict) or not isinstance(refs, dict):
            raise ImportFailed(f"line {number}: a record line needs record and refs objects")
        record_id = skeleton.get("id")
        for slot, keys in refs.items():
            body = skeleton
            for key in slot.split("."):
                body = body.get(key) if isinstance(body, dict) else None
            if not isinstance(body, dict) or not isinstance(keys, dict) or slot not in _SLOT_NAMES:
                raise ImportFailed(f"line {number}: the record has no {slot!r} for its pieces")
            for key, ref in keys.items():
                if key == bodies.MESSAGES:
                    body[key] = self._messages(str(record_id), slot, ref, number)
                elif key in bodies.BLOB_KEYS:
                    body[key] = self._piece(ref, number)
                else:
                    raise ImportFailed(f"line {number}: unknown piece {slot}.{key}")
        record = _validate(skeleton, f"line {number}")
        self.records += 1
        return record

    def _messages(self, record_id: str, slot: str, ref: Any, number: int) -> list[Any]:
        if not isinstance(ref, dict) or not isinstance(ref.get("keep"), int) or not isinstance(ref.get("add"), list):
            raise ImportFailed(f"line {number}: messages need keep and add")
        keep, add, base = ref["keep"], ref["add"], ref.get("from")
        source: tuple[str, str] | None = None
        if keep:
            if not (isinstance(base, list) and len(base) == 2 and tuple(base) in self._lists):
                raise ImportFailed(f"line {number}: messages from {base!r}, which is not an earlier record")
            source = (str(base[0]), str(base[1]))
            if keep > self._lists[source][1] + len(self._lists[source][2]):
                raise ImportFailed(f"line {number}: keeps {keep} messages of {base!r}, which has fewer")
        for blob in add:
            self._piece(blob, number)
        key = (record_id, slot)
        self._lists[key] = (source, keep, list(add))
        return self._build(key)

    def _build(self, key: tuple[str, str]) -> list[Any]:
        """A message list from its description, rebuilt from the nearest list still in the cache."""
        pending: list[tuple[str, str]] = []
        current: tuple[str, str] | None = key
        base: list[Any] = []
        while current is not None:
            if current in self._built:
                self._built.move_to_end(current)
                base = self._built[current]
                break
            pending.append(current)
            current = self._lists[current][0]
        for item in reversed(pending):
            _, keep, add = self._lists[item]
            base = base[:keep] + [self.blobs[blob] for blob in add]
            self._built[item] = base
            if len(self._built) > self._CACHE:
                self._built.popitem(last=False)
        return list(base)


_SLOT_NAMES = frozenset(bodies.slot_name(path) for path in bodies.SLOTS)
