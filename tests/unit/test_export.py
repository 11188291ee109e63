"""Exports (ndjson, json, csv, compact; gzip) and imports: exact round trips, linear compact size, clear
refusals of bad input with nothing imported, and the `anthropic-proxy export/import` commands."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from fakes.claude_session import session_records

from anthropic_proxy import cli
from anthropic_proxy.record.model import HttpRequestPart, Record, RecordError, Usage
from anthropic_proxy.reports.export import export_chunks, gzipped
from anthropic_proxy.reports.importing import ImportFailed, read_records
from anthropic_proxy.store import RecordFilter, Store, record_json

from .test_dedup_store import odd_records
from .test_store import KEY, make_record


def masked(record: Record) -> Record:
    return Record.model_validate(json.loads(record_json(record)))


@pytest.fixture(scope="module")
def records() -> list[Record]:
    """Two interleaved sessions, records of every body shape, one in openrouter mode."""
    first, second = list(session_records(25, seed=11)), list(session_records(10, seed=12))
    mixed = [r for pair in zip(first, second, strict=False) for r in pair] + first[len(second):]
    return [*mixed, *odd_records()]


def export_bytes(records: list[Record], fmt: str, gz: bool = False) -> bytes:
    chunks = export_chunks(iter(records), fmt)
    return b"".join(gzipped(chunks)) if gz else "".join(chunks).encode()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("fmt", ["compact", "ndjson", "json"])
def test_round_trip_is_exact(records, fmt: str, gz: bool):
    data = export_bytes(records, fmt, gz)
    assert (data[:2] == b"\x1f\x8b") is gz
    result: dict = {}
    back = list(read_records(io.BytesIO(data), result=result))
    assert result["format"] == fmt
    assert back == [masked(r) for r in records]
    assert [record_json(r) for r in back] == [record_json(r) for r in records]


def test_compact_export_is_linear_in_the_session(records):
    session = list(session_records(200, seed=13))
    final_body = len(json.dumps(session[-1].request.body, separators=(",", ":")))
    compact = len(export_bytes(session, "compact"))
    ndjson = len(export_bytes(session, "ndjson"))
    assert compact < 4 * final_body < ndjson / 25, (compact, final_body, ndjson)
    lines = [json.loads(line) for line in export_bytes(session, "compact").splitlines()]
    kinds = [line["kind"] for line in lines]
    assert kinds[0] == "header" and kinds[-1] == "end" and kinds.count("record") == 200
    blob_ids = [line["id"] for line in lines if line["kind"] == "blob"]
    assert len(blob_ids) == len(set(blob_ids))  # each piece once
    last = lines[-2]["refs"]["request.body"]["messages"]
    assert last["from"] == [session[-2].id, "request.body"] and len(last["add"]) <= 3


def test_store_to_store_round_trip_and_idempotent_import(tmp_path: Path, records):
    source = Store(tmp_path / "a")
    for record in records:
        source.put(record)
    source.flush()
    data = b"".join(gzipped(export_chunks(source.iter_records(RecordFilter()), "compact")))
    source.close()
    target = Store(tmp_path / "b")
    try:
        target.put(records[0])  # already there: skipped, not duplicated
        target.flush()
        counts = target.import_records(read_records(io.BytesIO(data)))
        assert counts == {"records": len(records), "imported": len(records) - 1, "skipped": 1}
        assert {r.id: record_json(r) for r in target.iter_records(RecordFilter())} == \
            {r.id: record_json(r) for r in records}
        again = target.import_records(read_records(io.BytesIO(data)))
        assert again == {"records": len(records), "imported": 0, "skipped": len(records)}
        assert target.query(RecordFilter())[1] == len(records)
    finally:
        target.close()


def test_csv_has_one_quoted_row_per_record():
    tricky = make_record(body={"messages": [{"role": "user", "content": 'a, "quoted"\nline and ' + KEY}]},
                         model="claude-x", status="error", usage=Usage(input_tokens=5, output_tokens=7),
                         error=RecordError(type="api_error", message="=cmd|' /C calc'!A0"), cost_usd=0.25)
    plain = make_record(body={"messages": [{"role": "user", "content": "hi"}]}, stream=True, session_id="s1")
    text = export_bytes([tricky, plain], "csv").decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 and list(rows[0]) == list(cli_columns())
    assert rows[0]["preview"].startswith('a, "quoted"\nline and sk-ant-api') and KEY[10:-4] not in text
    assert rows[0]["errorMessage"] == "'=cmd|' /C calc'!A0"  # a spreadsheet must not run it
    assert (rows[0]["inputTokens"], rows[0]["outputTokens"], rows[0]["costUsd"]) == ("5", "7", "0.25")
    assert (rows[1]["stream"], rows[1]["sessionId"], rows[1]["errorType"]) == ("true", "s1", "")


def cli_columns():
    from anthropic_proxy.reports.export import CSV_COLUMNS
    return CSV_COLUMNS


def test_json_array_with_elements_bigger_than_the_read_buffer():
    big = [make_record(body={"messages": [{"role": "user", "content": "x" * 300_000}]}), make_record()]
    data = export_bytes(big, "json")
    assert list(read_records(io.BytesIO(data))) == big
    spaced = b"  [\n" + b" ,\n".join(json.dumps(json.loads(record_json(r)), indent=2).encode() for r in big) + b"\n]\n"
    assert list(read_records(io.BytesIO(spaced))) == big
    assert list(read_records(io.BytesIO(b"[]"))) == []


def _broken_inputs(records: list[Record]) -> dict[str, tuple[bytes, str]]:
    compact = export_bytes(records[:6], "compact").decode().splitlines(keepends=True)
    blob_line = next(i for i, line in enumerate(compact) if '"kind":"blob"' in line and '"data":{"role"' in line)
    tampered = compact.copy()
    tampered[blob_line] = tampered[blob_line].replace('"data":{"role"', '"data":{"x":1,"role"', 1)
    bad_record = json.loads(record_json(records[0]))
    bad_record["status"] = "bogus"
    ndjson = export_bytes(records[:3], "ndjson").decode().splitlines(keepends=True)
    return {
        "compact cut before its end line": ("".join(compact[:-1]).encode(), "end line"),
        "compact cut mid-line": ("".join(compact)[:-40].encode(), "not JSON"),
        "blob changed": ("".join(tampered).encode(), "does not match"),
        "blob missing": ("".join(compact[:blob_line] + compact[blob_line + 1:]).encode(), "before it is defined"),
        "invalid record in ndjson": ("".join([*ndjson[:2], json.dumps(bad_record) + "\n"]).encode(),
                                     "line 3: not a valid record (status"),
        "not JSON": (b"hello\n", "line 1: not JSON"),
        "empty": (b"  \n", "empty"),
        "json array cut off": (export_bytes(records[:2], "json")[:-30], "cut off"),
        "gzip cut off": (export_bytes(records[:4], "ndjson", gz=True)[:-50], "unreadable"),
        "not UTF-8": (b'{"id": "\xff\xfe"}\n', "unreadable"),
        "unsupported version": (b'{"kind":"header","format":"anthropic-proxy-compact","version":99}\n', "version 99"),
    }


def test_bad_input_is_refused_and_nothing_is_imported(tmp_path: Path, records):
    store = Store(tmp_path)
    try:
        for name, (data, reason) in _broken_inputs(records).items():
            with pytest.raises(ImportFailed, match=re.escape(reason)):
                store.import_records(read_records(io.BytesIO(data)))
            assert store.query(RecordFilter())[1] == 0, name  # all or nothing: the first lines were not kept
    finally:
        store.close()


def test_format_can_be_insisted_on(records):
    with pytest.raises(ImportFailed, match="is ndjson, not compact"):
        list(read_records(io.BytesIO(export_bytes(records[:1], "ndjson")), "compact"))


# ---- the command line -----------------------------------------------------------------------------------------
def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    return exit_info.value.code


def test_cli_export_then_import(tmp_path: Path, records, capsys):
    source = Store(tmp_path / "a")
    for record in records:
        source.put(record)
    pending = make_record(status="pending")  # another proxy's call in flight: the commands leave it pending
    source.put(pending)
    source.close()
    out = tmp_path / "all.compact.ndjson.gz"
    assert run_cli("export", "--state-dir", str(tmp_path / "a"), "--gzip", "-o", str(out)) == 0
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert run_cli("import", str(out), "--state-dir", str(tmp_path / "b")) == 0
    assert f"{len(records) + 1} records, {len(records) + 1} imported" in capsys.readouterr().out
    store = Store(tmp_path / "b", close_orphans=False)
    try:
        assert store.get(pending.id).status == "pending"
        assert {r.id: record_json(r) for r in store.iter_records(RecordFilter())} == \
            {r.id: record_json(r) for r in [*records, pending]}
    finally:
        store.close()
    # filters and formats
    csv_out = tmp_path / "errors.csv"
    assert run_cli("export", "--state-dir", str(tmp_path / "a"), "--format", "csv", "--status", "error",
                   "-o", str(csv_out)) == 0
    assert len(csv_out.read_text().splitlines()) == 1 + sum(r.status == "error" for r in records)
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"no": "record"}\n')
    assert run_cli("import", str(bad), "--state-dir", str(tmp_path / "b")) == 1
    assert "nothing imported: line 1: not a valid record" in capsys.readouterr().err


def test_cli_without_subcommand_still_starts_the_proxy(monkeypatch: pytest.MonkeyPatch, capsys):
    cli.main(["--print-command", "--set", "proxy_mode=openrouter"])
    printed = capsys.readouterr().out
    assert "mitmdump" in printed and printed.strip().endswith("--set proxy_mode=openrouter")


def test_export_of_an_unstorable_value_fails_loudly():
    with pytest.raises(ValueError, match="format must be one of"):
        list(export_chunks(iter([]), "xml"))


def test_records_with_the_same_history_in_different_slots(records):
    """openrouter mode: the translated upstream request is cut and restored like the client's body."""
    translated = [r for r in records if r.upstream_request]
    assert translated
    follow = translated[0].model_copy(deep=True)
    follow.id = "follow"
    follow.upstream_request["messages"].append({"role": "assistant", "content": "and then"})
    follow.request = HttpRequestPart(method="POST", path="/v1/messages", body=translated[0].request.body)
    data = export_bytes([translated[0], follow], "compact")
    assert list(read_records(io.BytesIO(data))) == [masked(translated[0]), masked(follow)]
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines[-2]["refs"]["upstreamRequest"]["messages"]["from"] == [translated[0].id, "upstreamRequest"]
