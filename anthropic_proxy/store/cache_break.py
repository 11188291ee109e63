"""Why a call's prompt cache missed: where its prompt left the prefix the previous call of its conversation cached.

The API caches a prompt's prefix in a fixed order (tools, then system, then messages) up to each `cache_control`
breakpoint; a later call reads it only if its own prompt starts with exactly that prefix, within the cache's
lifetime (5 minutes, or 1 hour with `"ttl": "1h"`, refreshed by every read). So for each successful call this
compares its prompt with the previous successful call of the same session and model (without a session: the
previous one with the same model whose prompt starts with the same tool, system block or message), up to that
call's last breakpoint. When another conversation's call came between (a subagent's, in the same session and
model), the previous call is not the one whose cache this call could read: of the `CANDIDATES` calls before it
that cached something, the one its prompt follows furthest is compared (the nearest of those on a tie).

- the first tool, system block or message that differs names the break (`at` = `tools` / `system` /
  `messages`, its `index`, and a short `detail`);
- an unchanged prefix after a longer gap than the cache lives is a `ttl` break;
- otherwise, or without a previous call, or when the previous call cached nothing, there is no break (`None`).

`cache_control` markers themselves are not part of the comparison: clients move the breakpoint to the newest
message on every turn and still read the cache. Nor is the form of a text: a plain string is the text block it
stands for.

It runs in the store's writer, inside the transaction that writes the record, over the pieces the store keeps
(`bodies.py`): messages are compared by their blob ids along the two chains, and only the pieces whose ids
differ are read and compared without their markers. What a record needs for that is written with it
(`prompt_facts`: the last breakpoint, and the first piece of the prompt for calls without a session). A record
written before the call that preceded it (the previous call still running) is explained again when that call is
written (`explain_around`), so the result depends only on the records, not on the order they were written in:
a writer process that restarts and writes a record twice writes the same explanation twice.

`uncachedTokens` estimates the tokens that could have been read from the cache: the previous call's cached
tokens (its cache reads plus writes), in the share of its cached bytes from the break on (all of them for a
`ttl` break), at most what this call paid in full (input plus cache writes). `extraCostUsd` is what those tokens
cost above a cache read (`pricing.cache_miss_usd`).

Tests shorten the lifetimes with the environment variable `ANTHROPIC_PROXY_CACHE_TTL_SCALE` (a factor, read by
the writer process).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from anthropic_proxy.record import bodies
from anthropic_proxy.record.pricing import PriceBook, cache_miss_usd, counts_tokens
from anthropic_proxy.store.dialects import Connection

TTL_SCALE_ENV = "ANTHROPIC_PROXY_CACHE_TTL_SCALE"
DEFAULT_TTL_SECONDS = 300
LONG_TTL_SECONDS = 3600
SECTIONS = ("tools", "system", "messages")
CANDIDATES = 5  # previous calls looked at: the nearest, and a few more when it is not this prompt's own
_BYTES_PER_TOKEN = 4  # for a previous call that reported no cache tokens

# The columns the comparison reads, in this order (see `_Call`).
_CALL_COLUMNS = ("id, ts, model, provider, data, refs, cache_bp, input_tokens, cache_creation_tokens, "
                 "cache_read_tokens")


def strip_markers(value: Any) -> Any:
    """`value` without `cache_control` keys anywhere (what the cache's prefix match does not look at)."""
    if isinstance(value, dict):
        return {k: strip_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [strip_markers(v) for v in value]
    return value


def comparable(item: Any) -> Any:
    """A tool, system block or message as the cache sees it: without markers, and text given as a plain string
    the same as the text block it stands for (`"hi"` is `[{"type": "text", "text": "hi"}]`)."""
    item = strip_markers(item)
    if isinstance(item, str):
        return {"type": "text", "text": item}
    if isinstance(item, dict) and isinstance(item.get("content"), str):
        return {**item, "content": [{"type": "text", "text": item["content"]}]}
    return item


def _system_blocks(system: Any) -> list[Any]:
    if system is None:
        return []
    return system if isinstance(system, list) else [system]


def _ttl(marker: Any) -> int:
    return LONG_TTL_SECONDS if isinstance(marker, dict) and marker.get("ttl") == "1h" else DEFAULT_TTL_SECONDS


def _marked_block(item: Any) -> Any:
    """The `cache_control` of a tool, system block or message (on the message or one of its blocks), if any."""
    if not isinstance(item, dict):
        return None
    marker = item.get("cache_control")
    content = item.get("content")
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("cache_control") is not None:
                marker = block["cache_control"]
    return marker


def prompt_facts(path: str, body: Any) -> tuple[str | None, str | None]:
    """What the comparison needs to know of a call besides its pieces: (`head`, `breakpoint`).

    `head`: the hash of the prompt's first piece without markers (tool, else system block, else message), which
    calls without a session are matched on; None for anything but a Messages call. `breakpoint`: JSON
    `[section, index, ttl seconds]` of the prompt's last `cache_control` (a request-level one marks the last
    message), or None when the call caches nothing."""
    if not isinstance(body, dict) or counts_tokens(path):
        return None, None
    sections = {"tools": body.get("tools"), "system": _system_blocks(body.get("system")),
                "messages": body.get("messages")}
    sections = {name: items if isinstance(items, list) else [] for name, items in sections.items()}
    first = next((items[0] for items in sections.values() if items), None)
    head = bodies.blob_id(bodies.canonical(comparable(first), mask=False)) if first is not None else None
    point: list[Any] | None = None
    if body.get("cache_control") is not None and sections["messages"]:
        point = ["messages", len(sections["messages"]) - 1, _ttl(body["cache_control"])]
    for name in reversed(SECTIONS):
        if point is not None:
            break
        for index in range(len(sections[name]) - 1, -1, -1):
            if (marker := _marked_block(sections[name][index])) is not None:
                point = [name, index, _ttl(marker)]
                break
    return head, json.dumps(point) if point else None


# --- reading two calls' prompts from the store --------------------------------------------------------------

_MESSAGE_IDS = """
    WITH RECURSIVE chain(id, parent, blob, depth) AS (
        SELECT id, parent, blob, 0 FROM nodes WHERE id = ?
        UNION ALL SELECT nodes.id, nodes.parent, nodes.blob, chain.depth + 1
        FROM nodes JOIN chain ON nodes.id = chain.parent
    )
    SELECT chain.blob, length(blobs.data) FROM chain LEFT JOIN blobs ON blobs.id = chain.blob
    ORDER BY chain.depth DESC
"""


class _Call:
    """One stored call's prompt, read piece by piece as the comparison needs it."""

    def __init__(self, db: Connection, row: tuple[Any, ...]) -> None:
        (self.id, self.ts, self.model, self.provider, self._data, refs, bp, self.input_tokens,
         self.cache_write_tokens, self.cache_read_tokens) = row
        self.db = db
        self.refs: dict[str, str] = (json.loads(refs) if refs else {}).get("request.body", {})
        self.breakpoint: list[Any] | None = json.loads(bp) if bp else None
        self._body: dict[str, Any] | None = None
        self._messages: list[tuple[str, int]] | None = None

    def _skeleton_body(self) -> dict[str, Any]:
        if self._body is None:
            body = (json.loads(self._data).get("request") or {}).get("body")
            self._body = body if isinstance(body, dict) else {}
        return self._body

    def _blob(self, ref: str) -> Any:
        row = self.db.execute("SELECT data FROM blobs WHERE id = ?", (ref,)).fetchone()
        return json.loads(row[0]) if row else None

    def items(self, section: str) -> list[Any]:
        """The section's tools / system blocks (parsed), or messages as (blob id, bytes)."""
        if section == "messages":
            if self._messages is None:
                leaf = self.refs.get(bodies.MESSAGES)
                self._messages = [(blob, size or 0) for blob, size in
                                  self.db.execute(_MESSAGE_IDS, (leaf,)).fetchall()] if leaf else []
            return self._messages
        ref = self.refs.get(section)
        value = self._blob(ref) if ref else self._skeleton_body().get(section)
        items = _system_blocks(value) if section == "system" else value
        return items if isinstance(items, list) else []

    def section_ref(self, section: str) -> str | None:
        """The blob id of the whole tool list or system prompt (None when it is small enough to stay inline)."""
        return self.refs.get(section) if section != "messages" else None

    def message(self, blob: str) -> Any:
        return self._blob(blob)


def _size(item: Any) -> int:
    return item[1] if isinstance(item, tuple) else len(bodies.canonical(item, mask=False))


@dataclass(slots=True)
class _Divergence:
    section: str  # a section, or "ttl"
    index: int | None  # None for "ttl"
    detail: str


def _name(tool: Any) -> str:
    return str(tool.get("name")) if isinstance(tool, dict) else "?"


def _tool_detail(index: int, old: list[Any], new: list[Any]) -> str:
    if index >= len(new):
        return f"tool `{_name(old[index])}` removed"
    if index >= len(old):
        return f"tool `{_name(new[index])}` added"
    before, after = comparable(old[index]), comparable(new[index])
    if _name(before) == _name(after):
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)) \
            if isinstance(before, dict) and isinstance(after, dict) else []
        what = {"description": "description", "input_schema": "input schema"}
        return f"tool `{_name(after)}` " + (f"{what.get(changed[0], changed[0])} changed" if len(changed) == 1
                                              else "changed")
    old_names, new_names = {_name(t) for t in old}, {_name(t) for t in new}
    if _name(before) not in new_names:
        return f"tool `{_name(before)}` removed"
    if _name(after) not in old_names:
        return f"tool `{_name(after)}` added"
    return f"tools reordered (`{_name(after)}` moved to {index})"


def _first_difference(previous: _Call, call: _Call, section: str, upto: int | None) -> _Divergence | None:
    """Where `call`'s section first differs from `previous`'s, looking at `previous`'s items up to index `upto`
    (None: the whole section, its length included)."""
    ref = previous.section_ref(section)
    if ref is not None and ref == call.section_ref(section):
        return None  # the same piece: nothing to read
    old, new = previous.items(section), call.items(section)
    for index in range(len(old) if upto is None else min(upto + 1, len(old))):
        if index >= len(new):
            return _Divergence(section, index, _detail(section, index, old, new, None))
        if section == "messages":
            if old[index][0] == new[index][0]:
                continue
            before, after = previous.message(old[index][0]), call.message(new[index][0])
        else:
            before, after = old[index], new[index]
        if comparable(before) != comparable(after):
            return _Divergence(section, index, _detail(section, index, old, new, after))
    if upto is None and len(new) > len(old):  # added at the end of a section the breakpoint lies beyond
        return _Divergence(section, len(old), _detail(section, len(old), old, new, new[len(old)]))
    return None


def _detail(section: str, index: int, old: list[Any], new: list[Any], after: Any) -> str:
    if section == "tools":
        return _tool_detail(index, old, new)
    if section == "system":
        if index >= len(new):
            return f"system block {index} removed"
        if index >= len(old):
            return f"system block {index} added"
        return "system prompt changed" if len(old) == 1 and isinstance(old[0], str) \
            else f"system block {index} changed"
    if index >= len(new):
        return f"conversation cut back to {len(new)} message(s)"
    role = after.get("role") if isinstance(after, dict) else None
    return f"message {index} edited" + (f" ({role})" if isinstance(role, str) else "")


def _cached_bytes(previous: _Call, start: tuple[str, int] | None) -> tuple[int, int]:
    """(bytes of `previous`'s cached prefix, bytes of it from `start` = (section, index) on; None: all of it)."""
    section_bp, index_bp = previous.breakpoint[0], previous.breakpoint[1]  # type: ignore[index]
    total = lost = 0
    losing = start is None
    for section in SECTIONS[:SECTIONS.index(section_bp) + 1]:
        items = previous.items(section)
        if section == section_bp:
            items = items[:index_bp + 1]
        for index, item in enumerate(items):
            if start is not None and (section, index) == start:
                losing = True
            size = _size(item)
            total += size
            lost += size if losing else 0
        if start is not None and section == start[0] and not losing:
            losing = True  # the break is past this section's end (an item added): the rest is lost
    return total, lost


def _divergence(previous: _Call, call: _Call) -> _Divergence | None:
    """Where `call`'s prompt leaves what `previous` cached (None: it follows it to its last breakpoint, which
    `previous` must have)."""
    section_bp, index_bp, _ = previous.breakpoint  # type: ignore[misc]
    for section in SECTIONS[:SECTIONS.index(section_bp) + 1]:
        found = _first_difference(previous, call, section, index_bp if section == section_bp else None)
        if found is not None:
            return found
    return None


def _reach(previous: _Call, divergence: _Divergence | None) -> tuple[int, int]:
    """How far a prompt follows `previous`'s: (section, items matched in it)."""
    if divergence is None:
        return SECTIONS.index(previous.breakpoint[0]), previous.breakpoint[1] + 1  # type: ignore[index]
    return SECTIONS.index(divergence.section), divergence.index or 0


def explain(previous: _Call, call: _Call, divergence: _Divergence | None, book: PriceBook) -> dict[str, Any] | None:
    """The `cacheBreak` of `call` against `previous`, the call whose cache it should have read (see the module
    docstring), given where it left that call's prompt."""
    ttl = previous.breakpoint[2]  # type: ignore[index]
    gap = call.ts - previous.ts
    lifetime = ttl * _ttl_scale()
    if divergence is None:
        if gap <= lifetime:
            return None
        divergence = _Divergence("ttl", None, f"{_duration(gap)} after the previous call; "
                                              f"the cache lives {_duration(lifetime)}")
    start = None if divergence.index is None else (divergence.section, divergence.index)
    total, lost = _cached_bytes(previous, start)
    cached_tokens = previous.cache_read_tokens + previous.cache_write_tokens or total // _BYTES_PER_TOKEN
    uncached = round(cached_tokens * lost / total) if total else 0
    paid_in_full = call.input_tokens + call.cache_write_tokens
    if call.input_tokens or call.cache_write_tokens or call.cache_read_tokens:
        uncached = min(uncached, paid_in_full)
    extra = cache_miss_usd(call.model, uncached, book, datetime.fromtimestamp(call.ts, UTC),
                           written=call.cache_write_tokens > 0, long_ttl=ttl >= LONG_TTL_SECONDS)
    return {"previousId": previous.id, "at": divergence.section, "index": divergence.index,
            "detail": divergence.detail, "uncachedTokens": uncached, "extraCostUsd": extra}


def _ttl_scale() -> float:
    try:
        scale = float(os.environ.get(TTL_SCALE_ENV, "1"))
    except ValueError:
        return 1.0
    return scale if scale > 0 else 1.0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# --- in the writer's transaction ----------------------------------------------------------------------------

_SET = "UPDATE records SET cache_break = ?, cache_break_at = ?, cache_break_usd = ? WHERE id = ?"


def _neighbours(db: Connection, row: tuple[Any, ...], session: str | None, head: str | None, *,
                later: bool) -> list[tuple[Any, ...]]:
    """The `CANDIDATES` successful calls of the same session and model (without a session: of the same model and
    first piece) nearest before (or, `later`, after) the call in `row`, nearest first."""
    record_id, ts, model = row[0], row[1], row[2]
    order, compare = ("ASC", ">") if later else ("DESC", "<")
    same = "session = ?" if session is not None else "session IS NULL AND cache_head = ?"
    return db.execute(
        f"SELECT {_CALL_COLUMNS} FROM records WHERE {same} AND model = ? AND status = 'success' "
        f"AND cache_head IS NOT NULL AND (ts, id) {compare} (?, ?) ORDER BY ts {order}, id {order} LIMIT ?",
        (session if session is not None else head, model, ts, record_id, CANDIDATES)).fetchall()


def explain_around(db: Connection, record_ids: list[str], book: PriceBook,
                   on_error: Callable[[str, Exception], None]) -> None:
    """Explain the written records' cache breaks, and again those of the calls that follow them (written earlier
    perhaps, against other previous calls). Inside the caller's transaction; a record that cannot be explained
    keeps none (`on_error` hears why) and never stops the write. Each call is explained once per write: the
    records of one batch follow each other, and an explanation reads only the calls before it, which are all
    written by now."""
    targets: dict[str, tuple[tuple[Any, ...], str | None, str | None]] = {}  # id -> (row, session, head)
    for record_id in record_ids:
        row = db.execute(f"SELECT {_CALL_COLUMNS}, status, session, cache_head FROM records WHERE id = ?",
                         (record_id,)).fetchone()
        if row is None or row[-1] is None or row[2] is None:
            continue
        *call_row, status, session, head = row
        if status == "success":
            targets[record_id] = (tuple(call_row), session, head)
        for later in _neighbours(db, tuple(call_row), session, head, later=True):  # none when written in order
            targets.setdefault(later[0], (later, session, head))
    for target_id, (target, session, head) in targets.items():
        try:
            _explain_one(db, target, session, head, book)
        except db.dialect.errors:
            raise  # the database's own trouble: the whole write fails and is retried
        except Exception as exc:  # an odd body, a bug: that record has no explanation
            db.execute(_SET, (None, None, None, target_id))
            on_error(target_id, exc)


def _explain_one(db: Connection, row: tuple[Any, ...], session: str | None, head: str | None,
                 book: PriceBook) -> None:
    """Against the call whose cache this one should have read: among the few calls before it that cached
    something, the one its prompt follows furthest, the nearest of those on a tie. Usually the previous call;
    not when another conversation's call came between (a subagent's, in the same session and model)."""
    call = _Call(db, row)
    chosen: tuple[tuple[int, int], _Call, _Divergence | None] | None = None
    for previous_row in _neighbours(db, row, session, head, later=False):
        previous = _Call(db, previous_row)
        if previous.breakpoint is None:
            continue  # it cached nothing
        divergence = _divergence(previous, call)
        reach = _reach(previous, divergence)
        if chosen is None or reach > chosen[0]:
            chosen = (reach, previous, divergence)
        if divergence is None and chosen[1] is previous:
            break  # the usual case: it continues the nearest call's prompt, whose cache it reads
    found = explain(chosen[1], call, chosen[2], book) if chosen else None
    db.execute(_SET, (json.dumps(found) if found else None, found["at"] if found else None,
                      found["extraCostUsd"] if found else None, row[0]))
