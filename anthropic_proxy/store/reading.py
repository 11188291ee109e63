"""A stored row back as the record it was: its skeleton with its pieces put back (`bodies.assemble`), the
message chains read in one recursive query; and `record_json`, the one serialisation of a record that leaves
memory (exports, the web app)."""

from __future__ import annotations

import json
from typing import Any

from anthropic_proxy.record import bodies
from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.record.model import CacheBreak, Record
from anthropic_proxy.store.dialects import DB_NAME, Connection


def record_json(record: Record) -> str:
    """The one serialisation of a record that leaves memory: keys masked wherever they appear."""
    try:
        return mask_text(record.model_dump_json(by_alias=True))
    except ValueError:  # a lone surrogate ("\\ud800" in the client's JSON) cannot be UTF-8: escape it
        return mask_text(json.dumps(record.model_dump(mode="json", by_alias=True), separators=(",", ":")))


# (parent, blob id, blob text) of the last ? messages of the chain that ends at node ?, first message first
CHAIN = """
    WITH RECURSIVE chain(id, parent, blob, depth) AS (
        SELECT id, parent, blob, 0 FROM nodes WHERE id = ?
        UNION ALL SELECT nodes.id, nodes.parent, nodes.blob, chain.depth + 1
        FROM nodes JOIN chain ON nodes.id = chain.parent WHERE chain.depth + 1 < ?
    )
    SELECT chain.parent, chain.blob, blobs.data FROM chain LEFT JOIN blobs ON blobs.id = chain.blob
    ORDER BY chain.depth DESC
"""


class StoreCorrupt(RuntimeError):
    """A stored record refers to a piece the database no longer has."""


def load(db: Connection, data: str, refs: str | None, cache_break: str | None = None, *,
         tail: int | None = None) -> Record:
    """A stored row as the record it is, with the cache break the store explained (`cache_break.py`).
    `tail`: only the last `tail` messages of each message list, and no system prompt or tools (a session's
    turns: what each call added is at the end; its history is in the calls before it)."""
    record = _assemble(db, data, refs, tail)
    record.cache_break = CacheBreak.model_validate_json(cache_break) if cache_break else None
    return record


def _assemble(db: Connection, data: str, refs: str | None, tail: int | None = None) -> Record:
    if refs is None:  # a v2 row: the whole record
        return Record.model_validate_json(data)

    def blob(ref: str) -> Any:
        if tail is not None:
            return None
        row = db.execute("SELECT data FROM blobs WHERE id = ?", (ref,)).fetchone()
        if row is None:
            raise StoreCorrupt(f"record piece {ref} is missing from {DB_NAME}")
        return json.loads(row[0])

    def messages(leaf: str) -> list[Any]:
        rows = db.execute(CHAIN, (leaf, tail or 2**62)).fetchall()
        whole = tail is None or len(rows) < tail
        if not rows or (whole and rows[0][0] is not None) or any(text is None for _, _, text in rows):
            raise StoreCorrupt(f"message chain {leaf} is incomplete in {DB_NAME}")
        return [json.loads(text) for _, _, text in rows]

    return Record.model_validate(bodies.assemble(json.loads(data), json.loads(refs), blob, messages))
