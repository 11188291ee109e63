"""Export from one real proxy, import into another: every record comes back byte for byte (the record API's
JSON), in every format, gzipped or not; bad input is a 400 that imports nothing; a second import skips."""

from __future__ import annotations

import csv
import gzip
import io
import json
import uuid

import anthropic
import httpx
import pytest
from fakes.harness import FAKE_API_KEY, ProxyProcess


def post(proxy: ProxyProcess, path: str, content: bytes, **kwargs) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as c:
        return c.post(proxy.url + path, content=content, **kwargs)


@pytest.fixture(scope="module")
def conversation(proxy) -> dict:
    """A 4-turn conversation (the history resent each turn, like Claude Code), a stream, and an error."""
    model = f"claude-export-{uuid.uuid4().hex[:8]}"
    client = anthropic.Anthropic(base_url=proxy.url, api_key=FAKE_API_KEY, max_retries=0, timeout=20,
                                 http_client=anthropic.DefaultHttpxClient(trust_env=False))
    system = [{"type": "text", "text": "You are a careful assistant. " * 40}]
    tools = [{"name": f"tool_{i}", "description": "does things " * 20,
              "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}} for i in range(12)]
    messages: list[dict] = []
    with client:
        for turn in range(4):
            messages.append({"role": "user", "content": [{"type": "text", "text": f"turn {turn}: " + "why? " * 200}]})
            answer = client.messages.create(model=model, max_tokens=64, system=system, tools=tools,
                                            messages=messages)
            messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in answer.content]})
        with client.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": "stream"}]) as s:
            s.get_final_message()
        with pytest.raises(anthropic.APIStatusError):
            client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": "x"}],
                                   extra_headers={"x-fake-scenario": "rate_limit"})
    records = proxy.wait_records(lambda r: r.get("model") == model, count=6, timeout=15)
    return {"model": model, "ids": [r["id"] for r in records]}


def record_texts(proxy: ProxyProcess, ids: list[str]) -> dict[str, str]:
    texts = {}
    for record_id in ids:
        r = proxy.get(f"/api/monitor/requests/{record_id}")
        assert r.status_code == 200, r.text
        texts[record_id] = r.text
    return texts


@pytest.mark.parametrize(("fmt", "gz"), [("compact", True), ("compact", False), ("ndjson", True), ("json", False)])
def test_export_then_import_restores_every_record_exactly(proxy, proxy_factory, conversation, fmt, gz):
    exported = proxy.get("/api/monitor/export", model=conversation["model"], format=fmt, gzip=1 if gz else None)
    assert exported.status_code == 200
    disposition = exported.headers["content-disposition"]
    extension = {"compact": "compact.ndjson", "ndjson": "ndjson", "json": "json"}[fmt] + (".gz" if gz else "")
    assert disposition.startswith('attachment; filename="anthropic-proxy-records-') and \
        disposition.endswith(f'.{extension}"')
    assert exported.headers["content-type"].startswith("application/gzip" if gz else "application/")
    assert (exported.content[:2] == b"\x1f\x8b") is gz
    assert FAKE_API_KEY[10:-4].encode() not in (gzip.decompress(exported.content) if gz else exported.content)

    target = proxy_factory()
    answer = post(target, "/api/monitor/import", exported.content)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"format": fmt, "records": 6, "imported": 6, "skipped": 0}
    assert record_texts(target, conversation["ids"]) == record_texts(proxy, conversation["ids"])
    assert target.list_records(model=conversation["model"])["total"] == 6
    stats = target.get("/api/monitor/stats", model=conversation["model"]).json()
    assert (stats["total"], stats["errors"]) == (6, 1)

    again = post(target, "/api/monitor/import", exported.content)
    assert again.json() == {"format": fmt, "records": 6, "imported": 0, "skipped": 6}
    assert target.list_records(model=conversation["model"])["total"] == 6


def test_compact_export_is_smaller_than_ndjson(proxy, conversation):
    compact = proxy.get("/api/monitor/export", model=conversation["model"], format="compact").content
    ndjson = proxy.get("/api/monitor/export", model=conversation["model"], format="ndjson").content
    assert len(compact) < 0.7 * len(ndjson)  # system, tools and history written once, not once per turn
    kinds = [json.loads(line)["kind"] for line in compact.splitlines()]
    assert kinds[0] == "header" and kinds[-1] == "end" and kinds.count("record") == 6


def test_csv_export(proxy, conversation):
    r = proxy.get("/api/monitor/export", model=conversation["model"], format="csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["id"] for row in rows] == conversation["ids"]  # oldest first
    assert rows[0]["preview"].startswith("turn 0: why?") and rows[0]["inputTokens"] == "12"
    assert rows[-1]["status"] == "error" and rows[-1]["errorType"] == "rate_limit_error"
    assert rows[4]["stream"] == "true" and rows[4]["ttfbMs"] != ""


def test_bad_imports_are_400_and_import_nothing(proxy, proxy_factory, conversation):
    target = proxy_factory()
    good = proxy.get("/api/monitor/export", model=conversation["model"], format="compact").content
    cut = good[: good.rindex(b'{"kind":"end"')]
    for body, reason in ((cut, "without its end line"), (b"{}\n", "line 1: not a valid record"),
                         (b"", "empty"), (gzip.compress(b"[1, 2]"), "element 1: not a valid record")):
        r = post(target, "/api/monitor/import", body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"].startswith("nothing imported") and reason in r.text
    assert target.list_records()["total"] == 0
    assert post(target, "/api/monitor/import?format=xml", good).status_code == 400
    assert post(target, "/api/monitor/import?format=ndjson", good).status_code == 400  # it is compact
    assert target.list_records()["total"] == 0
    foreign = post(target, "/api/monitor/import", good, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and target.list_records()["total"] == 0
    assert proxy.get("/api/monitor/export", format="xml").status_code == 400


def test_import_takes_a_multipart_upload_like_curl_F(proxy, proxy_factory, conversation):
    """`curl -F file=@export.compact.ndjson.gz .../api/monitor/import` (multipart/form-data) works like a raw body;
    a form without a file, or one that is not multipart at all, is a 400 that imports nothing."""
    exported = proxy.get("/api/monitor/export", model=conversation["model"], format="compact", gzip=1).content
    target = proxy_factory()
    with httpx.Client(trust_env=False, timeout=30) as c:
        no_file = c.post(target.url + "/api/monitor/import", data={"note": "no file here"},
                         files={"other": (None, b"not a file")})
        assert no_file.status_code == 400 and "no file part" in no_file.json()["error"]["message"], no_file.text
        broken = c.post(target.url + "/api/monitor/import", content=b"--x\r\n",
                        headers={"content-type": "multipart/form-data"})  # no boundary
        assert broken.status_code == 400 and broken.json()["error"]["message"].startswith("nothing imported")
        assert target.list_records()["total"] == 0
        # what curl -F file=@FILE sends: a form field with the file's name and a content type
        answer = c.post(target.url + "/api/monitor/import", data={"comment": "before the file"},
                        files={"file": ("records.compact.ndjson.gz", exported, "application/gzip")})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"format": "compact", "records": 6, "imported": 6, "skipped": 0}
    assert record_texts(target, conversation["ids"]) == record_texts(proxy, conversation["ids"])
