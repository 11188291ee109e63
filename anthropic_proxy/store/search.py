"""Search (`q`): a record is found by its own prompt and its answer, masked and case-insensitively; the history it
repeats and the system prompt are not searched (they would make every later record of a session match).

Nothing is kept twice for it. The prompt is what the call added to its conversation (`bodies.new_turn`: the latest
user turn, with its tool results): those messages are pieces the store keeps anyway (`blobs`), and the table
`turns` lists each record's new-turn blobs. The `search` column holds the rest, lower-cased and masked: the
answer's text (small beside a prompt; in the record's JSON it sits among headers, usage and stream events, which
a text match there would find too) and a body that is not JSON (its first `MAX_BODY_TEXT` characters).

A query (`where`) reads both: the `search` column with the dialect's text match; the new turns' blobs with a coarse
match on their JSON text (lower-cased, it contains the query's longest ASCII run as JSON writes it), then, for
those candidates only, the message's texts themselves (`bodies.iter_texts`, lower-cased), so JSON keys, tool
inputs and escapes never match. The ids found go back into the SQL as one JSON array parameter.

Stores written before (SQLite v5, PostgreSQL v2) kept the new turn's text in `search` too: `convert` lists their
turns and keeps only the rest (a migration step, `schema.py`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from anthropic_proxy.record import bodies
from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.record.model import Record
from anthropic_proxy.store.dialects import Connection, Dialect, storable_text
from anthropic_proxy.store.filters import RecordFilter
from anthropic_proxy.store.reading import CHAIN
from anthropic_proxy.wire import fastjson

logger = logging.getLogger("anthropic_proxy.store")

MAX_BODY_TEXT = 10_000  # of a body that is not JSON, what is searched
BODY_SLOT = bodies.slot_name(("request", "body"))  # whose messages are searched (not the translated upstream's)
_ASCII_RUN = re.compile(r"[\x00-\x7f]+")


def turn_messages(body: Any) -> list[Any]:
    """The messages a request body added to its conversation (none unless it is a JSON body with messages)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return bodies.new_turn(messages) if isinstance(messages, list) else []


def _message_texts(message: Any) -> Iterator[str]:
    if isinstance(message, dict):
        yield from bodies.iter_texts(message.get("content"))


def _rest_texts(body: Any, message: Any) -> Iterator[str]:
    """What is searched besides the new turn: a body that is not JSON, and the answer's text."""
    if isinstance(body, str):
        yield body[:MAX_BODY_TEXT]
    yield from _message_texts(message)


def column_text(body: Any, message: Any) -> str:
    """What the `search` column holds for a record with this request body and answer (`message`)."""
    return mask_text("\n".join(_rest_texts(body, message))).lower()


def search_text(record: Record) -> str:
    """Everything a record is found by, lower-cased and masked: its new turn's texts and the column's (what the
    monitor's live view filters an event on, as a query filters the store)."""
    body = record.request.body
    turn = [text for message in turn_messages(body) for text in _message_texts(message)]
    return mask_text("\n".join([*turn, *_rest_texts(body, record.message)])).lower()


def turn_blobs(chain: list[str], length: int) -> list[str]:
    """The distinct blob ids among the last `length` of a message chain's blob ids (first message first)."""
    return list(dict.fromkeys(chain[len(chain) - length:])) if length else []


def where(db: Connection, dialect: Dialect, flt: RecordFilter) -> tuple[str, list[Any]]:
    """`flt` as an SQL condition (`?` placeholders) and its parameters, its text (`q`) resolved on `db`."""
    sql, params = flt.columns_where()
    if not flt.q:
        return sql, params
    found = _found(db, dialect, sql, params, flt.q.lower())
    return (f"{sql} AND " if sql else " WHERE ") + f"id IN (SELECT value FROM {dialect.json_values})", \
        [*params, json.dumps(found)]


def _found(db: Connection, dialect: Dialect, sql: str, params: list[Any], q: str) -> list[str]:
    """The ids of the records among those `sql` selects whose prompt or answer contains `q` (lower-cased)."""
    and_ = f"{sql} AND" if sql else " WHERE"
    found = {i for (i,) in db.execute(f"SELECT id FROM records{and_} {dialect.search}", [*params, q])}
    runs = _ASCII_RUN.findall(q)
    needle = json.dumps(max(runs, key=len))[1:-1] if runs else ""
    among = f"turns.record_id IN (SELECT id FROM records{sql}) AND " if sql else ""
    for record_id, data in db.execute(
            f"SELECT turns.record_id, blobs.data FROM turns JOIN blobs ON blobs.id = turns.blob "
            f"WHERE {among}{dialect.contains_lower('blobs.data')}", [*params, needle]):
        if record_id in found:
            continue
        message = fastjson.loads_event(data)  # (its texts are all that is read: big numbers do not matter)
        if any(q in text.lower() for text in _message_texts(message)):
            found.add(record_id)
    return sorted(found)


def convert(db: Connection) -> None:
    """A migration step, in its transaction: list the turns of the records an older release wrote, and keep only
    the rest in their `search` column. Rows with whole bodies (v2: `refs` NULL) keep theirs until the writer
    rewrites them."""
    ids = [i for (i,) in db.execute("SELECT id FROM records WHERE refs IS NOT NULL")]
    add = db.dialect.insert_ignore("turns", ("record_id", "blob"))
    for start in range(0, len(ids), 200):
        chunk = ids[start:start + 200]
        marks = ", ".join("?" * len(chunk))
        for record_id, data, refs in db.execute(f"SELECT id, data, refs FROM records WHERE id IN ({marks})",
                                                chunk).fetchall():
            skeleton = json.loads(data)
            request = skeleton.get("request")
            body = request.get("body") if isinstance(request, dict) else None
            leaf = json.loads(refs).get(BODY_SLOT, {}).get(bodies.MESSAGES)
            db.execute("UPDATE records SET search = ? WHERE id = ?",
                       (storable_text(column_text(body, skeleton.get("message"))), record_id))
            db.executemany(add, [(record_id, blob) for blob in (_turn_of(db, leaf) if leaf else [])])
    if ids:
        logger.info("store: %d records converted to search over their pieces", len(ids))


def _turn_of(db: Connection, leaf: str) -> list[str]:
    """The new-turn blobs of the message chain ending at node `leaf`: its last messages, read until the turn
    begins within them (or the chain does)."""
    tail = 8
    while True:
        rows = db.execute(CHAIN, (leaf, tail)).fetchall()  # (parent, blob, text), first message first
        if not rows or any(text is None for _, _, text in rows):
            return []  # (an incomplete chain: `get` reports it)
        turn = bodies.new_turn([json.loads(text) for _, _, text in rows])
        if len(turn) < len(rows) or rows[0][0] is None:
            return turn_blobs([blob for _, blob, _ in rows], len(turn))
        tail *= 4
